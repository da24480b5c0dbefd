"""Test-time methods on one shared set of rollouts: the selection baselines and CaT synthesis (paper §1.7–1.8).

Every method sees only the question and the first G rollouts of one max(G) group (plus their answers and token
log-probabilities); gold answers never reach this module. Each method is one small object with a common interface
(:class:`Method`: a ``name``, the ``role`` whose LM it calls or None, and ``run(context, g) -> MethodResult``), kept
in the registry :data:`REGISTRY` (name -> method). The local ones (``single``, ``majority``, ``min_ppl``) use the
pure selectors of :mod:`cat_dspy.scoring.selection`; ``self_bon``, ``cat`` and ``cat_q`` make one LM call each,
through :class:`~cat_dspy.modules.SelfBestOfN` and :class:`~cat_dspy.modules.Synthesize`; ``mp`` (mutual
predictability) scores G prompts with the policy's prompt log-probabilities
(:class:`~cat_dspy.modules.MutualPredictability`). :func:`apply_methods` runs all (method, G) pairs of one question,
issuing the LM calls concurrently so the local engine batches them, and returns one :class:`MethodResult` per pair
with the compute that pair spent itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from cat_dspy.lm.usage import track_role
from cat_dspy.modules.base import thread_map
from cat_dspy.modules.mutual_predictability import MutualPredictability
from cat_dspy.modules.self_best_of_n import SelfBestOfN
from cat_dspy.scoring.equivalence import EQUIVALENCE_FALLBACKS, collect_equivalence
from cat_dspy.scoring.selection import (
    answer_span,
    mean_nll,
    parse_choice,
    select_majority,
    select_min_ppl,
    select_single,
    span_nll,
)
from cat_dspy.signatures import mp_prompt


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


@dataclass
class Context:
    """One question as every method sees it: the question, the max(G) rollouts, their answers and NLLs, and the
    modules the LM-calling methods use."""

    question: str
    rollouts: Sequence[str]
    answers: list[str | None]
    nlls: list[float | None]
    verifiable: bool = True
    equivalence: str = "symbolic"
    synthesize: Any = None
    synthesize_q: Any = None
    select_best: SelfBestOfN | None = None
    mutual: MutualPredictability | None = None

    def answer_of(self, i: int) -> str | None:
        """Rollout ``i``'s answer in verifiable mode, else None."""
        return self.answers[i] if self.verifiable else None


class Method:
    """A test-time method: ``run(context, g)`` looks at the first ``g`` rollouts and returns a result.

    Attributes:
        name: The registry key (``--methods`` name).
        role: The role whose LM the method calls (its calls run concurrently, their usage charged to it), or None
            for a method that needs no LM.
        verifiable_only: The method needs final answers (skipped for free-text responses).
    """

    name: ClassVar[str]
    role: ClassVar[str | None] = None
    verifiable_only: ClassVar[bool] = False

    def run(self, ctx: Context, g: int) -> MethodResult:
        raise NotImplementedError


class Single(Method):
    """``single``: the first rollout."""

    name = "single"

    def run(self, ctx: Context, g: int) -> MethodResult:
        i = select_single(ctx.rollouts[:g])
        return MethodResult(self.name, g, i, ctx.rollouts[i], ctx.answer_of(i))


class Majority(Method):
    """``majority``: the first rollout of the most common final answer."""

    name = "majority"
    verifiable_only = True  # the most common *final answer* has no meaning for free-text responses

    def run(self, ctx: Context, g: int) -> MethodResult:
        i, answer, size = select_majority(ctx.answers[:g], mode=ctx.equivalence)
        return MethodResult(self.name, g, i, ctx.rollouts[i], answer, None if size else "no_answer",
                            extra={"size": size})


class MinPpl(Method):
    """``min_ppl``: the rollout with the lowest mean token NLL."""

    name = "min_ppl"

    def run(self, ctx: Context, g: int) -> MethodResult:
        i, fallback = select_min_ppl(ctx.nlls[:g])
        return MethodResult(self.name, g, i, ctx.rollouts[i], ctx.answer_of(i), fallback, extra={"nll": ctx.nlls[i]})


