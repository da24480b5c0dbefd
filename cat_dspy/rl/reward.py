"""The CaT reward inside TRL's GRPOTrainer (paper §1.6).

TRL samples the group, the frozen anchor synthesizes one reference per group, every completion is rewarded against
it. Heavy imports (torch, accelerate, mlflow, the CaT modules) happen inside the functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from cat_dspy.config import DEFAULTS
from cat_dspy.rl.group import Completion, GroupReward, GroupScore, label_check, rate
from cat_dspy.scoring.equivalence import EQUIVALENCE_FALLBACKS, equivalent
from cat_dspy.scoring.rewards import majority_answer

logger = logging.getLogger(__name__)

REWARD_METRICS = (
    "cat/synthesis_extracted",  # fraction of groups whose reference has an extractable answer (freeform: non-empty)
    "cat/invalid_groups",  # groups whose anchor/judge call failed (reward None), count per call
    "cat/zero_spread_groups",  # fraction of scored groups whose rewards are all equal (no GRPO signal)
    "cat/length_penalty_hits",  # fraction of completions over length_limit (0 when no limit)
    "cat/reward_seconds",  # wall time of the reward call on this process, collectives included
    "cat/majority_disagreement",  # verifiable: fraction of groups whose reference answer is not the majority answer
    "cat/reference_outside_rollouts",  # verifiable: fraction of groups whose reference answer no rollout has
    "cat/rubric_size",  # rubric: mean criteria per rubric
    "cat/criterion_pass_rate",  # rubric: fraction of (completion, criterion) verdicts that are "yes"
    "cat/judge_errors",  # rubric: failed judge calls, count per call
    "cat/anchor_errors",  # failed anchor calls (synthesis, rubric), count per call
    "cat/reward_errors",  # groups whose scoring raised (a bug; logged with its traceback), count per call
    "cat/equivalence_fallbacks",  # verifiable: answer checks that fell back to string comparison, count per call
    *(f"cat/equivalence_{reason}" for reason in EQUIVALENCE_FALLBACKS),  # ... by reason (timeout, busy, ...)
    "cat/skipped_groups",  # skip_unparsed: groups without a usable reference (reward None), count per call
    "cat/label_accuracy",  # with gold answers (evaluating, label_metrics): references whose answer is correct
    "cat/reward_accuracy",  # with gold answers (evaluating, label_metrics): CaT rewards equal to the gold reward
)
"""Metric names :class:`CaTReward` logs through TRL's ``log_metric``; a name is left out of a call where it is
undefined (no denominator, other mode, no gold answers), identically on every rank."""


@dataclass(frozen=True, kw_only=True)
class CaTGroupScore(GroupScore):
    """One group scored by CaT: the anchor's reference s, the rollouts' answers and what the ``cat/*`` metrics read
    (the :class:`~cat_dspy.rl.group.GroupScore` fields: rewards, failures, usage, length hits, ...)."""

    reference_answer: str | None = None  # answer(s), verifiable mode
    answers: list[str | None] = field(default_factory=list)  # answer(o_i), verifiable mode
    rubric: list[str] = field(default_factory=list)  # the self-proposed criteria, rubric mode
    verdicts: list[list[bool]] | None = None  # the judge's verdicts per rollout and criterion, rubric mode
    synthesis_parsed: bool = False  # the reference has an extractable answer (freeform: is non-empty)
    outside: bool | None = None  # verifiable: no rollout's answer matches the reference's (None: no reference answer)
    majority_agrees: bool | None = None  # verifiable: the reference's answer is the rollouts' majority answer


class CaTReward(GroupReward):
    r"""The CaT reward for TRL's ``GRPOTrainer``: one anchor synthesis per group, every completion scored against it.

    TRL calls it with ``(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **columns)``
    and gets one ``float | None`` per completion. Completions are grouped in consecutive blocks of
    ``g`` (verified: blocks that mix prompts fall back to grouping by prompt text, with a warning).
    The frozen anchor synthesizes one reference per group, question-blind unless ``question_aware``; every group
    of the call is scored concurrently, so the local engine batches the syntheses into one ``generate``. Dataset
    columns (gold answers included) never reach the reward; an ``answer`` column (the evaluation set's, or the
    training set's with ``label_metrics``) is read for ``cat/label_accuracy`` and ``cat/reward_accuracy`` only.

    On several processes (``torch.distributed`` initialised) the completions of all ranks are gathered, each group
    is scored by exactly one rank (round-robin), the results are gathered and each rank returns its own slice, so a
    group straddling ranks is synthesized once from all its completions (:class:`cat_dspy.rl.group.GroupReward`,
    which the comparison rewards of :mod:`cat_dspy.rl.baselines` share).

    Failures: a group whose anchor or judge call failed gets ``None`` for every completion (TRL skips it) and is
    counted in ``cat/invalid_groups``; the call never raises for a backend fault.

    Args:
        anchor: The frozen anchor π_0: a ``dspy.LM`` or a model string for :func:`cat_dspy.lm.models.make_lm`
            (``"local"`` is the embedded initial checkpoint). Never the model being trained, never TRL's vLLM.
        judge: The judge π_J (rubric mode): a ``dspy.LM`` or a model string.
        mode: ``"verifiable"`` (answer match) or ``"rubric"`` (fraction of self-proposed criteria satisfied).
        g: G, completions per prompt (default: the trainer's ``num_generations``; see
            :class:`~cat_dspy.rl.group.GroupReward`).
        g_eval: G while evaluating (default: the trainer's ``num_generations_eval``, else ``g``).
        question_aware: Show the anchor the question (the paper's ablation; default question-blind).
        per_criterion: Rubric mode: one judge call per (completion, criterion), the paper's form.
        min_criteria: Rubric mode: criteria a rubric must have to count as parsed.
        length_limit: Reward −1 for completions longer than this many tokens (paper: 750 on HealthBench).
        equivalence: ``"symbolic"`` or ``"string"`` (the paper's string match) answer equivalence.
        extraction: ``"strict"`` (explicit answer forms, the paper) or ``"flexible"`` (else the last number).
        skip_unparsed: Give ``None`` (skip) instead of 0 to groups whose reference has no answer / is empty.
        num_threads: Groups scored concurrently per process (default: all of them).
        artifacts: Log each call's references and rubrics as an MLflow artifact when a run is active (rank 0).
        trace_every: Record the DSPy traces of every N-th call in MLflow (0: never).
        name: The name TRL logs the reward under (``rewards/<name>/mean``).
        **deprecated: ``num_generations`` and ``num_generations_eval``, the former spellings of ``g`` and ``g_eval``.

    Examples:
        >>> from cat_dspy.testing import scripted_lm
        >>> reward = CaTReward(scripted_lm(["# UNIFIED RESPONSE ... $\\boxed{4}$"]), g=2)
        >>> reward(prompts=["2+2?", "2+2?"], completions=["\\boxed{4}", "\\boxed{5}"])
        [1.0, 0.0]
        >>> reward.__name__, reward.last_metrics["cat/synthesis_extracted"]
        ('cat_reward', 1.0)
    """

    prefix = "cat"
    error_roles = ("anchor", "reward")
    reference_column = "cat_reference"
    artifact_fields = ("reference", "reference_answer", "rubric", "answers")
    score_type = CaTGroupScore

    def __init__(
        self,
        anchor: Any,
        judge: Any = None,
        mode: str = DEFAULTS["mode"],
        g: int | None = None,
        g_eval: int | None = None,
        question_aware: bool = DEFAULTS["question_aware"],
        per_criterion: bool = DEFAULTS["per_criterion"],
        min_criteria: int = DEFAULTS["min_criteria"],
        length_limit: int | None = DEFAULTS["length_limit"],
        equivalence: str = DEFAULTS["equivalence"],
        extraction: str = DEFAULTS["extraction"],
        skip_unparsed: bool = DEFAULTS["skip_unparsed"],
        num_threads: int | None = DEFAULTS["num_threads"],
        artifacts: bool = DEFAULTS["artifacts"],
        trace_every: int = DEFAULTS["trace_every"],
        name: str = "cat_reward",
        **deprecated: int | None,
    ):
        from cat_dspy.lm.roles import role_lm
        from cat_dspy.modules.cat import CaT

        if isinstance(anchor, str):
            anchor = role_lm(anchor, "anchor", max_tokens=DEFAULTS["anchor_max_tokens"])
        if isinstance(judge, str):
            judge = role_lm(judge, "judge", max_tokens=DEFAULTS["judge_max_tokens"])
        if anchor is None:
            raise ValueError("CaTReward needs the frozen anchor LM (e.g. make_lm('local'))")
        if mode == "rubric" and judge is None:
            raise ValueError("rubric mode needs a judge LM")
        super().__init__(g, g_eval, num_threads, artifacts, trace_every, name, **deprecated)
        self.mode = mode
        self.length_limit = length_limit
        self.equivalence = equivalence
        self.skip_unparsed = skip_unparsed
        self.cat = CaT(
            g=self.g or 8,  # unused: the rollouts come from the trainer
            mode=mode,
            anchor=anchor,
            judge=judge,
            question_aware=question_aware,
            per_criterion=per_criterion,
            min_criteria=min_criteria,
            length_limit=length_limit,
            equivalence=equivalence,
            extraction=extraction,
        )

    @property
    def anchor(self) -> Any:
        return self.cat.synthesize.lm

    @property
    def judge(self) -> Any:
        return self.cat.judge.lm

    @property
    def checks_answers(self) -> bool:
        return self.mode == "verifiable"

    # -- scoring ---------------------------------------------------------------------------------------------

    def score_group(self, rows: list[Completion]) -> CaTGroupScore:
        """Score one group: the anchor's reference, then every rollout against it (the base class makes a group
        that raises invalid)."""
        lengths = [row.length for row in rows]
        tokens = lengths if all(length is not None for length in lengths) else None
        pred = self.cat.score([row.text for row in rows], question=rows[0].question, rollout_tokens=tokens)
        mode = self.equivalence
        valid, parsed = bool(pred.valid), bool(pred.parsed.get("synthesis"))
        skipped = self.skip_unparsed and valid and not parsed
        checks: dict[str, Any] = {}
        if self.mode == "verifiable" and valid:
            ref, answers = pred.reference_answer, pred.answers
            matches = pred.unpenalized_rewards  # before the length penalty: CaT.score checked each once
            if ref is not None:  # both metrics are undefined without a reference answer: skip the equivalences
                majority, _, _ = majority_answer(answers, mode=mode)
                checks["outside"] = not any(m == 1.0 for m in matches)
                checks["majority_agrees"] = None if majority is None else equivalent(ref, majority, mode=mode)
            checks.update(label_check(ref, answers, matches, rows[0].gold, mode))  # gold: label metrics only
        return CaTGroupScore(
            valid=valid,
            rewards=[None] * len(rows) if skipped else [float(r) for r in pred.rewards],
            failures=list(pred.failures),
            reference=pred.reference,
            usage=pred.usage,
            length_hits=pred.parsed.get("length_penalized", 0),  # counted once, by CaT.score
            skipped=skipped,
            reference_answer=pred.reference_answer,
            answers=list(pred.answers),
            rubric=list(pred.rubric),
            verdicts=pred.verdicts,
            synthesis_parsed=parsed,
            **checks,
        )

    def metrics(self, results: list[CaTGroupScore], n_completions: int) -> dict[str, float]:
        """The ``cat/*`` metrics of one call, from the results of all its groups (the same on every rank)."""
        out = super().metrics(results, n_completions)  # invalid/zero-spread groups, errors, length, labels, ...
        valid = [r for r in results if r.valid]
        rate(out, "cat/synthesis_extracted", [float(r.synthesis_parsed) for r in results])
        if self.mode == "verifiable":
            rate(out, "cat/majority_disagreement",
                 [float(not r.majority_agrees) for r in valid if r.majority_agrees is not None])
            rate(out, "cat/reference_outside_rollouts", [float(r.outside) for r in valid if r.outside is not None])
        else:
            rubrics = [r for r in valid if r.rubric]
            rate(out, "cat/rubric_size", [float(len(r.rubric)) for r in rubrics])
            verdicts = [v for r in rubrics for row in (r.verdicts or []) for v in row]
            rate(out, "cat/criterion_pass_rate", [float(v is True) for v in verdicts])
            out["cat/judge_errors"] = float(
                sum(1 for r in results for f in r.failures if f.startswith("judge_error")))
        return out

    def __repr__(self) -> str:
        return (f"CaTReward(mode={self.mode!r}, g={self.g}, "
                f"anchor={getattr(self.anchor, 'model', self.anchor)!r}, judge={getattr(self.judge, 'model', None)!r})")


