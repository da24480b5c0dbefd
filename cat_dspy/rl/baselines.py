"""The comparison rewards of CaT-RL, each a TRL group reward like the CaT reward
(:class:`~cat_dspy.rl.group.GroupReward`: the same grouping across processes, ``None`` for a group that could not be
scored, counted ``<arm>/*`` metrics).

* :class:`MajorityReward` (``majority_reward``): TTRL's label-free reward, 1 when a rollout's answer is the group's
  majority answer (:func:`cat_dspy.scoring.rewards.majority_answer`).
* :class:`JudgeReward` (``judge_reward``): the paper's model-as-judge baseline (cat-paper.md §1.4): the anchor
  synthesizes the reference as in CaT, the judge decides whether each rollout is semantically equivalent to it.
* :class:`PhysicianRubricReward` (``physician_rubric_reward``): HealthBench's own physician rubric items graded by
  the judge, the simple-evals score clipped to [0, 1] (:class:`cat_dspy.modules.rubric_grader.RubricGrader`).
* :class:`GoldReward` (``gold_reward``): the supervised upper bound, 1 when a rollout's answer equals the dataset's.
* :class:`RandomReward` (``random_reward``): the control, 1 with probability ``p`` whatever the rollout says.
* :class:`MinPPLReward` (``min_ppl_reward``): the min-perplexity pseudo-label: the answer of the rollout the frozen
  anchor finds most likely.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from cat_dspy.config import DEFAULTS
from cat_dspy.lm.usage import track_role
from cat_dspy.rl.group import Completion, GroupReward, GroupScore, json_column, label_check, rate
from cat_dspy.rl.inputs import prompt_conversation
from cat_dspy.scoring.extraction import extract_answer
from cat_dspy.scoring.rewards import majority_answer, verifiable_reward


@dataclass(frozen=True, kw_only=True)
class AnswerGroupScore(GroupScore):
    """A group scored on its rollouts' final answers (majority vote, gold)."""

    answers: list[str | None] = field(default_factory=list)  # answer(o_i), None where none could be extracted
    majority_answer: str | None = None  # majority: the group's majority answer (None: no rollout has an answer)
    consensus: float = 0.0  # majority: the majority cluster's size / G
    correct: list[float] = field(default_factory=list)  # gold: each rollout's answer is right (before any penalty)


@dataclass(frozen=True, kw_only=True)
class JudgeGroupScore(GroupScore):
    """A group scored by the model-as-judge: the anchor's reference and the judge's verdict per rollout."""

    synthesis_parsed: bool = False  # the reference is non-empty / has an answer
    verdicts: list[bool | None] = field(default_factory=list)  # equivalent to the reference (None: unread)


@dataclass(frozen=True, kw_only=True)
class PhysicianRubricGroupScore(GroupScore):
    """A group graded against its prompt's physician rubric items."""

    met: list[list[bool]] = field(default_factory=list)  # per rollout, per rubric item: judged met
    unread: int = 0  # verdicts the grader's output did not give
    scores: list[float] = field(default_factory=list)  # the simple-evals score per rollout, before clipping


def _role_lm(lm: Any, role: str) -> Any:
    if isinstance(lm, str):
        from cat_dspy.lm.roles import role_lm

        return role_lm(lm, role, max_tokens=DEFAULTS[f"{role}_max_tokens"])
    return lm


class _AnswerReward(GroupReward):
    """A reward on the rollouts' extracted final answers (majority, gold)."""

    artifact_fields = ("answers",)
    score_type = AnswerGroupScore

    def __init__(self, g: int | None = None, g_eval: int | None = None,
                 equivalence: str = DEFAULTS["equivalence"], extraction: str = DEFAULTS["extraction"],
                 length_limit: int | None = DEFAULTS["length_limit"], num_threads: int | None = DEFAULTS["num_threads"],
                 artifacts: bool = DEFAULTS["artifacts"], trace_every: int = DEFAULTS["trace_every"],
                 name: str | None = None, **deprecated: int | None):
        super().__init__(g, g_eval, num_threads, artifacts, trace_every, name or f"{self.prefix}_reward",
                         **deprecated)
        self.equivalence = equivalence
        self.extraction = extraction
        self.length_limit = length_limit

    @property
    def checks_answers(self) -> bool:
        return True

    def answers(self, rows: list[Completion]) -> list[str | None]:
        return [extract_answer(row.text, self.extraction) for row in rows]

    def metrics(self, results: list[AnswerGroupScore], n_completions: int) -> dict[str, float]:
        out = super().metrics(results, n_completions)
        rate(out, f"{self.prefix}/answer_extracted",
             [float(a is not None) for r in results if r.valid for a in r.answers])
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(g={self.g}, equivalence={self.equivalence!r}, "
                f"extraction={self.extraction!r})")


