"""ProposeRubric: the frozen anchor turns the reference into binary rubric criteria."""

from __future__ import annotations

import dspy

from cat_dspy.modules.base import RoleModule
from cat_dspy.scoring.parsing import parse_criteria
from cat_dspy.signatures import ProposeCriteria


class ProposeRubric(RoleModule):
    """R ~ π_0(· | p_rub, s): at least ``min_criteria`` binary, checkable criteria describing the reference.

    The rubric is conditioned on the reference only (paper Eq. 7), never on the question or the rollouts.

    Args:
        min_criteria: The paper prompts for n ≥ 5; fewer parsed criteria are kept but flagged.
        max_criteria: Cap on criteria kept (the first ones), bounding judge cost.
        lm: The frozen anchor LM.

    Examples:
        >>> from dspy.utils import DummyLM
        >>> xml = "<rubric>" + "".join(f"<criterion>c{i}</criterion>" for i in range(5)) + "</rubric>"
        >>> pred = ProposeRubric(lm=DummyLM([{"rubric": xml}]))(reference="Rest, ice, elevate.")
        >>> pred.criteria[:2], pred.parsed
        (['c0', 'c1'], True)
    """

    def __init__(
        self,
        min_criteria: int = 5,
        max_criteria: int = 20,
        lm: dspy.BaseLM | None = None,
        adapter: dspy.Adapter | None = None,
    ):
        super().__init__(lm=lm, adapter=adapter)
        self.min_criteria = min_criteria
        self.max_criteria = max_criteria
        self.propose = dspy.Predict(ProposeCriteria)

    def forward(self, reference: str) -> dspy.Prediction:
        """Propose the rubric.

        Returns:
            A prediction with ``criteria`` (list[str]), ``parsed`` (a structured list with at least
            ``min_criteria`` items was found), ``raw`` (the anchor's text) and ``error``.
        """
        pred, error = self.call(self.propose, reference=reference)
        raw = (pred.rubric or "") if pred is not None else ""
        criteria, structured = parse_criteria(raw, max_criteria=self.max_criteria)
        parsed = structured and len(criteria) >= self.min_criteria
        return dspy.Prediction(criteria=criteria, parsed=parsed, raw=raw, error=error)
