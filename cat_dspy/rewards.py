r"""Reward functions TRL resolves by name, like ``trl.rewards``: ``--reward_funcs cat_dspy.rewards.cat_reward``.

A facade of names: ``cat_reward`` is the CaT reward configured from ``$CAT_REWARD_CONFIG`` and ``CAT_*`` environment
variables (the options of :class:`cat_dspy.config.CaTRewardConfig`); ``CaTReward`` and ``build_reward`` build one
from Python. The comparison arms are configured the same way: ``majority_reward`` (TTRL's majority vote),
``judge_reward`` (model-as-judge), ``physician_rubric_reward`` (HealthBench's rubrics), ``random_reward`` (the
random-reward control), ``min_ppl_reward`` (the min-perplexity pseudo-label) and ``gold_reward`` (the supervised
upper bound); :data:`REWARD_FUNCS` maps the names a recipe's ``reward:`` field takes to their classes, as open-r1's
registry does. They are defined in :mod:`cat_dspy.rl`
(:mod:`~cat_dspy.rl.reward`, :mod:`~cat_dspy.rl.baselines`, :mod:`~cat_dspy.rl.registry`); the pure reward
functions (R_ver, R_rub, the length penalty, majority voting) in :mod:`cat_dspy.scoring.rewards`.

Examples:
    >>> from cat_dspy.rewards import CaTReward
    >>> from cat_dspy.testing import scripted_lm
    >>> reward = CaTReward(scripted_lm(["# UNIFIED RESPONSE $\\boxed{4}$"]), g=2)
    >>> reward(prompts=["2+2?", "2+2?"], completions=["\\boxed{4}", "\\boxed{5}"])
    [1.0, 0.0]
"""

from __future__ import annotations

from cat_dspy.rl.baselines import (
    GoldReward,
    JudgeReward,
    MajorityReward,
    MinPPLReward,
    PhysicianRubricReward,
    RandomReward,
)
from cat_dspy.rl.registry import (
    REWARD_FUNCS,
    EnvCaTReward,
    anchor_lm,
    build_reward,
    cat_reward,
    dataset_columns,
    gold_reward,
    judge_reward,
    majority_reward,
    min_ppl_reward,
    physician_rubric_reward,
    random_reward,
)
from cat_dspy.rl.reward import CaTReward

__all__ = ["REWARD_FUNCS", "CaTReward", "EnvCaTReward", "GoldReward", "JudgeReward", "MajorityReward",
           "MinPPLReward", "PhysicianRubricReward", "RandomReward", "anchor_lm", "build_reward", "cat_reward",
           "dataset_columns", "gold_reward", "judge_reward", "majority_reward", "min_ppl_reward",
           "physician_rubric_reward", "random_reward"]
