"""``cat-dspy optimize``: compile one CaT prompt with a DSPy optimizer (:mod:`cat_dspy.optimization.compile`)."""

from __future__ import annotations

import argparse
import dataclasses

from cat_dspy.cli.common import add_answer_arguments, add_reward_option, add_role_arguments, build_roles, role_settings
from cat_dspy.optimization.compile import OPTIMIZERS, TARGETS, OptimizeConfig, OptimizeError, optimize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cat-dspy optimize``."""
    parser.add_argument("--target", choices=TARGETS, required=True, help="the CaT prompt to optimize")
    parser.add_argument("--dataset", required=True, help="named set (gsm8k, math, healthbench, ...) or a JSONL path")
    parser.add_argument("--split", help="split of a named set (default: train where it has one)")
    parser.add_argument("--data-dir", help="folder holding the named sets")
    parser.add_argument("--train", type=int, help="training examples (default: %(default)s)")
    parser.add_argument("--dev", type=int, help="validation examples (default: %(default)s)")
    parser.add_argument("--test", type=int, help="held-out examples for a base-vs-optimized report")
    parser.add_argument("--g", type=int, help="rollouts per question, G (default: %(default)s)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS)
    parser.add_argument(
        "--budget", help="light|medium|heavy, or N: GEPA metric calls, MIPRO trials, bootstrap rounds"
    )
    parser.add_argument("--demos", type=int, help="max bootstrapped demos per prompt (default: %(default)s)")
    parser.add_argument("--reflection-lm", metavar="MODEL", help="GEPA reflection / MIPRO proposal LM")
    parser.add_argument("--reference-judge", metavar="MODEL", help="judge target: label with this judge")
    parser.add_argument("--criteria", type=int, help="judge target: criteria per example (default: %(default)s)")
    parser.add_argument("--mode", choices=("verifiable", "rubric"), help="mode of the saved program")
    add_reward_option(parser, "question_aware")
    add_reward_option(parser, "per_criterion")
    parser.add_argument("--threads", type=int, help="concurrent examples (default: %(default)s)")
    parser.add_argument("--out", help="program file (default: outputs/programs/<target>-<optimizer>.json)")
    parser.add_argument("--cache", help="folder for cached rollouts and references")
    parser.add_argument("--experiment", help="MLflow experiment")
    parser.add_argument("--traces", action="store_true", help="also record DSPy traces in MLflow")
    add_answer_arguments(parser)
    add_role_arguments(parser)
    # the defaults are OptimizeConfig's, declared once
    parser.set_defaults(**{f.name: f.default for f in dataclasses.fields(OptimizeConfig)
                           if f.default is not dataclasses.MISSING})


def run(args: argparse.Namespace) -> int:
    """Optimize one CaT prompt (synthesize, rubric or judge) with a DSPy optimizer and save the program."""
    config = OptimizeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(OptimizeConfig)})
    try:
        result = optimize(config, build_roles(args), role_settings(args))
    except OptimizeError as exc:
        raise SystemExit(str(exc)) from exc
    print(f"saved {args.target} program ({args.optimizer}) to {result['out']}")
    if report := result.get("report"):
        for name in ("base", "optimized", "difference"):
            print(f"  held-out {name}: {report[name]['mean']:.3f} ± {report[name]['se']:.3f} (n={report['n']})")
    return 0
