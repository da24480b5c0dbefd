"""RubricGrader: the judge grades a response against physician rubric items (HealthBench), one call per item."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dspy

from cat_dspy.modules.base import RoleModule
from cat_dspy.scoring.healthbench import healthbench_score, rubric_item_text
from cat_dspy.scoring.parsing import parse_verdict
from cat_dspy.signatures import GradeRubricItem


class RubricGrader(RoleModule):
    """Grade a response against physician rubric items with the judge LM, one call per item.

    An unreadable verdict counts as *not met* (for a negative item: the penalty is not applied) and is counted.
    A failed judge call (after DSPy's retries) leaves the example *ungraded*: its score is None (the benchmark mean
    skips it) and the errors are returned, so a judge that is down never reads as a score of 0.
    An empty response is graded without any call: it meets no item.

    Args:
        lm: The judge LM.
        num_threads: Concurrent judge calls per response (default: all items at once).

    Examples:
        >>> from dspy.utils import DummyLM
        >>> grader = RubricGrader(lm=DummyLM([{"verdict": "yes"}, {"verdict": "no"}]), num_threads=1)
        >>> pred = grader(conversation="hi", response="Rest.", rubrics=[{"criterion": "a", "points": 2},
        ...                                                             {"criterion": "b", "points": 2}])
        >>> pred.met, pred.score
        ([True, False], 0.5)
    """

    def __init__(self, lm: dspy.BaseLM | None = None, num_threads: int | None = None,
                 adapter: dspy.Adapter | None = None):
        super().__init__(lm=lm, adapter=adapter)
        self.num_threads = num_threads
        self.grade = dspy.Predict(GradeRubricItem)

    def forward(self, conversation: str, response: str, rubrics: Sequence[dict[str, Any]]) -> dspy.Prediction:
        """Grade ``response``.

        Returns:
            A prediction with ``met`` (one bool per rubric item), ``score`` (:func:`healthbench_score`; None when
            a judge call failed), ``unread`` (verdicts that could not be read), ``raw`` (the judge's answers) and
            ``errors`` (one per failed judge call).
        """
        if not response.strip():
            met = [False] * len(rubrics)
            return dspy.Prediction(met=met, score=healthbench_score(rubrics, met), unread=0, raw=[], errors=[])

        def judge(item: dict[str, Any]) -> tuple[str, str | None]:
            pred, error = self.call(self.grade, conversation=conversation, response=response,
                                    criterion=rubric_item_text(item))
            return ((pred.verdict or "") if pred is not None else ""), error

        results = self.map(judge, list(rubrics), num_threads=self.num_threads)
        read = [parse_verdict(raw) for raw, _ in results]
        met = [bool(v) for v in read]
        errors = [e for _, e in results if e]
        score = None if errors else healthbench_score(rubrics, met)
        return dspy.Prediction(met=met, score=score, unread=sum(v is None for v, (_, e) in zip(read, results,
                                                                                          strict=True) if not e),
                               raw=[raw for raw, _ in results], errors=errors)
