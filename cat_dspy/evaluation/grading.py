"""Grading against gold, the only place where labels are used.

Verifiable sets (GSM8K, MATH, AIME): a method's final answer is right when it is equivalent to the gold answer
(:func:`~cat_dspy.scoring.equivalence.equivalent`, symbolic by default).
HealthBench: the method's response is graded against the
physician rubric with the simple-evals formula (``openai/simple-evals``, ``healthbench_eval.py``): the judge LM
marks each rubric item met or not, one call per item; the example score is the points of the met items divided by
the total positive points (negative-point items subtract, so an example can score below 0); the benchmark score is
the mean of the example scores clipped to [0, 1] (:mod:`cat_dspy.scoring.healthbench`); the judge is
:class:`~cat_dspy.modules.rubric_grader.RubricGrader`.
"""

from __future__ import annotations

from cat_dspy.modules.rubric_grader import RubricGrader
from cat_dspy.scoring.equivalence import equivalent
from cat_dspy.scoring.healthbench import clipped_mean, healthbench_score, rubric_item_text


def grade_answer(answer: str | None, gold: str, *, mode: str = "symbolic") -> bool:
    """Whether ``answer`` is equivalent to ``gold`` (gold is the reference side of the check).

    Examples:
        >>> grade_answer("1,015", "1015"), grade_answer(r"\\frac{1}{2}", "0.5"), grade_answer(None, "3")
        (True, True, False)
    """
    return equivalent(gold, answer, mode=mode)


__all__ = ["RubricGrader", "clipped_mean", "grade_answer", "healthbench_score", "rubric_item_text"]
