"""``cat-dspy eval``: CaT against the selection baselines on one rollout group per question, logged to MLflow.

The data is loaded and validated before any model is built, so a malformed line fails in seconds with
``file:line``. Results live in a run directory (default ``runs/<experiment>/<hash of the arguments>``) holding the
DSPy cache and ``results.jsonl``: rerunning the same command resumes where it stopped, without repeating LM calls.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from cat_dspy.evaluation.evaluate import DEFAULT_METHODS, IN_FLIGHT

# Arguments that change neither which work is done nor its results (left out of the run-directory hash).
_NOT_HASHED = ("command", "experiment", "run_dir", "runs_root", "num_threads", "no_progress", "no_cache", "json",
               "traces")


def _ints(text: str) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"G values must be integers >= 1, got {text!r}")
    return values


def _methods(text: str) -> list[str]:
    from cat_dspy.evaluation.methods import METHODS

    names = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    unknown = [x for x in names if x not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cat-dspy eval``."""
    from cat_dspy.cli.common import add_answer_arguments, add_data_arguments, add_role_arguments

    add_data_arguments(parser, "gsm8k, math500, math, aime24, aime25, healthbench, or a JSONL file path")
    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--g", type=_ints, default="1,2,4,8", metavar="G,G,...",
                    help="G values; max(G) rollouts are sampled once per question (default: 1,2,4,8)")
    ev.add_argument("--methods", type=_methods, default=",".join(DEFAULT_METHODS), metavar="M,M,...",
                    help=f"of single,majority,self_bon,min_ppl,mp,cat,cat_q (default: {','.join(DEFAULT_METHODS)})")
    ev.add_argument("--prompt-prefix", default="", help="text prepended to every question (Qwen 3: '/no_think ')")
    ev.add_argument("--rollout-strategy", choices=("concurrent", "n", "auto"), default="concurrent",
                    help="one request per rollout (exact per-rollout tokens; default) or one with n=G (vLLM)")
    ev.add_argument("--program", default=None, help="a saved CaT program (CaT.save) to load")
    ev.add_argument("--num-threads", type=int, default=IN_FLIGHT, metavar="N",
                    help="questions in flight together; the local engine batches their calls (default: %(default)s)")
    ev.add_argument("--experiment", default="cat-dspy-eval", help="MLflow experiment (default: cat-dspy-eval)")
    ev.add_argument("--run-dir", default=None, help="results and cache folder (default: RUNS_ROOT/EXPERIMENT/HASH)")
    ev.add_argument("--runs-root", default="runs", help="root of the default run folders (default: runs)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--json", action="store_true", help="print the summary rows as JSON lines")
    ev.add_argument("--traces", action="store_true",
                    help="record DSPy traces in MLflow (mlflow.dspy.autolog), in the eval's parent run")
    add_answer_arguments(parser)
    add_role_arguments(parser)
    # An evaluation is reproducible by default: every request is seeded (seed + rollout id, mixed with its prompt by
    # the local engine), so its samples, and so its numbers, do not depend on how many questions are in flight.
    parser.set_defaults(seed=0)


def _file_digest(path: str | None) -> str | None:
    if path is None:
        return None
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()[:16]