class MajorityReward(_AnswerReward):
    r"""TTRL's majority-vote reward (label-free): 1 when a rollout's final answer is in the group's majority cluster.

    Answers are clustered by equivalence (:func:`~cat_dspy.scoring.rewards.majority_answer`, ``equivalence``
    settings); a rollout without an answer gets 0, and a group where no rollout has one gets 0 throughout (no GRPO
    signal). Metrics: ``majority/answer_extracted``, ``majority/consensus`` (mean majority size / G),
    ``majority/no_answer_groups``, and with gold answers (evaluating, ``label_metrics``) ``majority/label_accuracy``
    (the majority answer is right) and ``majority/reward_accuracy`` (reward = gold reward), as TTRL reports them.

    Examples:
        >>> reward = MajorityReward(g=3)
        >>> reward(prompts=["2+2?"] * 3, completions=["\\boxed{4}", "\\boxed{4.0}", "\\boxed{5}"])
        [1.0, 1.0, 0.0]
        >>> reward.__name__, round(reward.last_metrics["majority/consensus"], 3)
        ('majority_reward', 0.667)
    """

    prefix = "majority"
    artifact_fields = ("majority_answer", "answers")

    def score_group(self, rows: list[Completion]) -> AnswerGroupScore:
        answers = self.answers(rows)
        majority, size, members = majority_answer(answers, mode=self.equivalence)
        matches = [1.0 if i in members else 0.0 for i in range(len(rows))]
        rewards, hits = self.penalize(matches, rows, self.length_limit)
        labels = label_check(majority, answers, matches, rows[0].gold, self.equivalence)  # gold: label metrics only
        return AnswerGroupScore(valid=True, rewards=rewards, answers=answers, majority_answer=majority,
                                consensus=size / len(rows), length_hits=hits, **labels)

    def metrics(self, results: list[AnswerGroupScore], n_completions: int) -> dict[str, float]:
        out = super().metrics(results, n_completions)  # majority/label_accuracy, majority/reward_accuracy too
        valid = [r for r in results if r.valid]
        rate(out, "majority/consensus", [r.consensus for r in valid if r.majority_answer is not None])
        out["majority/no_answer_groups"] = float(sum(1 for r in valid if r.majority_answer is None))
        return out


class GoldReward(_AnswerReward):
    r"""The supervised upper bound: 1 when a rollout's final answer is equivalent to the dataset's ``answer``.

    The training set must carry the ``answer`` column (``cat-dspy train`` adds it for this reward); a group whose
    label is missing gets ``None`` and is counted in ``gold/missing_labels``. Metrics: ``gold/answer_extracted``,
    ``gold/accuracy`` (the fraction of rollouts that are right, before any length penalty).

    Examples:
        >>> reward = GoldReward(g=2)
        >>> reward(prompts=["2+2?"] * 2, completions=["so \\boxed{4}", "\\boxed{22}"], answer=["4", "4"])
        [1.0, 0.0]
    """

    prefix = "gold"
    reads_labels = True

    def score_group(self, rows: list[Completion]) -> AnswerGroupScore:
        if any(row.gold is None for row in rows):
            return AnswerGroupScore(valid=False, failures=["missing_label"])
        answers = self.answers(rows)
        matches = [verifiable_reward(a, row.gold, mode=self.equivalence) for a, row in zip(answers, rows, strict=True)]
        rewards, hits = self.penalize(matches, rows, self.length_limit)
        return AnswerGroupScore(valid=True, rewards=rewards, answers=answers, correct=matches, length_hits=hits)

    def metrics(self, results: list[AnswerGroupScore], n_completions: int) -> dict[str, float]:
        out = super().metrics(results, n_completions)
        rate(out, "gold/accuracy", [c for r in results if r.valid for c in r.correct])
        out["gold/missing_labels"] = float(sum(1 for r in results if "missing_label" in r.failures))
        return out


