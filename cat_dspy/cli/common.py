"""Options every command shares: one way to name a model for every role, and how final answers are read."""

from __future__ import annotations

import argparse
from typing import Any

from cat_dspy.lm.roles import ROLE_TEMPERATURE, ROLES
from cat_dspy.rl.config import OPTION_FIELDS, REWARD_OPTIONS


def add_role_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--policy/--anchor/--judge`` model strings and per-role sampling options to ``parser``."""
    group = parser.add_argument_group(
        "models",
        "Every role takes a model string: 'local' (embedded SmolLM2-135M), 'local:<path>' (a transformers "
        "checkpoint), or any DSPy/LiteLLM string (openai/<m>, anthropic/<m>, hosted_vllm/<m>). API keys are read "
        "from the environment only. Per-role overrides: --{policy,anchor,judge}-{api-base,temperature,top-p,top-k,"
        "max-tokens}.",
    )
    for role in ROLES:
        group.add_argument(f"--{role}", default="local", metavar="MODEL", help=f"{role} model (default: local)")
    group.add_argument("--api-base", default=None, help="OpenAI-compatible base URL for every non-local role")
    group.add_argument("--max-tokens", type=int, default=256, help="max new tokens per call (default: 256)")
    group.add_argument("--temperature", type=float, default=None, help="policy sampling temperature (default 1.0)")
    group.add_argument("--seed", type=int, default=None, help="sampling seed (also separates cache entries)")
    group.add_argument("--no-cache", action="store_true", help="bypass DSPy's LM cache")
    for role in ROLES:
        group.add_argument(f"--{role}-api-base", default=None, help=argparse.SUPPRESS)
        group.add_argument(f"--{role}-temperature", type=float, default=None, help=argparse.SUPPRESS)
        group.add_argument(f"--{role}-top-p", type=float, default=None, help=argparse.SUPPRESS)
        group.add_argument(f"--{role}-top-k", type=int, default=None, help=argparse.SUPPRESS)
        group.add_argument(f"--{role}-max-tokens", type=int, default=None, help=argparse.SUPPRESS)


def add_answer_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--equivalence`` and ``--extraction``: how final answers are compared and read (verifiable mode)."""
    group = parser.add_argument_group("answers")
    add_reward_option(group, "equivalence")
    add_reward_option(group, "extraction")


def add_reward_option(parser: Any, name: str, flag: str | None = None) -> None:
    """Add the CaT reward option ``name`` as ``--name`` (or ``flag``), with the default, type, choices and help of its
    :class:`~cat_dspy.rl.config.CaTRewardConfig` field: the option is declared there once."""
    spec = OPTION_FIELDS[name]
    kind = REWARD_OPTIONS[name][0]
    options: dict[str, Any] = {"default": spec.default, "help": spec.metadata["help"] + " (default: %(default)s)"}
    if kind is bool:
        options["action"] = "store_false" if spec.default else "store_true"
    else:
        options["type"] = kind
    if "choices" in spec.metadata:
        options["choices"] = spec.metadata["choices"]
    parser.add_argument(flag or "--" + name.replace("_", "-"), **options)


def role_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The model string and sampling options of each role, as parsed from ``args`` (no secrets, loggable)."""
    settings = {}
    for role in ROLES:
        temperature = getattr(args, f"{role}_temperature")
        if temperature is None:
            temperature = args.temperature if role == "policy" and args.temperature is not None else None
        if temperature is None:
            temperature = ROLE_TEMPERATURE[role]
        model = getattr(args, role)
        settings[role] = {
            "model": model,
            "api_base": None if model.startswith("local") else (getattr(args, f"{role}_api_base") or args.api_base),
            "temperature": temperature,
            "top_p": getattr(args, f"{role}_top_p"),
            "top_k": getattr(args, f"{role}_top_k"),
            "max_tokens": getattr(args, f"{role}_max_tokens") or args.max_tokens,
        }
    return settings


def build_roles(args: argparse.Namespace) -> dict[str, Any]:
    """One ``dspy.LM`` per role; roles naming the same local model share one loaded model and batcher."""
    from cat_dspy.lm.models import make_lm

    lms = {}
    for role, options in role_settings(args).items():
        extra = {"seed": args.seed} if args.seed is not None else {}
        lms[role] = make_lm(options.pop("model"), cache=not args.no_cache, **options, **extra)
    return lms
