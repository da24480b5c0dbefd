"""Synthesize: the frozen anchor reconciles the G rollouts into one reference."""

from __future__ import annotations

import dspy

from cat_dspy.modules.base import RoleModule
from cat_dspy.scoring.extraction import EXTRACTIONS, extract_answer
from cat_dspy.signatures import SynthesizeFreeform, SynthesizeReasoning, with_question


class Synthesize(RoleModule):
    """s ~ π_0(· | p_syn, o_1:G): one reference from the rollouts.

    The anchor is **question-blind** by default, as in the paper (Eq. 5): it sees only the rollouts, so it
    cannot simply answer the question again. ``question_aware=True`` is the paper's ablation.

    Args:
        mode: ``"reasoning"`` (math: SUMMARY + UNIFIED RESPONSE ending in a boxed answer) or ``"freeform"``.
        question_aware: Show the anchor the question too.
        extraction: How the reference's final answer is read: ``"strict"`` or ``"flexible"`` (last number
            fallback; :func:`cat_dspy.scoring.extraction.extract_answer`).
        lm: The frozen anchor LM.

    Examples:
        >>> from dspy.utils import DummyLM
        >>> lm = DummyLM([{"reference": "# SUMMARY ok # UNIFIED RESPONSE Therefore, ... $\\\\boxed{4}$."}])
        >>> pred = Synthesize(lm=lm)(rollouts=["2+2=4 \\\\boxed{4}", "\\\\boxed{5}"])
        >>> pred.answer, pred.parsed
        ('4', True)
    """

    def __init__(
        self,
        mode: str = "reasoning",
        question_aware: bool = False,
        extraction: str = "strict",
        lm: dspy.BaseLM | None = None,
        adapter: dspy.Adapter | None = None,
    ):
        super().__init__(lm=lm, adapter=adapter)
        if mode not in ("reasoning", "freeform"):
            raise ValueError(f"Synthesize mode must be 'reasoning' or 'freeform', got {mode!r}")
        if extraction not in EXTRACTIONS:
            raise ValueError(f"Synthesize extraction must be one of {EXTRACTIONS}, got {extraction!r}")
        self.mode = mode
        self.extraction = extraction
        self.question_aware = question_aware
        signature = SynthesizeReasoning if mode == "reasoning" else SynthesizeFreeform
        self.synthesize = dspy.Predict(with_question(signature) if question_aware else signature)

    def forward(self, rollouts: list[str], question: str | None = None) -> dspy.Prediction:
        """Synthesize the reference.

        Returns:
            A prediction with ``reference`` (str, empty on failure), ``answer`` (its final answer in reasoning
            mode, else None), ``parsed`` (reasoning: an answer was extracted; freeform: the reference is
            non-empty) and ``error``.
        """
        inputs: dict = {"rollouts": list(rollouts)}
        if self.question_aware:
            if question is None:
                raise ValueError("question_aware synthesis needs the question")
            inputs["question"] = question
        pred, error = self.call(self.synthesize, **inputs)
        reference = (pred.reference or "") if pred is not None else ""
        answer = extract_answer(reference, self.extraction) if self.mode == "reasoning" else None
        parsed = answer is not None if self.mode == "reasoning" else bool(reference.strip())
        return dspy.Prediction(reference=reference, answer=answer, parsed=parsed, error=error)
