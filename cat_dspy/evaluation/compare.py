"""``cat-dspy compare``: the (method, G) comparison table of an MLflow experiment's eval runs.

Reads the child runs that ``cat-dspy eval`` logged (``mlflow.search_runs``) and prints one row per (method, G):
accuracy ± standard error, questions, fallbacks, failed LM calls and answer checks fallen back to string comparison,
LM calls and tokens per role, and CaT's disagreement with the majority vote and with Self-BoN (and its accuracy when
disagreeing with each).
By default only the latest eval of the experiment is shown; ``--all`` shows every eval, ``--run-id`` one of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from cat_dspy.lm.roles import ROLES
from cat_dspy.tracking import CHILD_TAG

CALL_ROLES = ROLES[:2]  # the table's "calls" columns: policy and anchor
METHOD_ORDER = ("single", "majority", "self_bon", "min_ppl", "mp", "cat", "cat_q")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cat-dspy compare``."""
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (as given to `eval`)")
    parser.add_argument("--run-id", default=None, help="the parent run of one eval (default: the latest eval)")
    parser.add_argument("--all", action="store_true", help="show the rows of every eval in the experiment")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines instead of a table")


def load_rows(experiment: str, run_id: str | None = None, all_runs: bool = False) -> list[dict[str, Any]]:
    """The (method, G) rows of an experiment's evals, read with ``mlflow.search_runs``.

    Raises:
        LookupError: No such experiment, or no eval run in it.
    """
    import mlflow

    from cat_dspy.tracking import DEFAULT_TRACKING_URI

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {mlflow.get_tracking_uri()}")
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list", max_results=50_000)
    parents = sorted((r for r in runs if r.data.tags.get(CHILD_TAG) == "parent"), key=lambda r: r.info.start_time)
    if run_id is not None:
        parents = [r for r in parents if r.info.run_id == run_id]
    elif not all_runs:
        parents = parents[-1:]
    if not parents:
        raise LookupError(f"no eval run in experiment {experiment!r}" + (f" with id {run_id}" if run_id else ""))
    order = {p.info.run_id: i for i, p in enumerate(parents)}
    names = {p.info.run_id: p.info.run_name or p.info.run_id[:8] for p in parents}
    rows = []
    for run in runs:
        parent = run.data.tags.get("mlflow.parentRunId")
        if run.data.tags.get(CHILD_TAG) != "child" or parent not in order:
            continue
        m, p = run.data.metrics, run.data.params
        row = {"eval": names[parent], "parent_run_id": parent, "run_id": run.info.run_id, "dataset": p.get("dataset"),
               "method": p.get("method"), "g": int(p.get("g", 0)), **m}
        rows.append(row)
    rank = {name: i for i, name in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (order[r["parent_run_id"]], rank.get(r["method"], 99), r["g"]))
    return rows


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:,.{digits}f}"


def print_rows(rows: Sequence[dict[str, Any]], title: str | None = None, file: Any = None) -> None:
    """Print the comparison table (rich) of summary rows or MLflow rows."""
    from rich.console import Console
    from rich.table import Table

    show_eval = len({r.get("eval") for r in rows}) > 1
    table = Table(title=title)
    columns = (["eval"] if show_eval else []) + ["method", "G", "accuracy ± se", "n", "fallbacks", "failed calls",
                                                 "eq. fallbacks"]
    columns += [f"{role} calls" for role in CALL_ROLES] + ["tokens", "tokens/q", "seconds", "disagree", "acc|disagree",
                                                           "disagree SBoN", "acc|disagree SBoN"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("eval", "method") else "right")
    for r in rows:
        usage = r.get("usage") or {}

        def role(role: str, key: str, r: dict[str, Any] = r, usage: dict[str, Any] = usage) -> Any:
            return usage[role].get(key) if role in usage else r.get(f"{role}.{key}")

        acc, se = r.get("accuracy"), r.get("stderr")
        n = r.get("n") or 0
        cells = [str(r["eval"])] if show_eval else []
        cells += [str(r["method"]), str(r["g"]), "–" if acc is None else f"{acc:.3f} ± {se or 0:.3f}", _num(n),
                  _num(r.get("fallbacks")), _num(r.get("failed_calls")), _num(r.get("equivalence_fallbacks"))]
        cells += [_num(role(x, "calls")) for x in CALL_ROLES]
        tokens = r.get("tokens")
        cells += [_num(tokens), _num(tokens / n if tokens is not None and n else None), _num(r.get("seconds"), 1)]
        cells += [_num(r.get("disagree_rate"), 3), _num(r.get("accuracy_when_disagree"), 3),
                  _num(r.get("disagree_self_bon_rate"), 3), _num(r.get("accuracy_when_disagree_self_bon"), 3)]
        table.add_row(*cells)
    Console(file=file or sys.stdout, width=200).print(table)


def run(args: argparse.Namespace) -> int:
    """Print the (method, G) comparison table of an MLflow experiment's eval runs."""
    try:
        rows = load_rows(args.experiment, run_id=args.run_id, all_runs=args.all)
    except LookupError as exc:
        print(f"cat-dspy compare: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str))
    else:
        print_rows(rows, title=f"{args.experiment}: {rows[0].get('dataset') or ''}")
    return 0
