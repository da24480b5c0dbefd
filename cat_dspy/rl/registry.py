"""The rewards by name (:data:`REWARD_FUNCS`), built from options (:func:`build_reward`) or from the environment
(:class:`EnvCaTReward`, the objects TRL resolves by dotted path through :mod:`cat_dspy.rewards`).

Every reward reads the options of :class:`cat_dspy.config.CaTRewardConfig` that its class accepts; the frozen
anchor and the judge are built by :func:`cat_dspy.lm.roles.role_lm` from their ``anchor_*`` / ``judge_*`` options.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Mapping
from typing import Any

from cat_dspy.config import DEFAULTS, REWARD_OPTIONS, default_anchor, normalize_reward_options, reward_options_from_env
from cat_dspy.lm.roles import role_lm
from cat_dspy.rl.baselines import (
    GoldReward,
    JudgeReward,
    MajorityReward,
    MinPPLReward,
    PhysicianRubricReward,
    RandomReward,
)
from cat_dspy.rl.group import GroupReward
from cat_dspy.rl.reward import CaTReward

logger = logging.getLogger(__name__)

REWARD_FUNCS: dict[str, type[GroupReward]] = {
    "cat": CaTReward,
    "majority": MajorityReward,
    "judge": JudgeReward,
    "physician_rubric": PhysicianRubricReward,
    "gold": GoldReward,
    "random": RandomReward,
    "min_ppl": MinPPLReward,
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
    """The frozen anchor's LM from :data:`~cat_dspy.config.REWARD_OPTIONS`: ``anchor`` (an LM object is returned as
    is; a model string is built with the ``anchor_*`` options), by default the initial checkpoint
    ``model_name_or_path``.

    ``role="policy"`` with its own ``settings`` (temperature, max_tokens) gives an LM of the same model for the
    initial policy's rollouts (CaT-SFT), on the same engine or server.
    """
    opts = {**DEFAULTS, **{k: v for k, v in normalize_reward_options(options).items() if v is not None}}
    anchor = opts.get("anchor") or default_anchor(opts.get("model_name_or_path"))
    if not isinstance(anchor, str):
        return anchor
    # the anchor's options, under the role asked for (the initial policy of CaT-SFT runs where the anchor runs)
    options = {f"{role}_{k.removeprefix('anchor_')}": v for k, v in opts.items() if k.startswith("anchor_")}
    return role_lm(anchor, role, options, **settings)


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
        >>> build_reward({"anchor": scripted_lm(["x"]), "mode": "rubric", "g": 4})
        CaTReward(mode='rubric', g=4, anchor='scripted/test', judge='scripted/test')
        >>> build_reward({"g": 4, "extraction": "flexible"}, reward="majority")
        MajorityReward(g=4, equivalence='symbolic', extraction='flexible')
    """
    cls = reward_class(reward)
    given = {**normalize_reward_options(options), **normalize_reward_options(overrides)}
    opts = {**DEFAULTS, **{name: value for name, value in given.items() if value is not None}}  # None: the default
    params = inspect.signature(cls).parameters
    mode = opts["mode"]
    needs_judge = "judge" in params and (cls is not CaTReward or mode == "rubric")
    if opts.get("program") and cls is not CaTReward:
        raise ValueError(f"program sets the prompts of the CaT reward; the {reward!r} reward has none")
    if "anchor" not in params and not needs_judge:  # majority, gold: no LM at all
        kwargs = {name: opts[name] for name in params if name in REWARD_OPTIONS and opts.get(name) is not None}
        return cls(**kwargs)
    anchor = anchor_lm(opts)
    judge = opts.get("judge")
    if isinstance(judge, str):
        judge = role_lm(judge, "judge", {k: v for k, v in opts.items() if k.startswith("judge_")})
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
        built.cat.load(opts["program"])
    return built


class EnvCaTReward:
    r"""A :class:`CaTReward` (or the comparison reward named ``reward``) built on first use from
    ``$CAT_REWARD_CONFIG`` and ``CAT_*`` variables.

    This is :data:`cat_reward` (and :data:`majority_reward`, :data:`judge_reward`, :data:`physician_rubric_reward`,
    :data:`gold_reward`, :data:`random_reward`, :data:`min_ppl_reward`), so TRL's own CLI can use CaT by dotted path::

        CAT_ANCHOR=local trl grpo --reward_funcs cat_dspy.rewards.cat_reward --num_generations 4 ...

    G is the trainer's ``num_generations``, read when the trainer binds the reward (see
    :meth:`~cat_dspy.rl.group.GroupReward.bind`).

    ``configure(**options)`` sets it up explicitly instead (LM objects accepted); ``reset()`` forgets it.

    Examples:
        >>> from cat_dspy.rl.registry import cat_reward
        >>> from cat_dspy.testing import scripted_lm
        >>> _ = cat_reward.configure(anchor=scripted_lm(["$\\boxed{7}$"]), g=2)
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

    def bind(self, trainer_or_model: Any, args: Any = None) -> GroupReward:
        return self.reward.bind(trainer_or_model, args)

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

random_reward = EnvCaTReward("random_reward", reward="random")
"""The random-reward control (:class:`RandomReward`), configured from the environment like ``cat_reward``."""

min_ppl_reward = EnvCaTReward("min_ppl_reward", reward="min_ppl")
"""The min-perplexity reward (:class:`MinPPLReward`), configured from the environment like ``cat_reward``."""

gold_reward = EnvCaTReward("gold_reward", reward="gold")
"""The supervised upper bound (:class:`GoldReward`), configured from the environment like ``cat_reward``."""