class SelfBon(Method):
    """``self_bon``: the rollout the policy names as best."""

    name, role = "self_bon", "policy"

    def run(self, ctx: Context, g: int) -> MethodResult:
        if ctx.select_best is None:
            raise ValueError("self_bon needs a SelfBestOfN module")
        pred = ctx.select_best(question=ctx.question, rollouts=list(ctx.rollouts[:g]))
        return MethodResult(self.name, g, pred.index, ctx.rollouts[pred.index], ctx.answer_of(pred.index),
                            pred.fallback, extra={"choice": pred.raw, "error": pred.error})


class Mutual(Method):
    """``mp``: the rollout whose answer tokens the other G−1 predict best."""

    name, role = "mp", "policy"

    def run(self, ctx: Context, g: int) -> MethodResult:
        if ctx.mutual is None:
            raise ValueError("mp needs a MutualPredictability module")
        pred = ctx.mutual(question=ctx.question, rollouts=list(ctx.rollouts[:g]),
                          answers=ctx.answers[:g] if ctx.verifiable else None)
        extra = {"nll": pred.nlls, "whole_rollout": pred.whole_rollout, "error": pred.error}
        return MethodResult(self.name, g, pred.index, ctx.rollouts[pred.index], ctx.answer_of(pred.index),
                            pred.fallback, extra=extra)


class Synthesis(Method):
    """``cat`` (question-blind) / ``cat_q`` (question-aware): the anchor's synthesized reference."""

    role = "anchor"

    def __init__(self, name: str, question_aware: bool) -> None:
        self.name, self.question_aware = name, question_aware

    def run(self, ctx: Context, g: int) -> MethodResult:
        module = ctx.synthesize_q if self.question_aware else ctx.synthesize
        if module is None:
            raise ValueError(f"{self.name} needs a Synthesize module")
        pred = module(rollouts=list(ctx.rollouts[:g]), question=ctx.question if self.question_aware else None)
        fallback = "synthesis_failed" if pred.error else (None if pred.parsed else
                                                          "reference_without_answer" if ctx.verifiable else "empty")
        return MethodResult(self.name, g, None, pred.reference, pred.answer if ctx.verifiable else None, fallback,
                            extra={"error": pred.error})


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Single(), Majority(), SelfBon(), MinPpl(), Mutual(), Synthesis("cat", False), Synthesis("cat_q", True))}
"""Every test-time method by name, in the order reports list them."""
METHODS = tuple(REGISTRY)
VERIFIABLE_ONLY = tuple(name for name, m in REGISTRY.items() if m.verifiable_only)
ROLE_OF = {name: m.role for name, m in REGISTRY.items() if m.role}  # methods calling an LM: role


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
        methods: Method names (:data:`REGISTRY`); ``majority`` is skipped when not ``verifiable``.
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
    ctx = Context(question, rollouts, list(answers) if answers is not None else [None] * len(rollouts),
                  list(nlls) if nlls is not None else [None] * len(rollouts), verifiable, equivalence, synthesize,
                  synthesize_q, select_best, mutual)

    def remote(job: tuple[str, int]) -> MethodResult:
        method, g = REGISTRY[job[0]], job[1]
        usage: dict[str, dict[str, float]] = {}
        with track_role(usage, method.role):  # no engine counters: concurrent jobs share one engine
            result = method.run(ctx, g)
        for counts in usage.values():
            counts.pop("generate_calls", None)
        result.usage = usage
        return result

    chosen = [m for m in methods if verifiable or not REGISTRY[m].verifiable_only]
    jobs = [(m, g) for m in chosen for g in gs]
    remote_jobs = [job for job in jobs if REGISTRY[job[0]].role]
    done = dict(zip(remote_jobs, thread_map(remote, remote_jobs, num_threads), strict=True))
    for job in jobs:
        if job not in done:
            with collect_equivalence() as outcomes:
                done[job] = REGISTRY[job[0]].run(ctx, job[1])
            done[job].equivalence_fallbacks = {k: outcomes[k] for k in EQUIVALENCE_FALLBACKS if outcomes[k]}
    return [done[job] for job in jobs]


__all__ = ["METHODS", "REGISTRY", "ROLE_OF", "VERIFIABLE_ONLY", "Context", "Method", "MethodResult",
           "MutualPredictability", "SelfBestOfN", "answer_span", "apply_methods", "mean_nll", "mp_prompt",
           "parse_choice", "select_majority", "select_min_ppl", "select_single", "span_nll"]
