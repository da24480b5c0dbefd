"""Reward functions TRL resolves by name, like ``trl.rewards``: ``trl grpo --reward_funcs cat_dspy.rewards.cat_reward``.

``cat_reward`` is the CaT reward configured from ``$CAT_REWARD_CONFIG`` and ``CAT_*`` environment variables (the
options of :class:`cat_dspy.rl.config.CaTRewardConfig`); ``CaTReward`` and ``build_reward`` build one from Python.
The pure reward functions (R_ver, R_rub, the length penalty, majority voting) are in :mod:`cat_dspy.scoring.rewards`.
Nothing inside the package imports this module except the training entry.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Mapping
from typing import Any

from cat_dspy.lm.roles import role_lm
from cat_dspy.rl.config import (
    DEFAULTS,
    REWARD_OPTIONS,
    _model_default_anchor,
    normalize_reward_options,
    reward_options_from_env,
)
from cat_dspy.rl.reward import CaTReward

__all__ = ["CaTReward", "EnvCaTReward", "build_reward", "cat_reward"]

logger = logging.getLogger(__name__)


def build_reward(options: Mapping[str, Any], **overrides: Any) -> CaTReward:
    """A :class:`CaTReward` from :data:`REWARD_OPTIONS` (names or recipe aliases; ``overrides`` win).

    ``anchor`` / ``judge`` are LM objects or model strings for :func:`cat_dspy.lm.models.make_lm`, built with their
    ``anchor_*`` / ``judge_*`` options. The anchor defaults to the initial checkpoint ``model_name_or_path`` (the
    embedded model when unset): loaded once, in eval mode, apart from the model being trained. In rubric mode the
    judge defaults to the anchor.

    Examples:
        >>> from cat_dspy.testing import scripted_lm
        >>> build_reward({"anchor_model": scripted_lm(["x"]), "cat_mode": "rubric", "num_generations": 4})
        CaTReward(mode='rubric', num_generations=4, anchor='scripted/test', judge='scripted/test')
    """
    given = {**normalize_reward_options(options), **normalize_reward_options(overrides)}
    opts = {**DEFAULTS, **{name: value for name, value in given.items() if value is not None}}  # None: the default
    anchor = opts.get("anchor") or _model_default_anchor(opts.get("model_name_or_path"))
    if isinstance(anchor, str):
        settings = {"temperature": opts.get("anchor_temperature"), "top_p": opts.get("anchor_top_p"),
                    "top_k": opts.get("anchor_top_k"), "max_tokens": opts.get("anchor_max_tokens")}
        if anchor.startswith("local"):
            settings["device"] = opts.get("anchor_device")
        else:
            settings["api_base"] = opts.get("anchor_api_base")
        anchor = role_lm(anchor, "anchor", **settings, **(opts.get("anchor_lm_kwargs") or {}))
    judge = opts.get("judge")
    if isinstance(judge, str):
        settings = {"temperature": opts.get("judge_temperature"), "max_tokens": opts.get("judge_max_tokens")}
        if not judge.startswith("local"):
            settings["api_base"] = opts.get("judge_api_base")
        judge = role_lm(judge, "judge", **settings, **(opts.get("judge_lm_kwargs") or {}))
    mode = opts["mode"]
    if mode == "rubric" and judge is None:
        logger.warning("CaT reward: no judge configured; the anchor judges the rubric (the paper uses GPT-4o)")
        judge = anchor
    kwargs = {name: opts[name] for name in _REWARD_KWARGS if opts.get(name) is not None}
    reward = CaTReward(anchor, judge=judge, mode=mode, **kwargs)
    if opts.get("program"):  # optimized synthesis / rubric / judge prompts (cat-dspy optimize --out)
        from cat_dspy.optimization.program_file import load_program

        load_program(reward.cat, opts["program"])
    return reward


# CaTReward's keyword options (anchor, judge and mode are passed apart), read from its signature.
_REWARD_KWARGS = tuple(name for name in inspect.signature(CaTReward).parameters
                       if name in REWARD_OPTIONS and name not in ("anchor", "judge", "mode"))


class EnvCaTReward:
    r"""A :class:`CaTReward` built on first use from ``$CAT_REWARD_CONFIG`` and ``CAT_*`` variables.

    This is :data:`cat_reward`, so TRL's own CLI can use CaT by dotted path::

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

    def __init__(self, name: str = "cat_reward"):
        self.__name__ = name
        self._reward: CaTReward | None = None
        self._lock = threading.Lock()

    def configure(self, reward: CaTReward | None = None, **options: Any) -> CaTReward:
        """Use ``reward``, or build one with :func:`build_reward` from ``options`` (LM objects allowed)."""
        reward = reward if reward is not None else build_reward(options)
        reward.__name__ = self.__name__
        with self._lock:
            self._reward = reward
        return reward

    def reset(self) -> None:
        """Forget the reward; the next call configures it again from the environment."""
        with self._lock:
            self._reward = None

    @property
    def reward(self) -> CaTReward:
        """The configured reward (built from the environment on first access)."""
        with self._lock:
            if self._reward is None:
                options = reward_options_from_env()
                logger.info("CaT reward configured from the environment: %s", options)
                self._reward = build_reward(options)
                self._reward.__name__ = self.__name__
            return self._reward

    def bind(self, trainer_or_model: Any) -> CaTReward:
        return self.reward.bind(trainer_or_model)

    def callback(self) -> Any:
        return self.reward.callback()

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        return self.reward(*args, **kwargs)

    def __repr__(self) -> str:
        return f"EnvCaTReward({self._reward!r})" if self._reward is not None else "EnvCaTReward(<unconfigured>)"


cat_reward = EnvCaTReward()
"""The CaT reward configured from the environment, for ``trl grpo --reward_funcs cat_dspy.rewards.cat_reward``."""

