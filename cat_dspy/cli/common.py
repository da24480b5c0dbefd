"""Options every command shares: one way to name a model for every role, and how final answers are read."""

from __future__ import annotations

import argparse
from typing import Any

from cat_dspy.config import OPTION_FIELDS, REWARD_OPTIONS
from cat_dspy.lm import roles
from cat_dspy.lm.roles import ROLES


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
    :class:`~cat_dspy.config.CaTRewardConfig` field: the option is declared there once."""
    spec = OPTION_FIELDS[name]
    kind = REWARD_OPTIONS[name]
    options: dict[str, Any] = {"default": spec.default, "help": spec.metadata["help"] + " (default: %(default)s)"}
    if kind is bool:
        options["action"] = "store_false" if spec.default else "store_true"
    else:
        options["type"] = kind
    if "choices" in spec.metadata:
        options["choices"] = spec.metadata["choices"]
    parser.add_argument(flag or "--" + name.replace("_", "-"), **options)


def _shared(args: argparse.Namespace, role: str) -> dict[str, Any]:
    """The flags every role shares (``--api-base``, ``--max-tokens``; ``--temperature`` is the policy's)."""
    return {"api_base": args.api_base, "max_tokens": args.max_tokens,
            "temperature": args.temperature if role == "policy" else None}


def role_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The model string and sampling options of each role, as parsed from ``args`` (no secrets, loggable): what
    :func:`cat_dspy.lm.roles.role_settings` reads from the ``--<role>-<option>`` flags and the shared ones."""
    settings = {}
    for role in ROLES:
        model = getattr(args, role)
        read = roles.role_settings(role, model, vars(args), _shared(args, role))
        settings[role] = {"model": model, **{key: read.get(key) for key in _LOGGED}}
    return settings


_LOGGED = ("api_base", "temperature", "top_p", "top_k", "max_tokens")


def build_roles(args: argparse.Namespace) -> dict[str, Any]:
    """One ``dspy.LM`` per role; roles naming the same local model share one loaded model and batcher."""
    return {role: roles.role_lm(getattr(args, role), role, vars(args), _shared(args, role), cache=not args.no_cache,
                                seed=args.seed)
            for role in ROLES}


def load_items(args: argparse.Namespace) -> list[Any]:
    """The questions the data flags of ``eval`` and ``signals`` name (``--dataset``, ``--split``, ``--limit``,
    ``--data-dir``, the field names, ``--data-seed``), validated before any model is built.

    Raises:
        cat_dspy.datasets.DataError: A malformed line (``file:line``) or a missing dataset.
    """
    from cat_dspy.datasets import load_dataset

    return load_dataset(args.dataset, split=args.split, limit=args.limit, data_dir=args.data_dir,
                        question_field=args.question_field, answer_field=args.answer_field, id_field=args.id_field,
                        seed=args.data_seed)

def add_data_arguments(parser: argparse.ArgumentParser, dataset_help: str) -> Any:
    """The data flags of ``eval`` and ``signals`` (what :func:`load_items` reads), as an argument group."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help=dataset_help)
    data.add_argument("--split", default=None, help="split of a named dataset (default: its test split)")
    data.add_argument("--limit", type=int, default=None, help="the first N questions")
    data.add_argument("--data-dir", default=None, help="folder of the named datasets (else $CAT_DSPY_DATA)")
    data.add_argument("--data-seed", type=int, default=None, help="shuffle the questions with this seed first")
    data.add_argument("--question-field", default="question", help="JSONL files: the question field")
    data.add_argument("--answer-field", default="answer", help="JSONL files: the gold answer field")
    data.add_argument("--id-field", default=None, help="JSONL files: a unique id field")
    return data
