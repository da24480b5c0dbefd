"""cat-dspy: Compute as Teacher (CaT, arXiv 2509.14234) as composable DSPy programs.

The current policy samples G rollouts; a frozen anchor synthesizes one reference from them (question-blind);
each rollout is rewarded by agreement with the reference's answer (verifiable tasks) or by the fraction of
self-proposed rubric criteria an independent judge marks satisfied (non-verifiable tasks). At test time the
reference is the answer; in CaT-RL the reward drives GRPO (:mod:`cat_dspy.rewards`, :mod:`cat_dspy.rl.train`).

Public names are imported lazily, so ``import cat_dspy`` (and ``cat-dspy --help``) does not import torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # the one process-wide setting: no download at import

_EXPORTS = {
    "CaT": "cat_dspy.modules",
    "Rollout": "cat_dspy.modules",
    "Synthesize": "cat_dspy.modules",
    "ProposeRubric": "cat_dspy.modules",
    "Judge": "cat_dspy.modules",
    "FreeTextAdapter": "cat_dspy.adapters",
    "make_lm": "cat_dspy.lm.models",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cat_dspy' has no attribute {name!r}")
