"""Configuring the CaT reward from options, a YAML recipe or the environment (``CAT_*``), and ``cat_reward``:
the module-level reward TRL's CLI resolves by name (``--reward_funcs cat_dspy.rewards.cat_reward``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from cat_dspy.lm.roles import role_lm
from cat_dspy.rl.reward import REWARD_MAX_TOKENS, CaTReward

logger = logging.getLogger(__name__)

# -- configuration from options, YAML and environment --------------------------------------------------------

# option -> (type, aliases): aliases are the recipe (CaTGRPOConfig) field names.
REWARD_OPTIONS: dict[str, tuple[type, tuple[str, ...]]] = {
    "anchor": (str, ("anchor_model",)),
    "anchor_api_base": (str, ()),
    "anchor_temperature": (float, ()),
    "anchor_top_p": (float, ()),
    "anchor_top_k": (int, ()),
    "anchor_max_tokens": (int, ()),
    "anchor_device": (str, ()),
    "anchor_lm_kwargs": (dict, ()),
    "judge": (str, ("judge_model",)),
    "judge_api_base": (str, ()),
    "judge_temperature": (float, ()),
    "judge_max_tokens": (int, ()),
    "judge_lm_kwargs": (dict, ()),
    "mode": (str, ("cat_mode",)),
    "num_generations": (int, ()),
    "num_generations_eval": (int, ()),
    "question_aware": (bool, ()),
    "per_criterion": (bool, ()),
    "min_criteria": (int, ()),
    "length_limit": (int, ()),
    "equivalence": (str, ()),
    "extraction": (str, ()),
    "program": (str, ("cat_program",)),
    "skip_unparsed": (bool, ("cat_skip_unparsed",)),
    "num_threads": (int, ("cat_num_threads",)),
    "artifacts": (bool, ("cat_artifacts",)),
    "trace_every": (int, ("cat_trace_every",)),
    "model_name_or_path": (str, ()),
}
ENV_PREFIX = "CAT_"
"""``CAT_<OPTION>`` (e.g. ``CAT_ANCHOR``, ``CAT_NUM_GENERATIONS``) configures :data:`cat_reward`."""
CONFIG_ENV = "CAT_REWARD_CONFIG"
"""Path of a YAML file of :data:`REWARD_OPTIONS` (a whole ``cat-dspy train`` recipe works: other keys are ignored)."""
_ALIASES = {alias: name for name, (_, aliases) in REWARD_OPTIONS.items() for alias in (name, *aliases)}


def _convert(name: str, value: Any) -> Any:
    kind = REWARD_OPTIONS[name][0]
    if name in ("anchor", "judge") and value is not None and not isinstance(value, str):
        return value  # an LM object (Python configuration)
    if value is None or isinstance(value, kind) or (kind is float and isinstance(value, int)):
        return value
    if not isinstance(value, str):
        raise ValueError(f"CaT reward option {name}: expected {kind.__name__}, got {value!r}")
    if value.strip().lower() in ("", "none", "null"):
        return None
    if kind is str:
        return value
    if kind is bool:
        if value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if value.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"CaT reward option {name}: expected a boolean, got {value!r}")
    if kind is dict:
        parsed = json.loads(value)
        if not isinstance(parsed, dict):
            raise ValueError(f"CaT reward option {name}: expected a JSON object, got {value!r}")
        return parsed
    return kind(value)


def normalize_reward_options(options: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """Canonical :data:`REWARD_OPTIONS` from ``options`` (recipe aliases accepted, strings converted).

    Args:
        options: Option values by name or alias.
        strict: Raise on unknown names; otherwise ignore them (a whole training recipe holds many).

    Examples:
        >>> normalize_reward_options({"anchor_model": "local", "cat_mode": "verifiable", "num_generations": "4"})
        {'anchor': 'local', 'mode': 'verifiable', 'num_generations': 4}
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = _ALIASES.get(key)
        if name is None:
            if strict:
                raise ValueError(f"unknown CaT reward option {key!r}; known: {sorted(REWARD_OPTIONS)}")
            continue
        out[name] = _convert(name, value)
    return out


