"""CaT's DSPy modules, one per file: Rollout, Synthesize, ProposeRubric, Judge, and the composite CaT."""

from cat_dspy.modules.cat import CaT
from cat_dspy.modules.judge import Judge
from cat_dspy.modules.rollout import Rollout
from cat_dspy.modules.rubric import ProposeRubric
from cat_dspy.modules.synthesize import Synthesize

__all__ = ["CaT", "Judge", "ProposeRubric", "Rollout", "Synthesize"]
