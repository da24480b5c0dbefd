"""Every option of the CaT reward, declared once (:class:`CaTRewardConfig`), and reading them from options, a YAML
recipe or the environment (``CAT_*``).

The recipe fields (``CaTGRPOConfig`` in :mod:`cat_dspy.rl.train` inherits this dataclass), the ``CAT_<OPTION>``
variables of ``cat_reward``, :class:`~cat_dspy.rl.reward.CaTReward`'s arguments and the overlapping ``solve`` /
``eval`` flags all derive from its fields: a field's name is the option's one spelling everywhere, and its default,
help and choices are the only ones. G is ``g`` here; in a training recipe it is TRL's own ``num_generations``
(``num_generations_eval``), which the reward reads from the trainer.

This module sits below every layer that reads it (evaluation, optimization, training, the command line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cat_dspy.lm.roles import ROLE_TEMPERATURE
from cat_dspy.scoring.extraction import EXTRACTIONS


@dataclass
class CaTRewardConfig:
    """The CaT reward's options (paper §1.3-1.5): the frozen anchor, the judge, the mode and how answers are read."""

    mode: str = field(
        default="verifiable",
        metadata={"choices": ["verifiable", "rubric"],
                  "help": "CaT reward: 'verifiable' (answer agrees with the synthesized reference) or 'rubric'."},
    )
    anchor: str | None = field(
        default=None,
        metadata={"help": "The frozen anchor π_0: 'local' (embedded model), 'local:<dir>', or a LiteLLM string "
                  "such as 'hosted_vllm/<model>' served apart from the policy. Default: the initial checkpoint "
                  "model_name_or_path, loaded once in eval mode. Never TRL's weight-synced vLLM."},
    )
    anchor_api_base: str | None = field(default=None, metadata={"help": "Server URL of an API anchor."})
    anchor_temperature: float = field(default=ROLE_TEMPERATURE["anchor"], metadata={"help": "Anchor temperature."})
    anchor_top_p: float | None = field(default=None, metadata={"help": "Anchor top-p."})
    anchor_top_k: int | None = field(default=None, metadata={"help": "Anchor top-k."})
    anchor_max_tokens: int = field(
        default=1024, metadata={"help": "Anchor max new tokens (a whole reference solution; the CLI's --max-tokens "
                                "is a per-call limit for the small embedded model)."}
    )
    anchor_device: str | None = field(
        default=None, metadata={"help": "Device of a local anchor (default: this process's training device)."}
    )
    anchor_lm_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra make_lm options of the anchor (JSON object), e.g. extra_body."}
    )
    judge: str | None = field(
        default=None,
        metadata={"help": "The judge (rubric mode): any model string. Default: the anchor."},
    )
    judge_api_base: str | None = field(default=None, metadata={"help": "Server URL of an API judge."})
    judge_temperature: float = field(default=ROLE_TEMPERATURE["judge"], metadata={"help": "Judge temperature."})
    judge_max_tokens: int = field(default=256, metadata={"help": "Judge max new tokens (one verdict line)."})
    judge_lm_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra make_lm options of the judge (JSON object)."}
    )
    question_aware: bool = field(
        default=False, metadata={"help": "Show the anchor the question (the paper's ablation; default blind)."}
    )
    per_criterion: bool = field(
        default=False, metadata={"help": "Rubric mode: one judge call per (completion, criterion), as the paper."}
    )
    min_criteria: int = field(default=5, metadata={"help": "Rubric mode: criteria a rubric must have (n >= 5)."})
    length_limit: int | None = field(
        default=None,
        metadata={"help": "Reward -1 for completions longer than this many tokens (paper: 750), counted with the "
                  "policy's tokenizer (local models; TRL passes token ids); an API policy has no known tokenizer: "
                  "whitespace words, with a warning (parsed.length_unit says which)."}
    )
    equivalence: str = field(
        default="symbolic",
        metadata={"choices": ["symbolic", "string"],
                  "help": "Answer equivalence: string match then math-verify ('symbolic'), or string only "
                  "('string', the paper's)."},
    )
    extraction: str = field(
        default="strict",
        metadata={"choices": list(EXTRACTIONS),
                  "help": "Final-answer extraction: 'strict' (box, ####, 'the answer is'; the paper) or "
                  "'flexible' (else the last number, for models that answer in prose)."},
    )
    program: str | None = field(
        default=None,
        metadata={"help": "A saved CaT program (cat-dspy optimize --out): the reward uses its "
                  "optimized synthesis, rubric and judge prompts."},
    )
    skip_unparsed: bool = field(
        default=False,
        metadata={"help": "Reward None (skip) instead of 0 for groups whose reference has no answer."},
    )
    num_threads: int | None = field(
        default=None,
        metadata={"help": "Groups scored concurrently per process (default: all of a step)."},
    )
    artifacts: bool = field(
        default=True,
        metadata={"help": "Log each step's references and rubrics as MLflow artifacts."},
    )
    trace_every: int = field(
        default=0,
        metadata={"help": "Record the DSPy traces of every N-th reward call in MLflow (0: never)."},
    )

    def __post_init__(self) -> None:
        for name in ("anchor_lm_kwargs", "judge_lm_kwargs"):
            setattr(self, name, parse_lm_kwargs(getattr(self, name), name))


def _kind(annotation: Any) -> type:
    """The type a string value converts to: the first non-None member of a field's resolved annotation."""
    return next(t for t in (typing.get_args(annotation) or (annotation,)) if t is not type(None))


