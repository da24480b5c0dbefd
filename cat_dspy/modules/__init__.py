"""CaT's DSPy modules, one per file: Rollout, Synthesize, ProposeRubric, Judge, EquivalenceJudge (the
model-as-judge baseline), the test-time baselines SelfBestOfN and MutualPredictability, and the composite CaT."""

from cat_dspy.modules.cat import CaT
from cat_dspy.modules.equivalence_judge import EquivalenceJudge
from cat_dspy.modules.judge import Judge
from cat_dspy.modules.mutual_predictability import MutualPredictability
from cat_dspy.modules.propose_rubric import ProposeRubric
from cat_dspy.modules.rollout import Rollout
from cat_dspy.modules.self_best_of_n import SelfBestOfN
from cat_dspy.modules.synthesize import Synthesize

__all__ = ["CaT", "EquivalenceJudge", "Judge", "MutualPredictability", "ProposeRubric", "Rollout", "SelfBestOfN",
           "Synthesize"]
