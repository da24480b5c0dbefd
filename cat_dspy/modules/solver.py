"""Solver: the policy as one DSPy program: one response to one question (what ``--target policy`` optimizes)."""

from __future__ import annotations

from typing import Any

import dspy

from cat_dspy.modules.base import RoleModule
from cat_dspy.scoring.extraction import EXTRACTIONS, extract_answer
from cat_dspy.signatures import Solve

ROLLOUT_STATE = "rollout.generate"
"""Where a saved :class:`~cat_dspy.modules.CaT` program keeps the policy's prompt (its rollout predictor)."""


class Solver(RoleModule):
    """o ~ π(·|q): one response from the policy, with its final answer read.

    The predictor is named ``generate`` like :class:`~cat_dspy.modules.Rollout`'s, so an optimized Solver's prompt
    (instructions, demos) is the rollout prompt of a saved ``CaT`` program, and :meth:`load` reads either file: a
    Solver's own, or a ``CaT`` program's (its ``rollout.generate`` entry).

    Unlike ``Rollout``, a call sends no ``rollout_id`` or seed of its own: optimizers decide those through the LM they
    lend (``BootstrapFewShot`` rounds, ``SIMBA`` resampling copy it with a new ``rollout_id``).

    Args:
        signature: The policy's prompt (:class:`~cat_dspy.signatures.Solve`, or ``Respond`` for free text).
        extraction: How the final answer is read (``"strict"`` or ``"flexible"``).
        lm: The policy LM (None: ``dspy.settings.lm``, what optimizers lend).

    Examples:
        >>> from cat_dspy.testing import scripted_lm
        >>> pred = Solver(extraction="flexible", lm=scripted_lm(["7 + 5 = 12"]))(question="7 + 5?")
        >>> pred.response, pred.answer, pred.error
        ('7 + 5 = 12', '12', None)
    """

    def __init__(
        self,
        signature: type[dspy.Signature] = Solve,
        extraction: str = "strict",
        lm: dspy.BaseLM | None = None,
        adapter: dspy.Adapter | None = None,
    ):
        super().__init__(lm=lm, adapter=adapter)
        if extraction not in EXTRACTIONS:
            raise ValueError(f"Solver extraction must be one of {EXTRACTIONS}, got {extraction!r}")
        self.extraction = extraction
        self.generate = dspy.Predict(signature)

    def forward(self, question: str) -> dspy.Prediction:
        """Returns a prediction with ``response`` (empty when the call failed), ``answer`` (its final answer, or
        None) and ``error``."""
        pred, error = self.call(self.generate, question=question)
        name = next(iter(self.generate.signature.output_fields))
        response = (getattr(pred, name, None) or "") if pred is not None else ""
        return dspy.Prediction(response=response, answer=extract_answer(response, self.extraction), error=error)

    def load_state(self, state: dict[str, Any], **kwargs: Any) -> Solver:
        """DSPy's ``load_state``; a ``CaT`` program's state gives its rollout prompt."""
        if "generate" not in state and ROLLOUT_STATE in state:
            state = {"generate": state[ROLLOUT_STATE]}
        return super().load_state({k: v for k, v in state.items() if k == "generate"}, **kwargs)
