"""MutualPredictability: the rollout the other G−1 predict best (the ``mp`` baseline, Wen et al. 2025)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import dspy

from cat_dspy.lm.prompt_logprobs import PromptLogprobsUnavailable, prompt_logprobs
from cat_dspy.modules.base import RoleModule, is_backend_failure
from cat_dspy.scoring.selection import answer_span, select_min_ppl, span_nll
from cat_dspy.signatures import mp_prompt
from cat_dspy.tracking import redact


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
