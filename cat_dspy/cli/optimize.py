"""``cat-dspy optimize``: compile one CaT prompt with a DSPy optimizer (:mod:`cat_dspy.optimization.compile`), or
the policy program itself with a label-free metric (``--target policy``: :mod:`cat_dspy.optimization.policy`)."""

from __future__ import annotations

import argparse
import dataclasses

from cat_dspy.cli.common import add_answer_arguments, add_reward_option, add_role_arguments, build_roles, role_settings
from cat_dspy.optimization.compile import METRICS, OPTIMIZERS, TARGETS, OptimizeConfig, OptimizeError, optimize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cat-dspy optimize``."""
    parser.add_argument("--target", choices=[*TARGETS, "policy"], required=True,
                        help="the CaT prompt to optimize, or policy: the policy program itself")
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
    policy = parser.add_argument_group("--target policy")
    policy.add_argument("--metric", choices=METRICS,
                        help="cat: agreement with CaT's reference (default); majority: with the G samples' majority "
                        "answer; gold: with the gold answer (the labelled ceiling)")
    policy.add_argument("--program", help="a saved CaT program (CaT.save) whose rollout prompt to optimize")
    policy.add_argument("--module", metavar="FILE.py:NAME", help="a DSPy module of a script to optimize instead")
    policy.add_argument("--run-dir", help="run folder holding the DSPy cache (default: runs/optimize/policy-<hash>)")
    policy.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_answer_arguments(parser)
    add_role_arguments(parser)
    # the defaults are OptimizeConfig's, declared once
    parser.set_defaults(**{f.name: f.default for f in dataclasses.fields(OptimizeConfig)
                           if f.default is not dataclasses.MISSING})


def run(args: argparse.Namespace) -> int:
    """Optimize one CaT prompt (synthesize, rubric or judge), or the policy program, and save the program."""
    config = OptimizeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(OptimizeConfig)})
    try:
        if args.target == "policy":
            from cat_dspy.optimization.policy import optimize_policy

            result = optimize_policy(config, build_roles(args), role_settings(args), progress=not args.no_progress)
            return _print_policy(result)
        result = optimize(config, build_roles(args), role_settings(args))
    except OptimizeError as exc:
        raise SystemExit(str(exc)) from exc
    print(f"saved {args.target} program ({args.optimizer}) to {result['out']}")
    if report := result.get("report"):
        for name in ("base", "optimized", "difference"):
            print(f"  held-out {name}: {report[name]['mean']:.3f} ± {report[name]['se']:.3f} (n={report['n']})")
    return 0


def _print_policy(result: dict) -> int:
    report = result["report"]
    demos = sum(c["demos"] for c in result["changes"].values())
    print(f"saved policy program ({report['optimizer']}, --metric {report['metric']}) to {result['out']}: {demos} "
          f"demos, trained on {result['examples']} questions")
    for name in ("single", "majority"):
        if test := report.get(f"test_{name}"):
            cells = ", ".join(f"{part} {test[part]['mean']:.3f} ± {test[part]['se']:.3f}"
                              for part in ("base", "optimized", "difference"))
            print(f"  held-out {name} (n={test['n']}): {cells}")
    calls = ", ".join(f"{stage} {int(u['calls'])} calls {u['seconds']:.0f} s" for stage, u in result["usage"].items())
    print(f"  LM work: {calls} (run folder {result['run_dir']})")
    return 0
