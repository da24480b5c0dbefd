"""cat-dspy: Compute as Teacher (CaT, arXiv 2509.14234) as composable DSPy programs.

The current policy samples G rollouts; a frozen anchor synthesizes one reference from them (question-blind);
each rollout is rewarded by agreement with the reference's answer (verifiable tasks) or by the fraction of
self-proposed rubric criteria an independent judge marks satisfied (non-verifiable tasks). At test time the
reference is the answer; in CaT-RL the reward drives GRPO (:mod:`cat_dspy.rewards`, :mod:`cat_dspy.rl.train`).

Public names are imported lazily, on first use, so ``import cat_dspy`` (and ``cat-dspy --help``) does not import
torch, TRL or MLflow; ``dir(cat_dspy)`` and editors (through the ``TYPE_CHECKING`` imports below) see them all.

Examples:
    >>> import cat_dspy
    >>> {"CaT", "CaTReward", "evaluate", "load_dataset", "make_lm"} <= set(dir(cat_dspy))
    True
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # the one process-wide setting: no download at import

_EXPORTS = {
    # modules: the CaT program and its parts
    "CaT": "cat_dspy.modules",
    "Rollout": "cat_dspy.modules",
    "Synthesize": "cat_dspy.modules",
    "ProposeRubric": "cat_dspy.modules",
    "Judge": "cat_dspy.modules",
    "FreeTextAdapter": "cat_dspy.adapters",
    # models
    "make_lm": "cat_dspy.lm.models",
    # CaT's reward for TRL's GRPOTrainer
    "CaTReward": "cat_dspy.rewards",
    "CaTRewardConfig": "cat_dspy.config",
    # test-time evaluation and data
    "evaluate": "cat_dspy.evaluation.evaluate",
    "load_dataset": "cat_dspy.datasets",
}
__all__ = [
    "CaT",
    "CaTReward",
    "CaTRewardConfig",
    "FreeTextAdapter",
    "Judge",
    "ProposeRubric",
    "Rollout",
    "Synthesize",
    "evaluate",
    "load_dataset",
    "make_lm",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from cat_dspy.adapters import FreeTextAdapter
    from cat_dspy.config import CaTRewardConfig
    from cat_dspy.datasets import load_dataset
    from cat_dspy.evaluation.evaluate import evaluate
    from cat_dspy.lm.models import make_lm
    from cat_dspy.modules import CaT, Judge, ProposeRubric, Rollout, Synthesize
    from cat_dspy.rewards import CaTReward


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'cat_dspy' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (imported or not yet) and the module's dunders; not the helpers this file imports."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
