"""``cat-dspy signals``: which label-free teacher, and when — every signal on one cached set of rollouts.

G rollouts per question are sampled once (resumable like ``cat-dspy eval``: a run directory holding the DSPy cache
and ``results.jsonl``, one record per question with every signal's per-rollout scores, rewards and pseudo-labels at
every G, the gold correctness, and each probe's compute). The summary (:mod:`cat_dspy.evaluation.signal_report`:
AUROC, selection accuracy paired against majority, reward and label accuracy, zero-variance groups, compute, the
CaT-vs-majority disagreement) is written to ``summary.json`` with a plot, and logged to MLflow.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cat_dspy.cli.eval import _ints
from cat_dspy.evaluation.evaluate import IN_FLIGHT

_NOT_HASHED = ("command", "experiment", "run_dir", "runs_root", "num_threads", "no_progress", "no_cache", "json",
               "dataset_label")
SUMMARY_FILE, PLOT_FILE = "summary.json", "signals.png"


def _signals(text: str) -> list[str]:
    from cat_dspy.evaluation.signals import SIGNALS

    names = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    unknown = [x for x in names if x not in SIGNALS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown signals {unknown}; choose from {', '.join(SIGNALS)}")
    return names


def _probe_gs(text: str) -> tuple[str, list[int]]:
    from cat_dspy.evaluation.signal_runner import PROBE_ROLE

    name, _, gs = text.partition("=")
    if name not in PROBE_ROLE or not gs:
        raise argparse.ArgumentTypeError(f"expected PROBE=G,G with PROBE of {', '.join(PROBE_ROLE)}, got {text!r}")
    return name, _ints(gs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cat-dspy signals``."""
    from cat_dspy.cli.common import add_answer_arguments, add_data_arguments, add_role_arguments
    from cat_dspy.evaluation.signals import DEFAULT_SIGNALS

    data = add_data_arguments(parser, "gsm8k, math500, ..., or a JSONL file path")
    data.add_argument("--dataset-label", default=None, help="the dataset's name in the table (default: its stem)")
    sig = parser.add_argument_group("signals")
    sig.add_argument("--g", type=_ints, default="2,4,8,16", metavar="G,G,...",
                     help="G values; max(G) rollouts are sampled once per question (default: 2,4,8,16)")
    sig.add_argument("--signals", type=_signals, default=",".join(DEFAULT_SIGNALS), metavar="S,S,...",
                     help=f"of {','.join(DEFAULT_SIGNALS)} (default: all)")
    sig.add_argument("--probe-gs", action="append", type=_probe_gs, default=[], metavar="PROBE=G,G",
                     help="run an expensive probe at these G only (repeatable), e.g. mp=2,4,8")
    sig.add_argument("--num-threads", type=int, default=IN_FLIGHT, metavar="N",
                     help="questions in flight together; the local engine batches their calls (default: %(default)s)")
    sig.add_argument("--experiment", default="cat-dspy-signals", help="MLflow experiment (default: %(default)s)")
    sig.add_argument("--run-dir", default=None, help="results and cache folder (default: RUNS_ROOT/EXPERIMENT/HASH)")
    sig.add_argument("--runs-root", default="runs", help="root of the default run folders (default: runs)")
    sig.add_argument("--no-mlflow", action="store_true", help="write summary.json and the plot only")
    sig.add_argument("--no-progress", action="store_true", help="no progress bar")
    sig.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_answer_arguments(parser)
    add_role_arguments(parser)
    parser.set_defaults(seed=0)


def signals_config(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments that determine the results (hashed into the run directory's name)."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_HASHED and not callable(v)}


def write_summary(records: list[dict[str, Any]], run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """``summary.json`` and the plot of ``records`` in ``run_dir``; returns the summary."""
    from cat_dspy import tracking
    from cat_dspy.evaluation.signal_report import plot_signals, summarize_signals

    summary = {"params": params, **summarize_signals(records)}
    tracking.write_json(summary, run_dir / SUMMARY_FILE)
    plot_signals(summary, run_dir / PLOT_FILE)
    return summary


def run(args: argparse.Namespace) -> int:
    """Score every label-free signal on one cached set of G rollouts per question (resumable, logged to MLflow)."""
    from cat_dspy import tracking
    from cat_dspy.cli.common import build_roles, load_items, role_settings
    from cat_dspy.datasets import DataError
    from cat_dspy.evaluation.runner import args_hash
    from cat_dspy.evaluation.signal_report import format_table, summary_metrics
    from cat_dspy.evaluation.signal_runner import build_setup, run_signals

    try:
        items = load_items(args)
    except (DataError, ValueError) as exc:
        print(f"cat-dspy signals: {exc}", file=sys.stderr)
        return 2
    if any(item.answer is None for item in items):
        print("cat-dspy signals: every question needs a gold answer (the table grades the signals)", file=sys.stderr)
        return 2
    config = signals_config(args)
    run_dir = Path(args.run_dir or Path(args.runs_root) / args.experiment / args_hash(config))
    run_dir.mkdir(parents=True, exist_ok=True)
    tracking.write_json(config, run_dir / "args.json")
    settings = role_settings(args)
    lms = build_roles(args)
    label = args.dataset_label or Path(str(args.dataset)).stem
    setup = build_setup(lms, args.g, args.signals, temperature=settings["policy"]["temperature"],
                        extraction=args.extraction, equivalence=args.equivalence,
                        max_tokens=settings["policy"]["max_tokens"], seed=args.seed, dataset=label,
                        probe_gs=dict(args.probe_gs) or None)
    started = time.time()
    done, todo = run_signals(items, setup, run_dir, num_threads=args.num_threads, progress=not args.no_progress,
                             cache=not args.no_cache)
    ended = time.time()
    records = [done[item.id] for item in items]
    params = {**config, "run_dir": str(run_dir), "questions": len(items)}
    params |= {f"{role}.{k}": v for role, opts in settings.items() for k, v in opts.items()}
    summary = write_summary(records, run_dir, params)
    if not args.no_mlflow:
        import mlflow

        tracking.setup(args.experiment)
        with tracking.timed_run(f"signals {label} G={','.join(map(str, args.g))}", started, ended,
                                tags={"run_dir": str(run_dir)}):
            tracking.log_params(params)
            mlflow.log_metrics({"questions": len(items), "evaluated": len(todo),
                                "resumed": len(items) - len(todo), "seconds": ended - started})
            mlflow.log_metrics(summary_metrics(summary))
            mlflow.log_artifact(str(run_dir / SUMMARY_FILE))
            mlflow.log_artifact(str(run_dir / PLOT_FILE))
    if args.json:
        import json

        print(json.dumps(summary, default=str))
    else:
        print(format_table(summary))
        print(f"\nrun dir: {run_dir} ({len(items) - len(todo)} of {len(items)} questions resumed)")
    return 0