OPTION_FIELDS = {f.name: f for f in dataclasses.fields(CaTRewardConfig)}
"""Option name -> its :class:`CaTRewardConfig` field."""
DEFAULTS = {name: f.default for name, f in OPTION_FIELDS.items()}
"""Option name -> its one default."""
_HINTS = typing.get_type_hints(CaTRewardConfig)
REWARD_OPTIONS: dict[str, type] = {
    **{name: _kind(_HINTS[name]) for name in OPTION_FIELDS},
    "g": int,  # G and the initial checkpoint: TRL's settings, which the reward reads too
    "g_eval": int,
    "model_name_or_path": str,
}
"""Option -> its type: the fields of :class:`CaTRewardConfig`, G (``g``, ``g_eval``) and the initial checkpoint."""
TRL_FIELDS = {"num_generations": "g", "num_generations_eval": "g_eval"}
"""TRL's recipe fields for G -> the option (a whole training recipe is a valid :data:`CONFIG_ENV` file)."""
RENAMED = {"cat_mode": "mode", "anchor_model": "anchor", "judge_model": "judge", "cat_program": "program",
           "cat_skip_unparsed": "skip_unparsed", "cat_num_threads": "num_threads", "cat_artifacts": "artifacts",
           "cat_trace_every": "trace_every", "num_generations": "g", "num_generations_eval": "g_eval"}
"""Former spellings of options -> the option: still read, with a ``FutureWarning``."""
ENV_PREFIX = "CAT_"
"""``CAT_<OPTION>`` (e.g. ``CAT_ANCHOR``, ``CAT_G``) configures ``cat_reward``."""
CONFIG_ENV = "CAT_REWARD_CONFIG"
"""Path of a YAML file of :data:`REWARD_OPTIONS` (a whole ``cat-dspy train`` recipe works: other keys are ignored)."""


def parse_lm_kwargs(value: Any, name: str = "lm_kwargs") -> dict | None:
    """Extra ``make_lm`` options as given in a recipe, a flag or the environment: a mapping, JSON text or nothing.

    Examples:
        >>> parse_lm_kwargs('{"extra_body": {"top_k": 20}}'), parse_lm_kwargs(" "), parse_lm_kwargs({"a": 1})
        ({'extra_body': {'top_k': 20}}, None, {'a': 1})
    """
    if value is None or isinstance(value, Mapping):
        return dict(value) if value is not None else None
    if not isinstance(value, str):
        raise ValueError(f"CaT reward option {name}: expected a JSON object, got {value!r}")
    if not value.strip() or value.strip().lower() in ("none", "null"):
        return None
    parsed = json.loads(value)
    if not isinstance(parsed, dict):
        raise ValueError(f"CaT reward option {name}: expected a JSON object, got {value!r}")
    return parsed


def _convert(name: str, value: Any) -> Any:
    kind = REWARD_OPTIONS[name]
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
        return parse_lm_kwargs(value, name)
    return kind(value)


def normalize_reward_options(options: Mapping[str, Any], *, strict: bool = True, recipe: bool = False
                             ) -> dict[str, Any]:
    """Canonical :data:`REWARD_OPTIONS` from ``options`` (strings converted; a former spelling warns).

    Args:
        options: Option values by name.
        strict: Raise on unknown names; otherwise ignore them (a whole training recipe holds many).
        recipe: ``options`` is a training recipe: TRL's ``num_generations`` fields are its G (no warning).

    Examples:
        >>> normalize_reward_options({"anchor": "local", "mode": "verifiable", "g": "4"})
        {'anchor': 'local', 'mode': 'verifiable', 'g': 4}
        >>> normalize_reward_options({"num_generations": 4, "output_dir": "x"}, strict=False, recipe=True)
        {'g': 4}
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = key
        if recipe and key in TRL_FIELDS:
            name = TRL_FIELDS[key]
        elif key in RENAMED:
            name = RENAMED[key]
            warnings.warn(f"CaT reward option {key!r} is now spelled {name!r}", FutureWarning, stacklevel=2)
        if name not in REWARD_OPTIONS:
            if strict:
                raise ValueError(f"unknown CaT reward option {key!r}; known: {sorted(REWARD_OPTIONS)}")
            continue
        out[name] = _convert(name, value)
    return out


def reward_options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Options from ``$CAT_REWARD_CONFIG`` (YAML) overridden by ``CAT_<OPTION>`` variables.

    Examples:
        >>> reward_options_from_env({"CAT_ANCHOR": "openai/gpt-4o-mini", "CAT_G": "4", "HOME": "/"})
        {'anchor': 'openai/gpt-4o-mini', 'g': 4}
    """
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    if path := env.get(CONFIG_ENV):
        import yaml

        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
        if not isinstance(config, dict):
            raise ValueError(f"{path}: a CaT reward config must be a YAML mapping")
        options.update(normalize_reward_options(config, strict=False, recipe=True))
    for old, name in TRL_FIELDS.items():  # the variables' former names (CAT_NUM_GENERATIONS)
        if (key := ENV_PREFIX + old.upper()) in env:
            warnings.warn(f"{key} is now spelled {ENV_PREFIX + name.upper()}", FutureWarning, stacklevel=2)
            options[name] = _convert(name, env[key])
    for name in REWARD_OPTIONS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            options[name] = _convert(name, env[key])
    return options


def default_anchor(model_name_or_path: str | None) -> str:
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
            f"cannot load the frozen anchor from {model_name_or_path!r} ({exc}); set anchor "
            "(e.g. hosted_vllm/<model> with anchor_api_base) to a server of the initial checkpoint") from exc
