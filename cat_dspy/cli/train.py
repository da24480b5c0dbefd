"""``cat-dspy train``: GRPO with the CaT reward from a YAML recipe; TRL's ``TrlParser`` owns every option
(:func:`cat_dspy.rl.train.run_argv`). TRL is imported only when the command runs, so ``cat-dspy --help`` stays fast."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """How ``cat-dspy -h`` lists ``train``; its options are TRL's (:func:`run_argv`, ``cat-dspy train -h``)."""
    parser.add_argument("trl_args", nargs=argparse.REMAINDER, metavar="--config RECIPE.yaml [--key value ...]",
                        help="a recipe (experiments/recipes/*.yaml) and overrides of any of its fields")


def run(args: argparse.Namespace) -> int:
    """Train a policy with GRPO and the CaT reward (TRL), from a YAML recipe."""
    return run_argv(list(getattr(args, "trl_args", None) or []))


def run_argv(argv: list[str]) -> int:
    """``cat-dspy train ARGV``."""
    from cat_dspy.rl.train import run_argv as train_argv

    return train_argv(argv)
