"""What every group reward for TRL's GRPOTrainer shares: whole groups of G across processes, ``None`` for a group
that could not be scored, and counted metrics.

:class:`GroupReward` is TRL's reward contract ``fn(prompts, completions, completion_ids, trainer_state, log_extra,
log_metric, **columns) -> list[float | None]`` around one method a subclass writes, :meth:`GroupReward.score_group`
(the rows of one group -> its rewards). The base class reads the rows, gathers every rank's slice, groups them in
blocks of G (:func:`cat_dspy.rl.inputs.group_completions`), scores each group on exactly one
rank, concurrently, gathers the results back and returns this rank's slice; it logs ``<prefix>/*`` metrics through
TRL's ``log_metric`` (the same on every rank) and each call's groups as an MLflow artifact. The CaT reward
(:class:`cat_dspy.rl.reward.CaTReward`) and the comparison arms (:mod:`cat_dspy.rl.baselines`) are its subclasses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cat_dspy.deprecation import renamed
from cat_dspy.lm.usage import merge_usage
from cat_dspy.rl.callbacks import mlflow_run_active, reward_callback, sampled_traces
from cat_dspy.rl.inputs import completion_text, gold_text, group_completions, prompt_key, prompt_question
from cat_dspy.scoring.equivalence import EQUIVALENCE_FALLBACKS, collect_equivalence
from cat_dspy.scoring.rewards import length_penalty, verifiable_reward, word_lengths

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    """One rollout o_i of a group as a group reward sees it: TRL's completion with its prompt and columns."""

    key: str  # the whole prompt, canonical (grouping)
    question: str  # the last user message
    text: str  # the completion's text
    length: int | None  # its token count (TRL's completion_ids), None when not given
    gold: str | None  # the dataset's answer where it has one: the gold reward's label, else for label metrics
    data: Mapping[str, Any]  # the other dataset columns the reward reads (train_columns), this completion's values
    prompt: Any = None  # the TRL prompt itself (a string or a conversation)


@dataclass(frozen=True, kw_only=True)
class GroupScore:
    """What scoring one group of G completions gave: its rewards and what the metrics count.

    Each reward's :meth:`GroupReward.score_group` returns its own subclass (:attr:`GroupReward.score_type`), with
    the fields its metrics read; every field has a default, so an invalid group is the same type.
    """

    valid: bool  # False: a failed LM call, a missing label or a bug; every reward is None (TRL skips the group)
    rewards: list[float | None] = field(default_factory=list)  # one per completion, in the group's order
    failures: list[str] = field(default_factory=list)  # the reasons, counted (``anchor_error: ...``)
    reference: str | None = None  # the group's reference, where the reward synthesizes one (logged by TRL)
    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # LM usage per role
    length_hits: int = 0  # completions the length penalty hit
    skipped: bool = False  # skip_unparsed: no usable reference, rewards None on purpose (not a failure)
    equivalence: dict[str, int] = field(default_factory=dict)  # answer checks that fell back, by reason
    label_correct: float | None = None  # with gold answers: the label (reference, majority) is right
    reward_agreements: int | None = None  # with gold answers (label metrics): rewards equal to the gold reward


def label_check(label: str | None, answers: Sequence[str | None], matches: Sequence[float], gold: str | None,
                mode: str) -> dict[str, Any]:
    """The :class:`GroupScore` label fields of a group with a gold answer (``{}`` without one): whether
    the group's label (the reference's answer, the majority answer) is right, and how many of the rewards before any
    length penalty (``matches``) equal the gold reward of the rollout's answer.

    Examples:
        >>> label_check("4", ["4", "5"], [1.0, 0.0], "4", "symbolic"), label_check("4", ["4"], [1.0], None, "string")
        ({'label_correct': 1.0, 'reward_agreements': 2}, {})
    """
    if gold is None:
        return {}
    gold_rewards = [verifiable_reward(a, gold, mode=mode) for a in answers]
    return {"label_correct": verifiable_reward(label, gold, mode=mode),
            "reward_agreements": sum(m == g for m, g in zip(matches, gold_rewards, strict=True))}


