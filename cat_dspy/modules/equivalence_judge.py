"""EquivalenceJudge: the paper's model-as-judge baseline, π_J decides whether a response is semantically equivalent
to the anchor's reference (a binary verdict, cat-paper.md §1.4)."""

from __future__ import annotations

import dspy

from cat_dspy.modules.base import RoleModule
from cat_dspy.modules.judge import own_answer
from cat_dspy.scoring.parsing import parse_verdict
from cat_dspy.signatures import JudgeEquivalent


class EquivalenceJudge(RoleModule):
    """π_J(reference, response) ∈ {yes, no}: is the response semantically equivalent to the reference?

    The verdict is read leniently (:func:`cat_dspy.scoring.parsing.parse_verdict`) from the judge's own answer
    (verbatim echoes of the response and the reference are cut out first, :func:`~cat_dspy.modules.judge.own_answer`).
    An empty response is not equivalent, without a call.

    Args:
        lm: The judge LM.

    Examples:
        >>> from dspy.utils import DummyLM
        >>> pred = EquivalenceJudge(lm=DummyLM([{"verdict": "Yes."}]))(reference="Rest it.", response="Rest.")
        >>> pred.equivalent, pred.error
        (True, None)
    """

    def __init__(self, lm: dspy.BaseLM | None = None, adapter: dspy.Adapter | None = None):
        super().__init__(lm=lm, adapter=adapter)
        self.judge = dspy.Predict(JudgeEquivalent)

    def forward(self, reference: str, response: str) -> dspy.Prediction:
        """Judge ``response`` against ``reference``.

        Returns:
            A prediction with ``equivalent`` (True, False, or None when the verdict could not be read), ``raw``
            (the judge's answer) and ``error`` (the failed call's reason, else None).
        """
        if not response.strip():
            return dspy.Prediction(equivalent=False, raw="", error=None)
        pred, error = self.call(self.judge, reference=reference, response=response)
        raw = (pred.verdict or "") if pred is not None else ""
        verdict = None if error else parse_verdict(own_answer(own_answer(raw, response), reference))
        return dspy.Prediction(equivalent=verdict, raw=raw, error=error)
