"""SelfBestOfN: the policy reads its own G rollouts and names the best one (the ``self_bon`` baseline)."""

from __future__ import annotations

import dspy

from cat_dspy.modules.base import RoleModule
from cat_dspy.scoring.selection import parse_choice
from cat_dspy.signatures import SelectBest


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