def eval_config(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments that determine the results (hashed into the run directory's name)."""
    config = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_HASHED and not callable(v)}
    config["program_sha256"] = _file_digest(args.program)
    return config


def run(args: argparse.Namespace) -> int:
    """Evaluate CaT and the selection baselines on a dataset (resumable, logged to MLflow)."""
    from cat_dspy.cli.common import load_items
    from cat_dspy.datasets import DataError
    from cat_dspy.evaluation.runner import args_hash, mode_of

    # 1. Data first: a bad line must fail before any model is built or called.
    try:
        items = load_items(args)
        mode = mode_of(items)
    except (DataError, ValueError) as exc:
        print(f"cat-dspy eval: {exc}", file=sys.stderr)
        return 2
    if args.program is not None and not Path(args.program).expanduser().is_file():
        print(f"cat-dspy eval: no program file {args.program}", file=sys.stderr)
        return 2
    notes = []
    if mode == "rubric" and "majority" in args.methods:
        notes.append("majority skipped: a majority vote over final answers is not defined for free-text responses")
        print(f"cat-dspy eval: note: {notes[-1]}", file=sys.stderr)
    config = eval_config(args)
    run_dir = Path(args.run_dir or Path(args.runs_root) / args.experiment / args_hash(config))
    return _evaluate(args, items, mode, config, run_dir, notes)


def _evaluate(args: argparse.Namespace, items: list, mode: str, config: dict[str, Any], run_dir: Path,
              notes: list[str]) -> int:
    from cat_dspy import tracking
    from cat_dspy.cli.common import build_roles, role_settings
    from cat_dspy.evaluation.compare import print_rows
    from cat_dspy.evaluation.evaluate import evaluate
    from cat_dspy.evaluation.report import failure_note, log_eval

    run_dir.mkdir(parents=True, exist_ok=True)
    tracking.write_json(config, run_dir / "args.json")
    settings = role_settings(args)
    lms = build_roles(args)
    if "mp" in args.methods:
        from cat_dspy.lm.prompt_logprobs import PromptLogprobsUnavailable, check_prompt_logprobs

        try:
            check_prompt_logprobs(lms["policy"])
        except PromptLogprobsUnavailable as exc:
            print(f"cat-dspy eval: mp: {exc}", file=sys.stderr)
            return 2
    run_name = f"eval {Path(str(args.dataset)).stem} G={','.join(map(str, args.g))}"
    # The parent run spans the evaluation (its real start and end in MLflow) and holds the traces of --traces.
    with tracking.run(args.experiment, run_name=run_name, traces=args.traces):
        started = time.time()
        evaluation = evaluate(items, lms, run_dir, g=args.g, methods=args.methods, mode=mode,
                              equivalence=args.equivalence, extraction=args.extraction, program=args.program,
                              prompt_prefix=args.prompt_prefix, rollout_strategy=args.rollout_strategy,
                              temperature=settings["policy"]["temperature"], num_threads=args.num_threads,
                              progress=not args.no_progress, cache=not args.no_cache)
        ended = time.time()
        rows, result, failures = evaluation.rows, evaluation.run, evaluation.failures
        params = {**config, "mode": mode, "run_dir": str(run_dir), "questions": len(items)}
        params |= {f"{role}.{k}": v for role, opts in settings.items() for k, v in opts.items()}
        parent_metrics = {"questions": len(items), "resumed": result.resumed, "evaluated": result.evaluated,
                          "seconds": result.seconds,
                          "cache_hits": sum(r.get("cache_hits", 0) for r in result.records)}
        parent_metrics |= {f"run.{role}.{k}": v for role, counts in result.usage.items() for k, v in counts.items()
                           if k != "generate_calls"}
        parent_metrics |= {f"failures.{k}": v for k, v in failures.items()}
        failed = failure_note(failures)
        if failed:
            notes.append(failed)
            print(f"cat-dspy eval: warning: {failed}", file=sys.stderr)
        run_id = log_eval(args.experiment, params, rows, result.records, run_dir, notes=notes, run_name=run_name,
                          parent_metrics=parent_metrics, start_time=started, end_time=ended)
    if args.json:
        import json

        for row in rows:
            print(json.dumps(row, default=str))
    else:
        print_rows(rows, title=f"{args.dataset}: {len(items)} questions ({result.resumed} resumed)")
        import mlflow

        experiment_id = mlflow.get_run(run_id).info.experiment_id
        print(f"run dir: {run_dir}   MLflow run: {run_id} (experiment {args.experiment!r}; in `mlflow ui`: "
              f"{tracking.ui_path(experiment_id, run_id)})")
    return 0
