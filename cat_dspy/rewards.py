"""Reward functions TRL resolves by name, like ``trl.rewards``: ``trl grpo --reward_funcs cat_dspy.rewards.cat_reward``.

``cat_reward`` is the CaT reward configured from ``CAT_*`` environment variables (:mod:`cat_dspy.rl.config`);
``CaTReward`` and ``build_reward`` build one from Python. The pure reward functions (R_ver, R_rub, the length
penalty, majority voting) are in :mod:`cat_dspy.scoring.rewards`. Nothing inside the package imports this module.
"""

from __future__ import annotations

from cat_dspy.rl.config import EnvCaTReward, build_reward, cat_reward
from cat_dspy.rl.reward import CaTReward

__all__ = ["CaTReward", "EnvCaTReward", "build_reward", "cat_reward"]
