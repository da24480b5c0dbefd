"""CaT rewards (paper §1.4–1.5): pure, doctested reward functions on extracted answers and verdicts.

No LM and no torch here. The TRL reward built on them lives in :mod:`cat_dspy.rl.reward`; the names TRL resolves
(``--reward_funcs cat_dspy.rewards.cat_reward``) are in :mod:`cat_dspy.rewards`.
"""

from __future__ import annotations

import logging
import threading

from cat_dspy.scoring.equivalence import equivalent, normalize_answer

logger = logging.getLogger(__name__)

# --- pure rewards ---


def verifiable_reward(rollout_answer: str | None, reference_answer: str | None, *, mode: str = "symbolic") -> float:
    """R_ver = 1[answer(o) = answer(s)] (paper §1.5), on already extracted answers.

    Args:
        rollout_answer: The rollout's final answer (None when none could be extracted).
        reference_answer: The synthesized reference's final answer (None when it had none; the caller counts that).
        mode: Equivalence mode, "symbolic" (default) or "string" (the paper's string match, normalized).

    Returns:
        1.0 when the answers are equivalent, else 0.0 (also when either answer is missing).

    Examples:
        >>> verifiable_reward("72.0", "72"), verifiable_reward(r"\\frac{1}{2}", "0.5"), verifiable_reward("3", None)
        (1.0, 1.0, 0.0)
        >>> verifiable_reward(r"\\frac{1}{2}", "0.5", mode="string")
        0.0
    """
    if reference_answer is None or rollout_answer is None:
        return 0.0
    return 1.0 if equivalent(reference_answer, rollout_answer, mode=mode) else 0.0


def rubric_reward(verdicts: list[bool]) -> float:
    """R_rub = fraction of criteria judged satisfied (paper §1.4, unweighted).

    Args:
        verdicts: One boolean per criterion (unreadable verdicts should already count as False).

    Returns:
        The fraction of True verdicts, 0.0 for an empty list.

    Examples:
        >>> rubric_reward([True, True, True, True, False]), rubric_reward([])
        (0.8, 0.0)
    """
    if not verdicts:
        return 0.0
    return sum(1 for v in verdicts if v is True) / len(verdicts)


def length_penalty(reward: float, n_tokens: int, max_tokens: int | None) -> float:
    """The paper's anti-hacking penalty: reward −1 for responses longer than ``max_tokens`` (750 for HealthBench).

    Args:
        reward: The reward before the penalty.
        n_tokens: Length of the response in tokens.
        max_tokens: Token budget; None disables the penalty.

    Returns:
        -1.0 when ``n_tokens > max_tokens``, else ``reward`` unchanged.

    Examples:
        >>> length_penalty(0.8, 751, 750), length_penalty(0.8, 750, 750), length_penalty(0.8, 10**6, None)
        (-1.0, 0.8, 0.8)
    """
    if max_tokens is not None and n_tokens > max_tokens:
        return -1.0
    return reward


_word_lengths_lock = threading.Lock()
_word_lengths_warned = False


def word_lengths(texts: list[str], why: str) -> list[int]:
    """The lengths of ``texts`` in whitespace words: the length penalty's unit when no token count is known.

    Warns once per process (not once per module or reward: CaT at test time and every training reward share it)
    that the lengths are words, not tokens, and why (``why``: e.g. "no tokenizer is known for the policy X").

    Examples:
        >>> word_lengths(["three words here", ""], "a doctest")
        [3, 0]
    """
    global _word_lengths_warned
    with _word_lengths_lock:
        warn, _word_lengths_warned = not _word_lengths_warned, True
    if warn:
        logger.warning("length limit: %s; lengths are counted in whitespace words, not tokens (said once per "
                       "process)", why)
    return [len(text.split()) for text in texts]


def majority_answer(answers: list[str | None], *, mode: str = "symbolic") -> tuple[str | None, int, list[int]]:
    """Most common final answer (the "Majority" baseline, paper §1.8), clustering answers by equivalence.

    Each answer joins the first earlier cluster whose first member it is equivalent to; None (and empty) answers
    never cluster. Ties go to the cluster whose first member appears earliest.

    Args:
        answers: Extracted final answers, one per rollout (None where none was found).
        mode: Equivalence mode, "symbolic" or "string".

    Returns:
        ``(representative, size, member_indices)``: the first member's answer of the largest cluster, its size and
        its members' indices; ``(None, 0, [])`` when no answer is present.

    Examples:
        >>> majority_answer(["2", None, r"\\sqrt{4}", "3", "2.0"])
        ('2', 3, [0, 2, 4])
        >>> majority_answer(["5", "7", "7", "5"]), majority_answer([None, None])
        (('5', 2, [0, 3]), (None, 0, []))
    """
    clusters: list[list[int]] = []
    memo: dict[tuple[str, str], bool] = {}
    for i, ans in enumerate(answers):
        if ans is None or not normalize_answer(ans):
            continue
        for cluster in clusters:
            rep = answers[cluster[0]]
            assert rep is not None
            key = (normalize_answer(rep), normalize_answer(ans))
            if key not in memo:
                memo[key] = equivalent(rep, ans, mode=mode)
            if memo[key]:
                cluster.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return None, 0, []
    best = max(clusters, key=len)  # max keeps the first (earliest-founded) cluster on ties
    return answers[best[0]], len(best), best

