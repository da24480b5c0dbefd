"""Reward functions TRL resolves by name, like ``trl.rewards``: ``trl grpo --reward_funcs cat_dspy.rewards.cat_reward``.

``cat_reward`` is the CaT reward configured from ``$CAT_REWARD_CONFIG`` and ``CAT_*`` environment variables (the
options of :class:`cat_dspy.rl.config.CaTRewardConfig`); ``CaTReward`` and ``build_reward`` build one from Python.
The comparison arms (:mod:`cat_dspy.rl.baselines`) are configured the same way: ``majority_reward`` (TTRL's
majority vote), ``judge_reward`` (model-as-judge), ``physician_rubric_reward`` (HealthBench's rubrics) and
``gold_reward`` (the supervised upper bound); :data:`REWARD_FUNCS` maps the names a recipe's ``reward:`` field takes
to their classes, as open-r1's registry does.
The pure reward functions (R_ver, R_rub, the length penalty, majority voting) are in :mod:`cat_dspy.scoring.rewards`.
Nothing inside the package imports this module except the training entries.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Mapping
from typing import Any

from cat_dspy.lm.roles import role_lm
from cat_dspy.rl.baselines import GoldReward, JudgeReward, MajorityReward, PhysicianRubricReward
from cat_dspy.rl.config import (
    DEFAULTS,
    REWARD_OPTIONS,
    _model_default_anchor,
    normalize_reward_options,
    reward_options_from_env,
)
from cat_dspy.rl.group import GroupReward
from cat_dspy.rl.reward import CaTReward

__all__ = ["REWARD_FUNCS", "CaTReward", "EnvCaTReward", "GoldReward", "JudgeReward", "MajorityReward",
           "PhysicianRubricReward", "anchor_lm", "build_reward", "cat_reward", "dataset_columns", "gold_reward",
           "judge_reward", "majority_reward", "physician_rubric_reward"]

logger = logging.getLogger(__name__)

REWARD_FUNCS: dict[str, type[GroupReward]] = {
    "cat": CaTReward,
    "majority": MajorityReward,
    "judge": JudgeReward,
    "physician_rubric": PhysicianRubricReward,
    "gold": GoldReward,
}
"""The rewards a recipe selects by name (``reward: majority``); TRL logs each as ``rewards/<name>_reward/mean``."""


def reward_class(reward: str) -> type[GroupReward]:
    """The class of the reward named ``reward`` (a key of :data:`REWARD_FUNCS`, or that key plus ``_reward``)."""
    cls = REWARD_FUNCS.get(reward.removesuffix("_reward"))
    if cls is None:
        raise ValueError(f"unknown reward {reward!r}; choose one of {sorted(REWARD_FUNCS)}")
    return cls


def dataset_columns(reward: str) -> tuple[str, ...]:
    """The dataset columns the training set must carry for the reward named ``reward`` (labels, rubrics).

    Examples:
        >>> dataset_columns("cat"), dataset_columns("gold"), dataset_columns("physician_rubric")
        ((), ('answer',), ('rubrics',))
    """
    cls = reward_class(reward)
    return (("answer",) if cls.reads_labels else ()) + tuple(cls.train_columns)


def anchor_lm(options: Mapping[str, Any], role: str = "anchor", **settings: Any) -> Any:
    """The frozen anchor's LM from :data:`REWARD_OPTIONS`: ``anchor`` (an LM object is returned as is; a model
    string is built with the ``anchor_*`` options), by default the initial checkpoint ``model_name_or_path``.

    ``role="policy"`` with its own ``settings`` (temperature, max_tokens) gives an LM of the same model for the
    initial policy's rollouts (CaT-SFT), on the same engine or server.
    """
    opts = {**DEFAULTS, **{k: v for k, v in normalize_reward_options(options).items() if v is not None}}
    anchor = opts.get("anchor") or _model_default_anchor(opts.get("model_name_or_path"))
    if not isinstance(anchor, str):
        return anchor
    base = {"temperature": opts.get("anchor_temperature"), "top_p": opts.get("anchor_top_p"),
            "top_k": opts.get("anchor_top_k"), "max_tokens": opts.get("anchor_max_tokens")}
    if anchor.startswith("local"):
        base["device"] = opts.get("anchor_device")
    else:
        base["api_base"] = opts.get("anchor_api_base")
    return role_lm(anchor, role, **{**base, **settings}, **(opts.get("anchor_lm_kwargs") or {}))


def build_reward(options: Mapping[str, Any], reward: str = "cat", **overrides: Any) -> GroupReward:
    """The reward named ``reward`` (:data:`REWARD_FUNCS`) from :data:`REWARD_OPTIONS` (names or recipe aliases;
    ``overrides`` win); each reward takes the options its class accepts.

    ``anchor`` / ``judge`` are LM objects or model strings for :func:`cat_dspy.lm.models.make_lm`, built with their
    ``anchor_*`` / ``judge_*`` options, and only for the rewards that call them. The anchor defaults to the initial
    checkpoint ``model_name_or_path`` (the embedded model when unset): loaded once, in eval mode, apart from the
    model being trained. Where a judge is needed (CaT's rubric mode, ``judge``, ``physician_rubric``) it defaults
    to the anchor, with a warning.

    Examples:
        >>> from cat_dspy.testing import scripted_lm
        >>> build_reward({"anchor_model": scripted_lm(["x"]), "cat_mode": "rubric", "num_generations": 4})
        CaTReward(mode='rubric', num_generations=4, anchor='scripted/test', judge='scripted/test')
        >>> build_reward({"num_generations": 4, "extraction": "flexible"}, reward="majority")
        MajorityReward(num_generations=4, equivalence='symbolic', extraction='flexible')
    """
    cls = reward_class(reward)
    given = {**normalize_reward_options(options), **normalize_reward_options(overrides)}
    opts = {**DEFAULTS, **{name: value for name, value in given.items() if value is not None}}  # None: the default
    params = inspect.signature(cls).parameters
    mode = opts["mode"]
    needs_judge = "judge" in params and (cls is not CaTReward or mode == "rubric")
    if opts.get("program") and cls is not CaTReward:
        raise ValueError(f"cat_program sets the prompts of the CaT reward; the {reward!r} reward has none")
    if "anchor" not in params and not needs_judge:  # majority, gold: no LM at all
        kwargs = {name: opts[name] for name in params if name in REWARD_OPTIONS and opts.get(name) is not None}
        return cls(**kwargs)
    anchor = anchor_lm(opts)
    judge = opts.get("judge")
    if isinstance(judge, str):
        settings = {"temperature": opts.get("judge_temperature"), "max_tokens": opts.get("judge_max_tokens")}
        if not judge.startswith("local"):
            settings["api_base"] = opts.get("judge_api_base")
        judge = role_lm(judge, "judge", **settings, **(opts.get("judge_lm_kwargs") or {}))
    if needs_judge and judge is None:
        logger.warning("%s reward: no judge configured; the anchor judges (the paper uses GPT-4o)", reward)
        judge = anchor
    kwargs = {name: opts[name] for name in params
              if name in REWARD_OPTIONS and name not in ("anchor", "judge") and opts.get(name) is not None}
    lms = {"anchor": anchor} if "anchor" in params else {}
    if "judge" in params:
        lms["judge"] = judge
    built = cls(**lms, **kwargs)
    if opts.get("program"):  # optimized synthesis / rubric / judge prompts (cat-dspy optimize --out)
        from cat_dspy.optimization.program_file import load_program

        load_program(built.cat, opts["program"])
    return built


class EnvCaTReward:
    r"""A :class:`CaTReward` (or the comparison reward named ``reward``) built on first use from
    ``$CAT_REWARD_CONFIG`` and ``CAT_*`` variables.

    This is :data:`cat_reward` (and :data:`majority_reward`, :data:`judge_reward`, :data:`physician_rubric_reward`,
    :data:`gold_reward`), so TRL's own CLI can use CaT by dotted path::

        CAT_ANCHOR=local CAT_NUM_GENERATIONS=4 trl grpo --reward_funcs cat_dspy.rewards.cat_reward \
            --num_generations 4 ...

    ``configure(**options)`` sets it up explicitly instead (LM objects accepted); ``reset()`` forgets it.

    Examples:
        >>> from cat_dspy.rewards import cat_reward
        >>> from cat_dspy.testing import scripted_lm
        >>> _ = cat_reward.configure(anchor=scripted_lm(["$\\boxed{7}$"]), num_generations=2)
        >>> cat_reward(prompts=[[{"role": "user", "content": "3+4?"}]] * 2,
        ...            completions=[[{"role": "assistant", "content": "\\boxed{7}"}],
        ...                         [{"role": "assistant", "content": "\\boxed{8}"}]])
        [1.0, 0.0]
        >>> cat_reward.__name__
        'cat_reward'
        >>> cat_reward.reset()
    """

    def __init__(self, name: str = "cat_reward", reward: str = "cat"):
        self.__name__ = name
        self.kind = reward
        self._reward: GroupReward | None = None
        self._lock = threading.Lock()

    def configure(self, reward: GroupReward | None = None, **options: Any) -> GroupReward:
        """Use ``reward``, or build one with :func:`build_reward` from ``options`` (LM objects allowed)."""
        reward = reward if reward is not None else build_reward(options, reward=self.kind)
        reward.__name__ = self.__name__
        with self._lock:
            self._reward = reward
        return reward

    def reset(self) -> None:
        """Forget the reward; the next call configures it again from the environment."""
        with self._lock:
            self._reward = None

    @property
    def reward(self) -> GroupReward:
        """The configured reward (built from the environment on first access)."""
        with self._lock:
            if self._reward is None:
                options = reward_options_from_env()
                logger.info("%s configured from the environment: %s", self.__name__, options)
                self._reward = build_reward(options, reward=self.kind)
                self._reward.__name__ = self.__name__
            return self._reward

    def bind(self, trainer_or_model: Any) -> GroupReward:
        return self.reward.bind(trainer_or_model)

    def callback(self) -> Any:
        return self.reward.callback()

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        return self.reward(*args, **kwargs)

    def __repr__(self) -> str:
        return f"EnvCaTReward({self._reward!r})" if self._reward is not None else "EnvCaTReward(<unconfigured>)"


cat_reward = EnvCaTReward()
"""The CaT reward configured from the environment, for ``trl grpo --reward_funcs cat_dspy.rewards.cat_reward``."""


majority_reward = EnvCaTReward("majority_reward", reward="majority")
"""TTRL's majority-vote reward (:class:`MajorityReward`), configured from the environment like ``cat_reward``."""

judge_reward = EnvCaTReward("judge_reward", reward="judge")
"""The model-as-judge reward (:class:`JudgeReward`), configured from the environment like ``cat_reward``."""

physician_rubric_reward = EnvCaTReward("physician_rubric_reward", reward="physician_rubric")
"""HealthBench's physician-rubric reward (:class:`PhysicianRubricReward`), configured from the environment."""

gold_reward = EnvCaTReward("gold_reward", reward="gold")
"""The supervised upper bound (:class:`GoldReward`), configured from the environment like ``cat_reward``."""
