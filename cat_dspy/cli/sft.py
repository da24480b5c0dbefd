"""``cat-dspy sft``: CaT-SFT (paper §2.2) from a YAML recipe; TRL's ``TrlParser`` owns every option
(:func:`cat_dspy.rl.sft.run_argv`). TRL is imported only when the command runs, so ``cat-dspy --help`` stays fast."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """How ``cat-dspy -h`` lists ``sft``; its options are TRL's (:func:`run_argv`, ``cat-dspy sft -h``)."""
    parser.add_argument("trl_args", nargs=argparse.REMAINDER, metavar="--config RECIPE.yaml [--key value ...]",
                        help="a recipe (experiments/recipes/sft_*.yaml) and overrides of any of its fields")


def run(args: argparse.Namespace) -> int:
    """Fine-tune a policy on the frozen anchor's references (CaT-SFT, TRL's SFTTrainer), from a YAML recipe."""
    return run_argv(list(getattr(args, "trl_args", None) or []))


def run_argv(argv: list[str]) -> int:
    """``cat-dspy sft ARGV``."""
    from cat_dspy.rl.sft import run_argv as sft_argv

    return sft_argv(argv)
