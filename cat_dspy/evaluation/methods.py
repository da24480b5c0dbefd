"""Test-time methods on one shared set of rollouts: the selection baselines and CaT synthesis (paper §1.7–1.8).

Every method sees only the question and the first G rollouts of one max(G) group (plus their answers and token
log-probabilities); gold answers never reach this module. The selectors (:func:`select_single`,
:func:`select_majority`, :func:`select_min_ppl`, :func:`parse_choice`) are pure; ``self_bon``, ``cat`` and ``cat_q``
make one LM call each, through :class:`SelfBestOfN` and :class:`~cat_dspy.modules.Synthesize`; ``mp`` (mutual
predictability) scores G prompts with the policy's prompt log-probabilities (:class:`MutualPredictability`).
:func:`apply_methods` runs all (method, G) pairs of one question, issuing the LM calls concurrently so the local
engine batches them, and returns one :class:`MethodResult` per pair with the compute that pair spent itself.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import dspy

from cat_dspy.lm.prompt_logprobs import PromptLogprobsUnavailable, prompt_logprobs
from cat_dspy.lm.usage import track_role
from cat_dspy.modules.base import RoleModule, is_backend_failure, thread_map
from cat_dspy.scoring.equivalence import EQUIVALENCE_FALLBACKS, collect_equivalence
from cat_dspy.scoring.rewards import majority_answer
from cat_dspy.signatures import SelectBest
from cat_dspy.tracking import redact

METHODS = ("single", "majority", "self_bon", "min_ppl", "mp", "cat", "cat_q")
VERIFIABLE_ONLY = ("majority",)  # the most common *final answer* has no meaning for free-text responses
ROLE_OF = {"self_bon": "policy", "mp": "policy", "cat": "anchor", "cat_q": "anchor"}  # methods calling an LM: role
_CHOICE = re.compile(r"(?<![\d.])(\d{1,4})(?!\.?\d)")  # a whole number, not part of "2.5"


@dataclass
class MethodResult:
    """What one method returned for one question at one G.

    Attributes:
        method: The method name (one of :data:`METHODS`).
        g: Rollouts the method could use (the first ``g`` of the group).
        index: The selected rollout (selection methods), or None (synthesis).
        text: The method's response: the selected rollout or the synthesized reference.
        answer: Its final answer (verifiable mode), else None.
        fallback: Why the method fell back to the first rollout (``unparseable_choice``, ``no_logprobs``,
            ``no_answer``, ``policy_error``), why it scored some rollouts whole (``no_answer_span``, mp), or why
            it produced nothing (``synthesis_failed``, ``reference_without_answer``).
        usage: LM work of the method's own calls, per role (rollouts not included).
        extra: Method details (the raw self-BoN choice, mean NLLs, the cluster size, ...).
        equivalence_fallbacks: Answer checks of this result (the majority vote's clustering here, its grading
            later) that fell back to string comparison, by reason
            (:data:`cat_dspy.scoring.equivalence.EQUIVALENCE_FALLBACKS`).
    """

    method: str
    g: int
    index: int | None
    text: str
    answer: str | None = None
    fallback: str | None = None
    usage: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    equivalence_fallbacks: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def select_single(rollouts: Sequence[str]) -> int:
    """The ``single`` baseline: the first rollout.

    Examples:
        >>> select_single(["a", "b"])
        0
    """
    if not rollouts:
        raise ValueError("no rollouts")
    return 0


def select_majority(answers: Sequence[str | None], *, mode: str = "symbolic") -> tuple[int, str | None, int]:
    """The ``majority`` baseline: the first rollout of the largest answer cluster.

    Answers cluster by equivalence (:func:`cat_dspy.rewards.majority_answer`); ties go to the cluster founded
    earliest, so the result is deterministic. With no answer at all it falls back to rollout 0.

    Returns:
        ``(index, answer, cluster size)``; size 0 marks the fallback.

    Examples:
        >>> select_majority(["5", "4", "4.0", "5"])  # tie 2-2: the cluster founded first wins
        (0, '5', 2)
        >>> select_majority(["7", None, "3", "3"])
        (2, '3', 2)
        >>> select_majority([None, None])
        (0, None, 0)
    """
    answer, size, members = majority_answer(list(answers), mode=mode)
    return (members[0] if members else 0), answer, size


def mean_nll(logprobs: Sequence[float] | None) -> float | None:
    """Mean negative log-likelihood per token (the log of the perplexity); None when there are no logprobs.

    Examples:
        >>> mean_nll([-1.0, -3.0]), mean_nll([]), mean_nll(None)
        (2.0, None, None)
    """
    if not logprobs:
        return None
    values = [float(x) for x in logprobs]
    if not all(math.isfinite(x) for x in values):
        return None
    return -sum(values) / len(values)


def select_min_ppl(nlls: Sequence[float | None]) -> tuple[int, str | None]:
    """The ``min_ppl`` baseline: the rollout with the lowest mean token NLL (ties: the earliest).

    Rollouts without log-probabilities are not candidates; with none at all it falls back to rollout 0.

    Returns:
        ``(index, fallback)`` where fallback is None, or ``"no_logprobs"``.

    Examples:
        >>> select_min_ppl([0.9, 0.4, None, 0.4])
        (1, None)
        >>> select_min_ppl([None, None])
        (0, 'no_logprobs')
    """
    scored = [(nll, i) for i, nll in enumerate(nlls) if nll is not None]
    if not scored:
        return 0, "no_logprobs"
    return min(scored)[1], None


def parse_choice(text: str | None, g: int) -> int | None:
    """The 0-based rollout index a self-BoN answer names ("3", "Response 3", "<response id=\\"3\\">"), or None.

    The first number in range 1..g wins; numbers out of range or none at all give None.

    Examples:
        >>> parse_choice("The best is response 2.", 4), parse_choice("**3**", 3)
        (1, 2)
        >>> parse_choice("none of them", 4), parse_choice("9", 4), parse_choice("2.5", 4), parse_choice(None, 2)
        (None, None, None, None)
    """
    if not isinstance(text, str):
        return None
    for match in _CHOICE.finditer(text):
        number = int(match.group(1))
        if 1 <= number <= g:
            return number - 1
    return None


class SelfBestOfN(RoleModule):
    """The ``self_bon`` baseline: the policy reads its own rollouts and names the best one (SelectBest).

    Args:
        lm: The policy LM.

    Examples:
        >>> from dspy.utils import DummyLM
        >>> pred = SelfBestOfN(lm=DummyLM([{"choice": "2"}]))(question="q", rollouts=["a", "b"])
        >>> pred.index, pred.fallback
        (1, None)
    """

    def __init__(self, lm: dspy.BaseLM | None = None, adapter: dspy.Adapter | None = None):
        super().__init__(lm=lm, adapter=adapter)
        self.select = dspy.Predict(SelectBest)

    def forward(self, question: str, rollouts: list[str]) -> dspy.Prediction:
        """Ask the policy for the best rollout.

        Returns:
            A prediction with ``index`` (0-based; 0 when the choice could not be read), ``raw`` (the answer),
            ``fallback`` (None, ``"unparseable_choice"`` or ``"policy_error"``) and ``error``.
        """
        if len(rollouts) == 1:
            return dspy.Prediction(index=0, raw="", fallback=None, error=None)  # nothing to choose: no call
        pred, error = self.call(self.select, question=question, rollouts=list(rollouts))
        raw = (pred.choice or "") if pred is not None else ""
        index = parse_choice(raw, len(rollouts))
        fallback = None if index is not None else ("policy_error" if error else "unparseable_choice")
        return dspy.Prediction(index=index or 0, raw=raw, fallback=fallback, error=error)


def mp_prompt(question: str, others: Sequence[str], target: str) -> tuple[str, int]:
    """The mutual-predictability prompt of one rollout: the question, the other rollouts, then that rollout.

    Plain text (no chat template), so that every backend scores the same string.

    Returns:
        ``(prompt, offset)``: the prompt and where ``target`` starts in it.

    Examples:
        >>> text, at = mp_prompt("1+1?", ["It is 2."], "So 2.")
        >>> print(text)
        Question: 1+1?
        <BLANKLINE>
        Response 1:
        It is 2.
        <BLANKLINE>
        Response 2:
        So 2.
        >>> text[at:]
        'So 2.'
    """
    head = "\n\n".join([f"Question: {question}", *(f"Response {k}:\n{o}" for k, o in enumerate(others, 1))])
    head += f"\n\nResponse {len(others) + 1}:\n"
    return head + target, len(head)


def answer_span(text: str, answer: str | None) -> tuple[int, int] | None:
    """Where a rollout states its final answer: the last occurrence of the extracted answer, or None.

    Examples:
        >>> answer_span("2 + 2 = 4. The answer is 4.", "4")
        (25, 26)
        >>> answer_span("no answer here", None), answer_span("x = 1/2", "\\frac{1}{2}")
        (None, None)
    """
    if not answer:
        return None
    at = text.rfind(answer)
    return None if at < 0 else (at, at + len(answer))


def span_nll(tokens: Sequence[tuple[int, int, float | None]], start: int, end: int) -> float | None:
    """Mean NLL of the tokens that overlap characters ``[start, end)`` (None when no such token has a logprob).

    Examples:
        >>> span_nll([(0, 3, None), (3, 5, -1.0), (5, 8, -3.0), (8, 9, -9.0)], 4, 7)
        2.0
        >>> span_nll([(0, 3, None)], 0, 3) is None
        True
    """
    return mean_nll([lp for a, b, lp in tokens if a < end and b > start and b > a and lp is not None])


class MutualPredictability(RoleModule):
    """The ``mp`` baseline (Wen et al. 2025; CaT paper §1.8): the rollout the others predict best.

    For each of the G rollouts, one prompt holds the question, the other G−1 rollouts in a seeded random order,
    then that rollout; the policy scores each prompt (prompt log-probabilities, batched over the G prompts:
    :func:`cat_dspy.lm.prompt_logprobs.prompt_logprobs`) and the rollout whose answer tokens have the lowest mean
    NLL given the others wins (ties: the earliest). The answer tokens are those overlapping the last occurrence of
    the rollout's extracted answer; a rollout whose answer is not found (or has none) is scored on all its tokens
    and counted (``whole_rollout``, fallback ``no_answer_span``). Free-text responses (``answers=None``) are scored
    whole, which is no fallback.

    Args:
        lm: The policy LM (the local engine, or a vLLM server).
        seed: Seeds the order of the other rollouts (with the question, G and the rollout's position).

    Examples:
        >>> from cat_dspy.testing.scripted import scripted_lm
        >>> MutualPredictability(lm=scripted_lm([]))(question="q", rollouts=["only"]).index
        0
    """

    def __init__(self, lm: dspy.BaseLM | None = None, seed: int = 0):
        super().__init__(lm=lm)
        self.seed = seed

    def prompts(self, question: str, rollouts: Sequence[str],
                answers: Sequence[str | None] | None = None) -> tuple[list[str], list[tuple[int, int]], int]:
        """The G prompts, the character span scored in each, and how many rollouts are scored whole (fallback)."""
        g, prompts, spans, whole = len(rollouts), [], [], 0
        for i, target in enumerate(rollouts):
            others = [rollouts[j] for j in range(g) if j != i]
            random.Random(f"mp\0{self.seed}\0{question}\0{g}\0{i}").shuffle(others)
            text, at = mp_prompt(question, others, target)
            span = answer_span(target, answers[i]) if answers is not None else None
            if span is None:
                whole += answers is not None
                span = (0, len(target))
            prompts.append(text)
            spans.append((at + span[0], at + span[1]))
        return prompts, spans, whole

    def forward(self, question: str, rollouts: list[str],
                answers: Sequence[str | None] | None = None) -> dspy.Prediction:
        """Pick the rollout the others predict best.

        Returns:
            A prediction with ``index`` (0 on a fallback), ``nlls`` (per rollout: mean NLL of its scored tokens,
            None when it had none), ``whole_rollout`` (rollouts scored whole although answers were expected),
            ``fallback`` (None, ``"no_answer_span"``, ``"no_logprobs"`` or ``"policy_error"``) and ``error``.

        Raises:
            PromptLogprobsUnavailable: The policy's backend cannot score text.
        """
        if len(rollouts) == 1:  # nothing to choose: no call
            return dspy.Prediction(index=0, nlls=[None], whole_rollout=0, fallback=None, error=None)
        prompts, spans, whole = self.prompts(question, rollouts, answers)
        try:
            scores = prompt_logprobs(self.lm or dspy.settings.lm, prompts)
        except Exception as exc:  # a failed backend is counted; a backend that cannot score text is raised
            if isinstance(exc, PromptLogprobsUnavailable) or not is_backend_failure(exc):
                raise
            error = f"{type(exc).__name__}: {redact(str(exc))[:500]}"
            return dspy.Prediction(index=0, nlls=[None] * len(rollouts), whole_rollout=whole,
                                   fallback="policy_error", error=error)
        nlls = [span_nll(tokens, a, b) for tokens, (a, b) in zip(scores, spans, strict=True)]
        index, fallback = select_min_ppl(nlls)
        return dspy.Prediction(index=index, nlls=nlls, whole_rollout=whole,
                               fallback=fallback or ("no_answer_span" if whole else None), error=None)


def apply_methods(
    question: str,
    rollouts: Sequence[str],
    answers: Sequence[str | None] | None,
    nlls: Sequence[float | None] | None,
    gs: Sequence[int],
    methods: Sequence[str],
    *,
    synthesize: Any = None,
    synthesize_q: Any = None,
    select_best: SelfBestOfN | None = None,
    mutual: MutualPredictability | None = None,
    verifiable: bool = True,
    equivalence: str = "symbolic",
    num_threads: int | None = None,
) -> list[MethodResult]:
    """Run every (method, G) on one question's rollouts; methods at G see only ``rollouts[:G]``.

    Args:
        question: The question (shown to the policy for self-BoN and to the question-aware anchor only).
        rollouts: The max(G) rollouts, in rollout-id order.
        answers: Their extracted final answers (verifiable mode), else None.
        nlls: Their mean token NLLs (None entries: no logprobs), else None.
        gs: The G values.
        methods: Method names; ``majority`` is skipped when not ``verifiable``.
        synthesize: The question-blind :class:`~cat_dspy.modules.Synthesize` (for ``cat``).
        synthesize_q: The question-aware one (for ``cat_q``).
        select_best: The :class:`SelfBestOfN` module (for ``self_bon``).
        mutual: The :class:`MutualPredictability` module (for ``mp``).
        verifiable: Whether answers are graded (else responses are).
        equivalence: Answer equivalence mode for majority clustering.
        num_threads: Concurrent LM calls (default: all at once).

    Returns:
        One result per (method, G), in ``methods`` × ``gs`` order.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if max(gs) > len(rollouts):
        raise ValueError(f"G={max(gs)} but only {len(rollouts)} rollouts")
    answers = list(answers) if answers is not None else [None] * len(rollouts)
    nlls = list(nlls) if nlls is not None else [None] * len(rollouts)

    def answer_of(i: int) -> str | None:
        return answers[i] if verifiable else None

    def local(method: str, g: int) -> MethodResult:
        if method == "single":
            i = select_single(rollouts[:g])
            return MethodResult(method, g, i, rollouts[i], answer_of(i))
        if method == "majority":
            i, answer, size = select_majority(answers[:g], mode=equivalence)
            return MethodResult(method, g, i, rollouts[i], answer, None if size else "no_answer", extra={"size": size})
        i, fallback = select_min_ppl(nlls[:g])
        return MethodResult(method, g, i, rollouts[i], answer_of(i), fallback, extra={"nll": nlls[i]})

    def remote(job: tuple[str, int]) -> MethodResult:
        method, g = job
        usage: dict[str, dict[str, float]] = {}
        with track_role(usage, ROLE_OF[method]):  # no engine counters: concurrent jobs share one engine
            if method == "self_bon":
                if select_best is None:
                    raise ValueError("self_bon needs a SelfBestOfN module")
                pred = select_best(question=question, rollouts=list(rollouts[:g]))
            elif method == "mp":
                if mutual is None:
                    raise ValueError("mp needs a MutualPredictability module")
                pred = mutual(question=question, rollouts=list(rollouts[:g]),
                              answers=answers[:g] if verifiable else None)
            else:
                module = synthesize if method == "cat" else synthesize_q
                if module is None:
                    raise ValueError(f"{method} needs a Synthesize module")
                pred = module(rollouts=list(rollouts[:g]), question=question if method == "cat_q" else None)
        for counts in usage.values():
            counts.pop("generate_calls", None)
        if method == "mp":
            extra = {"nll": pred.nlls, "whole_rollout": pred.whole_rollout, "error": pred.error}
            return MethodResult(method, g, pred.index, rollouts[pred.index], answer_of(pred.index), pred.fallback,
                                usage, extra)
        if method == "self_bon":
            extra = {"choice": pred.raw, "error": pred.error}
            return MethodResult(method, g, pred.index, rollouts[pred.index], answer_of(pred.index), pred.fallback,
                                usage, extra)
        fallback = "synthesis_failed" if pred.error else (None if pred.parsed else
                                                          "reference_without_answer" if verifiable else "empty")
        return MethodResult(method, g, None, pred.reference, pred.answer if verifiable else None, fallback, usage,
                            {"error": pred.error})

    chosen = [m for m in methods if verifiable or m not in VERIFIABLE_ONLY]
    jobs = [(m, g) for m in chosen for g in gs]
    remote_jobs = [job for job in jobs if job[0] in ROLE_OF]
    done = dict(zip(remote_jobs, thread_map(remote, remote_jobs, num_threads), strict=True))
    for job in jobs:
        if job not in done:
            with collect_equivalence() as outcomes:
                done[job] = local(*job)
            done[job].equivalence_fallbacks = {k: outcomes[k] for k in EQUIVALENCE_FALLBACKS if outcomes[k]}
    return [done[job] for job in jobs]