class RandomReward(_AnswerReward):
    r"""The random-reward control: reward 1 with probability ``p``, whatever the rollout says (label-free and
    content-free). A gain under it is not a teacher's: it measures what GRPO's mechanics alone do to the policy, so a
    label-free arm's gain over base counts only beyond this arm's.

    The draw is a function of ``(seed, prompt, completion text)`` (SHA-256), so a rerun or a resumed run gives the
    same rewards. Metrics: ``random/answer_extracted``, ``random/rate`` (the share rewarded), and with gold answers
    (evaluating, ``label_metrics``) ``random/reward_accuracy`` (reward = gold reward).

    Args:
        p: The probability of reward 1.
        seed: Seeds the draws.
        g, g_eval, extraction, length_limit, num_threads, artifacts, trace_every, name: As for
            :class:`MajorityReward`.

    Examples:
        >>> reward = RandomReward(g=4, p=0.5, seed=0)
        >>> first = reward(prompts=["2+2?"] * 4, completions=["\\boxed{4}", "5", "6", "\\boxed{4}"])
        >>> first == reward(prompts=["2+2?"] * 4, completions=["\\boxed{4}", "5", "6", "\\boxed{4}"])
        True
        >>> set(first) <= {0.0, 1.0}, first[0] == first[3]  # the same text, the same draw
        (True, True)
    """

    prefix = "random"

    def __init__(self, g: int | None = None, g_eval: int | None = None, p: float = 0.5, seed: int = 0,
                 extraction: str = DEFAULTS["extraction"], length_limit: int | None = DEFAULTS["length_limit"],
                 num_threads: int | None = DEFAULTS["num_threads"], artifacts: bool = DEFAULTS["artifacts"],
                 trace_every: int = DEFAULTS["trace_every"], name: str | None = None, **deprecated: int | None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomReward: p must be in [0, 1], got {p}")
        super().__init__(g, g_eval, extraction=extraction, length_limit=length_limit, num_threads=num_threads,
                         artifacts=artifacts, trace_every=trace_every, name=name, **deprecated)
        self.p = p
        self.seed = seed

    def draw(self, row: Completion) -> float:
        """1.0 or 0.0 for one completion: its SHA-256 draw against ``p``."""
        digest = hashlib.sha256(f"{self.seed}\0{row.key}\0{row.text}".encode()).digest()
        return 1.0 if int.from_bytes(digest[:8], "big") / 2**64 < self.p else 0.0

    def score_group(self, rows: list[Completion]) -> AnswerGroupScore:
        answers = self.answers(rows)
        draws = [self.draw(row) for row in rows]
        rewards, hits = self.penalize(draws, rows, self.length_limit)
        labels = label_check(None, answers, draws, rows[0].gold, self.equivalence)  # gold: label metrics only
        labels.pop("label_correct", None)  # a random draw has no pseudo-label
        return AnswerGroupScore(valid=True, rewards=rewards, answers=answers, length_hits=hits, **labels)

    def metrics(self, results: list[AnswerGroupScore], n_completions: int) -> dict[str, float]:
        out = super().metrics(results, n_completions)
        rate(out, "random/rate", [r for result in results if result.valid for r in result.rewards])
        return out

    def __repr__(self) -> str:
        return f"RandomReward(g={self.g}, p={self.p}, seed={self.seed})"


@dataclass(frozen=True, kw_only=True)
class PerplexityGroupScore(AnswerGroupScore):
    """A group scored by the frozen anchor's perplexity of each rollout."""

    nlls: list[float | None] = field(default_factory=list)  # mean NLL of each rollout's tokens (None: unscored)
    label: str | None = None  # the lowest-perplexity rollout's answer: the pseudo-label


def anchor_prompt(anchor: Any, prompt: Any) -> str:
    r"""A conversation rendered by the anchor's local engine (its chat template, the generation prompt), for a
    reward not bound to a trainer; a string prompt as is.

    Raises:
        PromptLogprobsUnavailable: A conversation, and the anchor has no local engine to render it with (bind the
            reward to the trainer: its tokenizer renders what the policy saw).

    Examples:
        >>> anchor_prompt(None, "Q: 2+2? A:")
        'Q: 2+2? A:'
    """
    from cat_dspy.lm.models import engine_of
    from cat_dspy.lm.prompt_logprobs import PromptLogprobsUnavailable
    from cat_dspy.rl.inputs import prompt_messages

    if isinstance(prompt, str):
        return prompt
    engine = engine_of(anchor)
    if engine is None:
        raise PromptLogprobsUnavailable("the min_ppl reward cannot render a conversation for a server anchor "
                                        "unbound to a trainer (reward.callback() gives it the trainer's tokenizer)")
    return engine.chat_prompt(prompt_messages(prompt))


class MinPPLReward(_AnswerReward):
    r"""The min-perplexity reward (label-free): the frozen anchor reads each rollout after its prompt, and the
    rollout it finds most likely (the lowest mean token NLL; ties: the first) gives the group's pseudo-label; reward
    1 goes to every rollout with that answer (:data:`~cat_dspy.evaluation.signals.SIGNALS` ``min_ppl``, the signal
    the signal table scores, with the anchor's log-probabilities in place of the sampler's).

    The completion is scored after the text the policy saw (:meth:`~cat_dspy.rl.group.GroupReward.policy_prompt`:
    the trainer's chat template; unbound, the anchor's local engine renders it), re-tokenized: a token straddling
    the prompt's end is not the completion's and is left out. The anchor is the initial policy, so at the first step
    this is the policy's own perplexity; later it is the
    perplexity under the frozen start, which the policy cannot drift to lower by itself. A rollout without an
    answer gets 0; a group whose pick has no answer gets 0 throughout. The anchor must score text
    (:func:`~cat_dspy.lm.prompt_logprobs.prompt_logprobs`: the local engines, a vLLM server); a failed or refused
    call makes the group ``None``, counted in ``min_ppl/anchor_errors``. Metrics: ``min_ppl/answer_extracted``,
    ``min_ppl/no_answer_groups``, and with gold answers ``min_ppl/label_accuracy`` and ``min_ppl/reward_accuracy``.

    Args:
        anchor: The LM that scores (a ``dspy.LM`` on a local engine or vLLM, or a model string).
        g, g_eval, equivalence, extraction, length_limit, num_threads, artifacts, trace_every, name: As for
            :class:`MajorityReward`.

    Examples:
        >>> class Scored(MinPPLReward):  # the anchor's NLLs given, to show the rule
        ...     def nlls(self, rows, usage=None):
        ...         return [2.0, 0.1, 0.5]
        >>> Scored(anchor=None, g=3, extraction="flexible")(prompts=["2+2?"] * 3, completions=["5", "so 4", "4"])
        [0.0, 1.0, 1.0]
    """

    prefix = "min_ppl"
    error_roles = ("anchor", "reward")
    artifact_fields = ("label", "nlls", "answers")
    score_type = PerplexityGroupScore

    def __init__(self, anchor: Any, g: int | None = None, g_eval: int | None = None,
                 equivalence: str = DEFAULTS["equivalence"], extraction: str = DEFAULTS["extraction"],
                 length_limit: int | None = DEFAULTS["length_limit"], num_threads: int | None = DEFAULTS["num_threads"],
                 artifacts: bool = DEFAULTS["artifacts"], trace_every: int = DEFAULTS["trace_every"],
                 name: str | None = None, **deprecated: int | None):
        super().__init__(g, g_eval, equivalence=equivalence, extraction=extraction, length_limit=length_limit,
                         num_threads=num_threads, artifacts=artifacts, trace_every=trace_every, name=name,
                         **deprecated)
        self._anchor = _role_lm(anchor, "anchor")

    def nlls(self, rows: list[Completion], usage: dict[str, dict[str, float]] | None = None) -> list[float | None]:
        """The anchor's mean NLL of each rollout's tokens after its prompt (None: no token of it was scored); the
        work is recorded under ``usage["anchor"]``."""
        from cat_dspy.lm.prompt_logprobs import prompt_logprobs
        from cat_dspy.scoring.selection import mean_nll

        given = rows[0].prompt if rows[0].prompt is not None else rows[0].question
        prompt = self.policy_prompt(given) or anchor_prompt(self._anchor, given)
        with track_role({} if usage is None else usage, "anchor", self._anchor):
            scored = prompt_logprobs(self._anchor, [prompt + row.text for row in rows])
        return [mean_nll([lp for start, _, lp in tokens if start >= len(prompt) and lp is not None])
                for tokens in scored]

    def score_group(self, rows: list[Completion]) -> PerplexityGroupScore:
        from cat_dspy.evaluation.signals import SIGNALS, Group
        from cat_dspy.lm.prompt_logprobs import PromptLogprobsUnavailable
        from cat_dspy.modules.base import is_backend_failure

        answers, usage = self.answers(rows), {}
        try:
            nlls = self.nlls(rows, usage)
        except Exception as exc:
            if not (isinstance(exc, PromptLogprobsUnavailable) or is_backend_failure(exc)):
                raise
            return PerplexityGroupScore(valid=False, usage=usage,
                                        failures=[f"anchor_error: {type(exc).__name__}: {exc}"[:300]])
        signal = SIGNALS["min_ppl"].score(Group(rows[0].question, answers, nlls=nlls, equivalence=self.equivalence))
        matches = [float(r) for r in signal.rewards] if signal.rewards else [0.0] * len(rows)
        rewards, hits = self.penalize(matches, rows, self.length_limit)
        labels = label_check(signal.label, answers, matches, rows[0].gold, self.equivalence)  # gold: metrics only
        return PerplexityGroupScore(valid=True, rewards=rewards, answers=answers, nlls=nlls, label=signal.label,
                                    length_hits=hits, usage=usage, **labels)

    def metrics(self, results: list[AnswerGroupScore], n_completions: int) -> dict[str, float]:
        out = super().metrics(results, n_completions)
        out["min_ppl/no_answer_groups"] = float(sum(1 for r in results if r.valid and r.label is None))
        return out

    @property
    def anchor(self) -> Any:
        return self._anchor

    def __repr__(self) -> str:
        return (f"MinPPLReward(g={self.g}, anchor={getattr(self._anchor, 'model', self._anchor)!r}, "
                f"equivalence={self.equivalence!r}, extraction={self.extraction!r})")


class JudgeReward(GroupReward):
    r"""The paper's model-as-judge reward: the frozen anchor synthesizes the reference from the group (as CaT does,
    question-blind unless ``question_aware``), then the judge decides, per rollout, whether it is semantically
    equivalent to the reference (:class:`~cat_dspy.modules.equivalence_judge.EquivalenceJudge`): reward 1 or 0.

    A failed anchor or judge call makes the group ``None`` (counted: ``judge/anchor_errors``,
    ``judge/judge_errors``, ``judge/invalid_groups``); an unreadable verdict counts as not equivalent and is
    counted in ``judge/unread_verdicts``; an empty reference gives 0 throughout (``None`` with ``skip_unparsed``).
    Metrics also: ``judge/synthesis_extracted``, ``judge/equivalent_rate``; the references are logged in the
    ``judge_reference`` column.

    Args:
        anchor: The frozen anchor π_0 (a ``dspy.LM`` or a model string).
        judge: The judge π_J (the paper: GPT-4o).
        mode: ``"verifiable"`` (math: the reasoning synthesis) or ``"rubric"`` (free-form synthesis), as CaT's.
        length_limit: Reward −1 above this many tokens (the paper's HealthBench penalty).
        Other arguments: as :class:`~cat_dspy.rl.reward.CaTReward`.

    Examples:
        >>> from cat_dspy.testing import scripted_lm
        >>> anchor = scripted_lm(["# UNIFIED RESPONSE The answer is $\\boxed{4}$."])
        >>> judge = scripted_lm(lambda prompt: "yes" if "boxed{4}" in prompt.split("<response>")[-1] else "no")
        >>> JudgeReward(anchor, judge, g=2)(prompts=["2+2?"] * 2, completions=["\\boxed{4}", "5"])
        [1.0, 0.0]
    """

    prefix = "judge"
    error_roles = ("anchor", "judge", "reward")
    reference_column = "judge_reference"
    artifact_fields = ("reference", "verdicts")
    score_type = JudgeGroupScore

    def __init__(self, anchor: Any, judge: Any, mode: str = DEFAULTS["mode"], g: int | None = None,
                 g_eval: int | None = None, question_aware: bool = DEFAULTS["question_aware"],
                 extraction: str = DEFAULTS["extraction"], length_limit: int | None = DEFAULTS["length_limit"],
                 skip_unparsed: bool = DEFAULTS["skip_unparsed"], num_threads: int | None = DEFAULTS["num_threads"],
                 artifacts: bool = DEFAULTS["artifacts"], trace_every: int = DEFAULTS["trace_every"],
                 name: str = "judge_reward", **deprecated: int | None):
        from cat_dspy.modules.equivalence_judge import EquivalenceJudge
        from cat_dspy.modules.synthesize import Synthesize

        anchor, judge = _role_lm(anchor, "anchor"), _role_lm(judge, "judge")
        if anchor is None or judge is None:
            raise ValueError("judge_reward needs the frozen anchor (synthesis) and a judge LM")
        super().__init__(g, g_eval, num_threads, artifacts, trace_every, name, **deprecated)
        self.mode = mode
        self.length_limit = length_limit
        self.skip_unparsed = skip_unparsed
        self.synthesize = Synthesize(mode="reasoning" if mode == "verifiable" else "freeform",
                                     question_aware=question_aware, extraction=extraction, lm=anchor)
        self.equivalence_judge = EquivalenceJudge(lm=judge)

    @property
    def anchor(self) -> Any:
        return self.synthesize.lm

    @property
    def judge(self) -> Any:
        return self.equivalence_judge.lm

    def score_group(self, rows: list[Completion]) -> JudgeGroupScore:
        usage: dict[str, dict[str, float]] = {}
        with track_role(usage, "anchor", self.anchor):
            synthesis = self.synthesize(rollouts=[row.text for row in rows], question=rows[0].question)
        reference = {"reference": synthesis.reference, "synthesis_parsed": bool(synthesis.parsed), "usage": usage}
        if synthesis.error:
            return JudgeGroupScore(valid=False, failures=[f"anchor_error: {synthesis.error}"], **reference)
        if not synthesis.reference.strip():
            rewards = [None] * len(rows) if self.skip_unparsed else [0.0] * len(rows)
            return JudgeGroupScore(valid=True, rewards=rewards, skipped=self.skip_unparsed,
                                   failures=["empty_reference"], **reference)
        with track_role(usage, "judge", self.judge):
            judged = self.equivalence_judge.map(
                lambda row: self.equivalence_judge(reference=synthesis.reference, response=row.text), rows)
        errors = [j.error for j in judged if j.error]
        verdicts = [j.equivalent for j in judged]
        if errors:
            return JudgeGroupScore(valid=False, failures=[f"judge_error: {e}" for e in errors], **reference)
        rewards, hits = self.penalize([1.0 if v else 0.0 for v in verdicts], rows, self.length_limit)
        return JudgeGroupScore(valid=True, rewards=rewards, verdicts=verdicts, length_hits=hits,
                               failures=["unread_verdict"] * sum(v is None for v in verdicts), **reference)

    def metrics(self, results: list[JudgeGroupScore], n_completions: int) -> dict[str, float]:
        out = super().metrics(results, n_completions)
        rate(out, "judge/synthesis_extracted", [float(r.synthesis_parsed) for r in results])
        verdicts = [v for r in results if r.valid for v in r.verdicts]
        rate(out, "judge/equivalent_rate", [float(v is True) for v in verdicts])
        out["judge/unread_verdicts"] = float(sum(v is None for v in verdicts))
        return out

    def __repr__(self) -> str:
        return (f"JudgeReward(mode={self.mode!r}, g={self.g}, "
                f"anchor={getattr(self.anchor, 'model', self.anchor)!r}, judge={getattr(self.judge, 'model', None)!r})")


class PhysicianRubricReward(GroupReward):
    r"""HealthBench's physician-rubric reward (the physician-rubric RL arm): each rollout graded by the judge
    against the prompt's own rubric items, the simple-evals score (points of the met items ÷ total positive points,
    :func:`~cat_dspy.evaluation.grading.healthbench_score`) clipped to [0, 1].

    The rubric items reach the reward as the ``rubrics`` dataset column (a list of ``{criterion, points}`` items,
    or that list as JSON), which ``cat-dspy train`` adds for this reward; the grader sees the conversation without
    its system message, as evaluation does. A failed judge call makes the group ``None`` (``physician_rubric/
    judge_errors``), so does a rubric without positive points (``physician_rubric/unscorable_rubrics``); unreadable
    verdicts count as not met and are counted (``physician_rubric/unread_verdicts``). Metrics also:
    ``physician_rubric/items_met`` (the fraction of rubric items judged met) and ``physician_rubric/raw_score``
    (the mean score before clipping).

    Args:
        judge: The grader π_J (the paper: GPT-4o; simple-evals: gpt-4.1).
        length_limit: Reward −1 above this many tokens (the paper's HealthBench penalty).
        Other arguments: as :class:`~cat_dspy.rl.reward.CaTReward`.

    Examples:
        >>> from cat_dspy.testing import scripted_lm
        >>> judge = scripted_lm(lambda prompt: "yes" if "Rest" in prompt and "[3]" in prompt else "no")
        >>> rubric = [{"criterion": "Advises rest.", "points": 3}, {"criterion": "Mentions ice.", "points": 1}]
        >>> PhysicianRubricReward(judge, g=2)(
        ...     prompts=["Sprained ankle?"] * 2, completions=["Rest it.", "Walk it off."], rubrics=[rubric] * 2)
        [0.75, 0.0]
    """

    prefix = "physician_rubric"
    train_columns = ("rubrics",)
    error_roles = ("judge", "reward")
    artifact_fields = ("scores", "met")
    score_type = PhysicianRubricGroupScore

    def __init__(self, judge: Any, g: int | None = None, g_eval: int | None = None,
                 length_limit: int | None = DEFAULTS["length_limit"], num_threads: int | None = DEFAULTS["num_threads"],
                 artifacts: bool = DEFAULTS["artifacts"], trace_every: int = DEFAULTS["trace_every"],
                 name: str = "physician_rubric_reward", **deprecated: int | None):
        from cat_dspy.modules.rubric_grader import RubricGrader

        judge = _role_lm(judge, "judge")
        if judge is None:
            raise ValueError("physician_rubric_reward needs a judge LM (the grader of the rubric items)")
        super().__init__(g, g_eval, num_threads, artifacts, trace_every, name, **deprecated)
        self.length_limit = length_limit
        self.grader = RubricGrader(lm=judge)

    @property
    def judge(self) -> Any:
        return self.grader.lm

    def score_group(self, rows: list[Completion]) -> PhysicianRubricGroupScore:
        rubrics = json_column(rows[0].data["rubrics"])
        if not isinstance(rubrics, list) or not all(isinstance(i, dict) and "criterion" in i and "points" in i
                                                    for i in rubrics):
            raise ValueError(f"physician_rubric_reward: the 'rubrics' value of {rows[0].question[:80]!r} must be a "
                             f"list of {{criterion, points}} items, got {str(rubrics)[:200]}")
        conversation = prompt_conversation(rows[0].prompt)
        usage: dict[str, dict[str, float]] = {}
        with track_role(usage, "judge", self.judge):
            graded = self.grader.map(
                lambda row: self.grader(conversation=conversation, response=row.text, rubrics=rubrics), rows)
        graded_fields = {"usage": usage, "met": [g.met for g in graded], "unread": sum(g.unread for g in graded)}
        errors = [e for g in graded for e in g.errors]
        if errors:
            return PhysicianRubricGroupScore(valid=False, failures=[f"judge_error: {e}" for e in errors],
                                             **graded_fields)
        scores = [g.score for g in graded]
        if any(s is None for s in scores):
            return PhysicianRubricGroupScore(valid=False, failures=["rubric_without_positive_points"],
                                             **graded_fields)
        clipped = [min(1.0, max(0.0, float(s))) for s in scores]
        rewards, hits = self.penalize(clipped, rows, self.length_limit)
        return PhysicianRubricGroupScore(valid=True, rewards=rewards, scores=scores, length_hits=hits,
                                         failures=["unread_verdicts"] * bool(graded_fields["unread"]), **graded_fields)

    def metrics(self, results: list[PhysicianRubricGroupScore], n_completions: int) -> dict[str, float]:
        out = super().metrics(results, n_completions)
        valid = [r for r in results if r.valid]
        rate(out, "physician_rubric/items_met", [float(m) for r in valid for met in r.met for m in met])
        rate(out, "physician_rubric/raw_score", [s for r in valid for s in r.scores])
        out["physician_rubric/unread_verdicts"] = float(sum(r.unread for r in results))
        out["physician_rubric/unscorable_rubrics"] = float(
            sum(1 for r in results if "rubric_without_positive_points" in r.failures))
        return out

    def __repr__(self) -> str:
        return (f"PhysicianRubricReward(g={self.g}, "
                f"judge={getattr(self.judge, 'model', None)!r})")
