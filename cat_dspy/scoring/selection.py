"""Pure selectors of the test-time baselines: pick one rollout from scores that need no LM (paper §1.7–1.8).

``single`` (:func:`select_single`), ``majority`` (:func:`select_majority`), ``min_ppl`` (:func:`mean_nll`,
:func:`select_min_ppl`), the reading of a self-BoN answer (:func:`parse_choice`) and the answer span that mutual
predictability scores (:func:`answer_span`, :func:`span_nll`). No LM, no torch: the DSPy modules that make the calls
(:class:`~cat_dspy.modules.SelfBestOfN`, :class:`~cat_dspy.modules.MutualPredictability`) use these.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from cat_dspy.scoring.rewards import majority_answer

_CHOICE = re.compile(r"(?<![\d.])(\d{1,4})(?!\.?\d)")  # a whole number, not part of "2.5"


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
    return mean_nll([lp for a, b, lp, *_ in tokens if a < end and b > start and b > a and lp is not None])