def reward_options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Options from ``$CAT_REWARD_CONFIG`` (YAML) overridden by ``CAT_<OPTION>`` variables.

    Examples:
        >>> reward_options_from_env({"CAT_ANCHOR": "openai/gpt-4o-mini", "CAT_NUM_GENERATIONS": "4", "HOME": "/"})
        {'anchor': 'openai/gpt-4o-mini', 'num_generations': 4}
    """
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    if path := env.get(CONFIG_ENV):
        import yaml

        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
        if not isinstance(config, dict):
            raise ValueError(f"{path}: a CaT reward config must be a YAML mapping")
        options.update(normalize_reward_options(config, strict=False))
    for name in REWARD_OPTIONS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            options[name] = _convert(name, env[key])
    return options


def _model_default_anchor(model_name_or_path: str | None) -> str:
    """The anchor model string for the initial checkpoint: π_0 is the policy before training."""
    from pathlib import Path

    if not model_name_or_path:
        return "local"
    from cat_dspy.lm.hf import default_model_dir

    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        return "local" if path.resolve() == default_model_dir().resolve() else f"local:{path}"
    try:  # a Hub id: its cached (or downloaded, when online) snapshot is the initial checkpoint
        from huggingface_hub import snapshot_download

        return f"local:{snapshot_download(model_name_or_path)}"
    except Exception as exc:
        raise ValueError(
            f"cannot load the frozen anchor from {model_name_or_path!r} ({exc}); set anchor_model "
            "(e.g. hosted_vllm/<model> with anchor_api_base) to a server of the initial checkpoint") from exc


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
    opts = {**normalize_reward_options(options), **normalize_reward_options(overrides)}
    anchor = opts.get("anchor") or _model_default_anchor(opts.get("model_name_or_path"))
    if isinstance(anchor, str):
        settings = {"temperature": opts.get("anchor_temperature"), "top_p": opts.get("anchor_top_p"),
                    "top_k": opts.get("anchor_top_k"),
                    "max_tokens": opts.get("anchor_max_tokens") or REWARD_MAX_TOKENS["anchor"]}
        if anchor.startswith("local"):
            settings["device"] = opts.get("anchor_device")
        else:
            settings["api_base"] = opts.get("anchor_api_base")
        anchor = role_lm(anchor, "anchor", **settings, **(opts.get("anchor_lm_kwargs") or {}))
    judge = opts.get("judge")
    if isinstance(judge, str):
        settings = {"temperature": opts.get("judge_temperature"),
                    "max_tokens": opts.get("judge_max_tokens") or REWARD_MAX_TOKENS["judge"]}
        if not judge.startswith("local"):
            settings["api_base"] = opts.get("judge_api_base")
        judge = role_lm(judge, "judge", **settings, **(opts.get("judge_lm_kwargs") or {}))
    mode = opts.get("mode") or "verifiable"
    if mode == "rubric" and judge is None:
        logger.warning("CaT reward: no judge configured; the anchor judges the rubric (the paper uses GPT-4o)")
        judge = anchor
    kwargs = {name: opts[name] for name in _REWARD_KWARGS if opts.get(name) is not None}
    reward = CaTReward(anchor, judge=judge, mode=mode, **kwargs)
    if opts.get("program"):  # optimized synthesis / rubric / judge prompts (cat-dspy optimize --out)
        from cat_dspy.optimization.program_file import load_program

        load_program(reward.cat, opts["program"])
    return reward


_REWARD_KWARGS = ("num_generations", "num_generations_eval", "question_aware", "per_criterion", "min_criteria",
                  "length_limit", "equivalence", "extraction", "skip_unparsed", "num_threads", "artifacts",
                  "trace_every")


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