def rate(out: dict[str, float], name: str, values: Sequence[float]) -> None:
    """Set ``out[name]`` to the mean of ``values``; leave it out when there are none (undefined, not 0)."""
    if values:
        out[name] = sum(values) / len(values)


class GroupReward:
    r"""A TRL reward scored per group of G completions of one prompt; subclasses write
    :meth:`score_group`.

    On several processes (``torch.distributed`` initialised) the completions of all ranks are gathered, each group
    is scored by exactly one rank (round-robin), the results are gathered and each rank returns its own slice, so a
    group straddling ranks is scored once from all its completions. Completions that are not consecutive blocks of
    one prompt are grouped by prompt text instead, with a warning.

    The ``None`` contract: a group whose scoring failed (a failed LM call, a missing label, or a bug, which is
    logged with its traceback) gets ``None`` for every completion (TRL skips it) and is counted in
    ``<prefix>/invalid_groups``; a call never raises for a backend fault.

    Class attributes a subclass sets:
        prefix: The metric prefix (``cat`` -> ``cat/invalid_groups``).
        reads_labels: The reward itself reads the dataset's ``answer`` column (the gold arm); otherwise gold
            answers are read only for label metrics (where the dataset carries them).
        train_columns: Dataset columns the training set must carry (besides the prompt).
        error_roles: Failure prefixes counted as ``<prefix>/<role>_errors`` (``anchor`` -> ``anchor_error: ...``).
        reference_column: The ``log_extra`` column of each group's ``reference`` (None: not logged).
        artifact_fields: Fields of :attr:`score_type` written to the MLflow artifact of each call.
        score_type: The :class:`GroupScore` subclass :meth:`score_group` returns (an invalid group is one too).

    G comes from the trainer: :meth:`bind` (which :meth:`callback` calls when the trainer is built) reads TRL's
    ``num_generations`` and ``num_generations_eval``. Given here, it must agree with the trainer's; unbound and not
    given, each run of consecutive completions of one prompt is a group (TRL's layout).

    Args:
        g: G, completions per prompt (default: the trainer's ``num_generations``).
        g_eval: G while evaluating (default: the trainer's ``num_generations_eval``, else ``g``).
        num_threads: Groups scored concurrently per process (default: all of them).
        artifacts: Log each call's groups as an MLflow artifact when a run is active (rank 0).
        trace_every: Record the DSPy traces of every N-th call in MLflow (0: never).
        name: The name TRL logs the reward under (``rewards/<name>/mean``).
        **deprecated: ``num_generations`` and ``num_generations_eval``, the former spellings of ``g`` and ``g_eval``.
    """

    prefix = "reward"
    reads_labels = False
    train_columns: tuple[str, ...] = ()
    error_roles: tuple[str, ...] = ("reward",)
    reference_column: str | None = None
    artifact_fields: tuple[str, ...] = ()
    score_type: type[GroupScore] = GroupScore

    def __init__(self, g: int | None = None, g_eval: int | None = None,
                 num_threads: int | None = None, artifacts: bool = True, trace_every: int = 0,
                 name: str = "reward", **deprecated: int | None):
        owner = type(self).__name__
        if unknown := sorted(set(deprecated) - {"num_generations", "num_generations_eval"}):
            raise TypeError(f"{owner} got unexpected keyword arguments {unknown}")
        g = renamed(owner, "num_generations", "g", deprecated.get("num_generations"), g)
        g_eval = renamed(owner, "num_generations_eval", "g_eval", deprecated.get("num_generations_eval"), g_eval)
        for label, value in (("g", g), ("g_eval", g_eval)):
            if value is not None and value < 1:
                raise ValueError(f"{owner}: {label} must be >= 1, got {value}")
        self.__name__ = name
        self.g = g
        self.g_eval = g_eval
        self.num_threads = num_threads
        self.artifacts = artifacts
        self.trace_every = trace_every
        self._model: Any = None
        self._tokenizer: Any = None  # the trainer's processing class: how the policy's prompts were rendered
        self._chat_template_kwargs: dict[str, Any] = {}
        self._warned_grouping = False
        self.calls = 0
        self.seconds = 0.0
        self.call_seconds: list[float] = []  # wall time of each call, for benchmarks
        self.last_metrics: dict[str, float] = {}
        self.usage: dict[str, dict[str, float]] = {}

    @property
    def anchor(self) -> Any:
        """The frozen anchor LM this reward calls (None: it calls none)."""
        return None

    @property
    def judge(self) -> Any:
        """The judge LM this reward calls (None: it calls none)."""
        return None

    @property
    def checks_answers(self) -> bool:
        """Whether groups compare final answers (the ``<prefix>/equivalence_*`` fallback counts are logged)."""
        return False

    # -- evaluation state ------------------------------------------------------------------------------------

    def bind(self, trainer_or_model: Any, args: Any = None) -> GroupReward:
        """Follow the train/eval state of a trainer's model (TRL's own test: ``model.training``), and take G from
        the trainer's arguments (``num_generations``, ``num_generations_eval``).

        ``TrainerState`` carries no evaluation flag, so the reward reads it from the model; :meth:`callback`
        binds it automatically. Unbound, every call counts as training. A trainer also gives its tokenizer and
        ``chat_template_kwargs``: the text the policy's prompts were rendered to (:meth:`policy_prompt`).

        Args:
            trainer_or_model: A trainer (its ``model`` and ``args`` are read) or a model.
            args: The trainer's arguments, when a model is given.

        Raises:
            ValueError: ``g`` was given and differs from the trainer's ``num_generations``.
        """
        is_trainer = hasattr(trainer_or_model, "args") and hasattr(trainer_or_model, "model")
        self._model = trainer_or_model.model if is_trainer else trainer_or_model
        args = trainer_or_model.args if is_trainer else args
        if is_trainer:
            self._tokenizer = getattr(trainer_or_model, "processing_class", None)
        self._chat_template_kwargs = dict(getattr(args, "chat_template_kwargs", None) or {})
        for attr, field_name in (("g", "num_generations"), ("g_eval", "num_generations_eval")):
            value = getattr(args, field_name, None)
            if not isinstance(value, int):
                continue
            if getattr(self, attr) not in (None, value):
                raise ValueError(f"{self.__name__}: {attr}={getattr(self, attr)} but the trainer's {field_name} is "
                                 f"{value}; leave {attr} unset to take the trainer's")
            setattr(self, attr, value)
        return self

    def policy_prompt(self, prompt: Any) -> str | None:
        """The text the policy generated a completion of ``prompt`` after, as TRL renders it: a string prompt as
        is, a conversation through the bound trainer's chat template (with its ``chat_template_kwargs``); None for a
        conversation when no trainer is bound.

        Examples:
            >>> reward = GroupReward()
            >>> reward.policy_prompt("Q: 2+2? A:"), reward.policy_prompt([{"role": "user", "content": "Hi"}])
            ('Q: 2+2? A:', None)
        """
        if isinstance(prompt, str):
            return prompt
        tokenizer = getattr(self._tokenizer, "tokenizer", self._tokenizer)  # a processor wraps its tokenizer
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            return None
        return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True,
                                             **self._chat_template_kwargs)

    @property
    def evaluating(self) -> bool:
        """Whether the bound model is in eval mode (TRL is evaluating)."""
        return self._model is not None and not getattr(self._model, "training", True)

    def callback(self) -> Any:
        """A ``transformers.TrainerCallback`` that binds this reward to the trainer's model on ``on_init_end``."""
        return reward_callback(self)

    # -- the TRL contract ------------------------------------------------------------------------------------

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_extra: Any = None,
        log_metric: Any = None,
        **columns: Any,
    ) -> list[float | None]:
        from cat_dspy.rl import distributed

        start, call = time.perf_counter(), self.calls
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        evaluating = self.evaluating
        n = len(completions)
        local = self._rows(prompts, completions, completion_ids, columns)
        rank, world = distributed.rank_and_world()
        parts = distributed.all_gather(local)  # collective 1 (a no-op on one process)
        offset = sum(len(part) for part in parts[:rank])
        rows = [row for part in parts for row in part]

        g = (self.g_eval or self.g) if evaluating else self.g
        groups, blocks_ok = group_completions([row.key for row in rows], g or 0)
        if g and not blocks_ok and not self._warned_grouping:
            self._warned_grouping = True
            logger.warning(
                "%s: %d completions are not consecutive blocks of g=%d with one prompt each; "
                "grouping by prompt text instead (is g TRL's num_generations?)", self.__name__, len(rows), g)

        mine = distributed.owned(len(groups), rank, world)
        traced = self.trace_every > 0 and rank == 0 and call % self.trace_every == 0 and mlflow_run_active()
        scored = self._score_groups([[rows[i] for i in groups[k]] for k in mine], traced)
        results: dict[int, GroupScore] = dict(zip(mine, scored, strict=True))
        if world > 1:
            results = {k: v for part in distributed.all_gather(results) for k, v in part.items()}  # collective 2

        rewards: list[float | None] = [None] * len(rows)
        references: list[str] = [""] * len(rows)
        for k, indices in enumerate(groups):
            for j, i in enumerate(indices):
                rewards[i] = results[k].rewards[j]
                references[i] = results[k].reference or ""

        elapsed = time.perf_counter() - start
        metrics = self.metrics([results[k] for k in range(len(groups))], n_completions=len(rows))
        metrics[f"{self.prefix}/reward_seconds"] = elapsed
        self.calls += 1
        self.seconds += elapsed
        self.call_seconds.append(elapsed)
        self.last_metrics = metrics
        for result in results.values():
            merge_usage(self.usage, result.usage)
        if log_metric is not None:
            for key in sorted(metrics):
                log_metric(key, metrics[key])
        if log_extra is not None and self.reference_column:
            log_extra(self.reference_column, references[offset : offset + n])
        if rank == 0 and self.artifacts:
            self._log_artifacts(groups, results, rows, trainer_state, evaluating, call)
        return rewards[offset : offset + n]

    def _rows(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any,
              columns: Mapping[str, Any]) -> list[Completion]:
        n = len(completions)
        lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [None] * n
        for name in (("answer",) if self.reads_labels else ()) + self.train_columns:
            if name not in columns:
                raise ValueError(f"{self.__name__} needs the dataset column {name!r} (TRL passes every column but "
                                 f"the prompt to the reward); got columns {sorted(columns)}")
            if len(columns[name]) != n:
                raise ValueError(f"{self.__name__}: column {name!r} has {len(columns[name])} values for {n} "
                                 "completions")
        # A label-free reward reads gold answers only for its label metrics: while evaluating, or while training on a
        # set that carries them (``label_metrics``).
        read_gold = "answer" in columns
        golds = [gold_text(a) for a in columns["answer"]] if read_gold else [None] * n
        data = [{name: columns[name][i] for name in self.train_columns if name != "answer"} for i in range(n)]
        return [Completion(prompt_key(p), prompt_question(p), completion_text(c), length, gold, extra, p)
                for p, c, length, gold, extra in zip(prompts, completions, lengths, golds, data, strict=True)]

    # -- scoring ---------------------------------------------------------------------------------------------

    def score_group(self, rows: list[Completion]) -> GroupScore:
        """Score one group: a :attr:`score_type` with ``valid``, ``rewards`` (one per completion) and ``failures``
        (reasons, counted), plus what the subclass's metrics read. May raise: :meth:`_score_group` turns that into
        an invalid group."""
        raise NotImplementedError

    def _score_groups(self, groups: list[list[Completion]], traced: bool) -> list[GroupScore]:
        from cat_dspy.modules.base import thread_map

        if not groups:
            return []
        if not traced:
            return thread_map(self._score_group, groups, self.num_threads)
        with sampled_traces():
            return thread_map(self._score_group, groups, self.num_threads)

    def _score_group(self, rows: list[Completion]) -> GroupScore:
        """Score one group; never raises (a failure makes the group invalid: ``None`` rewards)."""
        try:
            with collect_equivalence() as outcomes:
                result = self.score_group(rows)
            result = replace(result, equivalence={k: outcomes[k] for k in EQUIVALENCE_FALLBACKS})
        except Exception as exc:  # a bug or an unexpected backend error must not hang the other ranks
            logger.exception("%s: scoring a group failed", self.__name__)
            result = self.score_type(valid=False, failures=[f"reward_error: {type(exc).__name__}: {str(exc)[:300]}"])
        if not result.valid:
            result = replace(result, rewards=[None] * len(rows))
        return result

    def penalize(self, rewards: list[float], rows: list[Completion], limit: int | None) -> tuple[list[float], int]:
        """The length penalty (reward −1 above ``limit`` tokens, :func:`~cat_dspy.scoring.rewards.length_penalty`)
        on the rewards of one group, and how many completions it hit. Lengths are TRL's token counts; a call
        without ``completion_ids`` counts whitespace words (warned once)."""
        if limit is None:
            return rewards, 0
        lengths = [row.length for row in rows]
        if any(length is None for length in lengths):
            lengths = word_lengths([row.text for row in rows], f"{self.__name__} was called without completion_ids")
        penalized = [length_penalty(r, n, limit) for r, n in zip(rewards, lengths, strict=True)]
        return penalized, sum(p != r for p, r in zip(penalized, rewards, strict=True))

    # -- metrics ---------------------------------------------------------------------------------------------

    def metrics(self, results: list[GroupScore], n_completions: int) -> dict[str, float]:
        """The ``<prefix>/*`` metrics every group reward logs, from the results of all groups of one call (the same
        on every rank); subclasses add their own."""
        p, out = self.prefix, {}
        valid = [r for r in results if r.valid]
        scored = [r for r in valid if not r.skipped]
        out[f"{p}/invalid_groups"] = float(len(results) - len(valid))
        rate(out, f"{p}/zero_spread_groups", [float(max(r.rewards) == min(r.rewards)) for r in scored if r.rewards])
        out[f"{p}/length_penalty_hits"] = sum(r.length_hits for r in results) / max(n_completions, 1)
        for role in self.error_roles:
            out[f"{p}/{role}_errors"] = float(
                sum(1 for r in results for f in r.failures if f.startswith(f"{role}_error")))
        if getattr(self, "skip_unparsed", False):
            out[f"{p}/skipped_groups"] = float(sum(1 for r in valid if r.skipped))
        if self.checks_answers:
            for reason in EQUIVALENCE_FALLBACKS:
                out[f"{p}/equivalence_{reason}"] = float(sum(r.equivalence.get(reason, 0) for r in results))
            out[f"{p}/equivalence_fallbacks"] = sum(out[f"{p}/equivalence_{k}"] for k in EQUIVALENCE_FALLBACKS)
        rate(out, f"{p}/label_accuracy", [r.label_correct for r in valid if r.label_correct is not None])
        checked = [r for r in valid if r.reward_agreements is not None]  # with gold answers only
        if checked:
            total = sum(len(r.rewards) for r in checked)
            out[f"{p}/reward_accuracy"] = sum(r.reward_agreements or 0 for r in checked) / max(total, 1)
        return out

    # -- MLflow ----------------------------------------------------------------------------------------------

    def _log_artifacts(self, groups: list[list[int]], results: dict[int, GroupScore], rows: list[Completion],
                       trainer_state: Any, evaluating: bool, call: int) -> None:
        if not mlflow_run_active():
            return
        from cat_dspy import tracking

        step = int(getattr(trainer_state, "global_step", 0) or 0)
        records = []
        for k, indices in enumerate(groups):
            r = results[k]
            record: dict[str, Any] = {"group": k, "question": rows[indices[0]].question[:2000]}
            for name in self.artifact_fields:
                value = getattr(r, name)
                record[name] = value[:8000] if isinstance(value, str) else value
            record.update(rewards=r.rewards, failures=r.failures)
            records.append(record)
        phase = "eval" if evaluating else "train"
        try:
            tracking.log_json({"step": step, "phase": phase, "reward": self.__name__, "groups": records},
                              f"{self.prefix}/{phase}/step_{step:06d}_call_{call:05d}.json")
        except Exception as exc:  # artifacts are a convenience: never stop training for them
            logger.warning("%s: could not log the groups to MLflow: %s", self.__name__, exc)


def json_column(value: Any) -> Any:
    """A dataset column value that may arrive JSON-encoded (Arrow-friendly) or as the object itself.

    Examples:
        >>> json_column('[{"criterion": "a", "points": 1}]'), json_column([1])
        ([{'criterion': 'a', 'points': 1}], [1])
    """
    return json.loads(value) if isinstance(value, str) else value
