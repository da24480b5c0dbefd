"""Metrics per (method, G), MLflow parent/child runs, the per-question table and the accuracy-vs-G plot.

:func:`summarize` turns question records (:func:`cat_dspy.evaluation.runner.evaluate_question`) into one row per
(method, G): accuracy (verifiable) or the HealthBench score (the clipped mean of the example scores), its standard
error across questions (sample standard deviation / √n), fallback counts, the failed LM calls behind it (rollout,
self-BoN policy, anchor and HealthBench judge calls, after DSPy's retries), the answer checks that fell back to
string comparison (math-verify worker timeout, busy, crash, ...), the compute attributable to that
(method, G) per role, and for ``cat``/``cat_q`` on verifiable sets the paper's diagnostics (§3.2, v3 Table 1): the
rates of disagreement with ``majority`` and with ``self_bon`` at the same G, the accuracy when disagreeing with
each, and the rate of questions answered
right while all of the first G rollouts were wrong. :func:`log_eval` writes them to MLflow and the run directory.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cat_dspy.evaluation.grading import clipped_mean
from cat_dspy.evaluation.runner import attributed_usage
from cat_dspy.lm.usage import merge_usage
from cat_dspy.scoring.stats import mean_stderr
from cat_dspy.tracking import CHILD_TAG

ROLE_KEYS = ("calls", "prompt_tokens", "completion_tokens", "seconds")
PLOT_FILE = "accuracy_vs_g.png"
TABLE_FILE = "results_table.json"


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, G) over ``records``, in the order the records list them.

    Returns:
        Dicts with ``method``, ``g``, ``n`` (questions scored; HealthBench: examples graded), ``accuracy``,
        ``stderr``, ``fallbacks`` (count) and ``fallback_kinds``, the failed calls (``rollout_errors``: failed
        rollouts among those the method used, ``policy_errors``: self-BoN, ``anchor_errors``: cat/cat_q,
        ``judge_errors``: HealthBench grader calls, ``failed_calls``: their sum), ``ungraded`` (HealthBench examples
        left ungraded by a failed judge call), ``unread_verdicts``, ``equivalence_fallbacks`` (count) and
        ``equivalence_fallback_kinds`` (by reason: checks of this row's answers that fell back to string comparison),
        ``usage`` (per role: calls, prompt/completion tokens, seconds), ``tokens`` (all roles), ``calls``, and
        on verifiable sets ``rollout_accuracy`` / ``rollout_stderr`` (the mean over questions of the share of the
        first G rollouts that are right: the policy's expected single-sample accuracy, with less variance than
        ``single``), and for cat/cat_q ``disagree_rate``, ``n_disagree``, ``accuracy_when_disagree``,
        ``all_wrong_rate``, ``right_when_all_wrong`` (share of all questions) and ``right_given_all_wrong``; when
        ``self_bon`` ran at the same G, also ``disagree_self_bon_rate``, ``n_disagree_self_bon`` and
        ``accuracy_when_disagree_self_bon``.
    """
    groups: dict[tuple[str, int], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for record in records:
        for result in record["results"]:
            groups.setdefault((result["method"], result["g"]), []).append((record, result))
    rows = []
    for (method, g), pairs in groups.items():
        verifiable = pairs[0][0]["mode"] == "verifiable"
        if verifiable:
            values = [1.0 if r["correct"] else 0.0 for _, r in pairs]
            accuracy, stderr = mean_stderr(values)
        else:
            values = [float(r["score"]) for _, r in pairs if r.get("score") is not None]
            accuracy, stderr = clipped_mean(values), mean_stderr(values)[1]
        usage: dict[str, dict[str, float]] = {}
        for record, result in pairs:
            merge_usage(usage, attributed_usage(record, result))
        usage = {role: {k: float(counts.get(k, 0)) for k in ROLE_KEYS} for role, counts in usage.items()}
        kinds = Counter(r["fallback"] for _, r in pairs if r.get("fallback"))
        equivalence: Counter[str] = Counter()
        for _, r in pairs:
            equivalence.update(r.get("equivalence_fallbacks") or {})
        errors = {
            "rollout_errors": sum(sum(1 for f in (rec.get("rollout_failures") or [])[: 1 if method == "single" else g]
                                      if f) for rec, _ in pairs),
            "policy_errors": sum(r.get("fallback") == "policy_error" for _, r in pairs),
            "anchor_errors": sum(r.get("fallback") == "synthesis_failed" for _, r in pairs),
            "judge_errors": sum(len(r.get("grading_errors") or ()) for _, r in pairs),
        }
        row: dict[str, Any] = {
            "method": method, "g": g, "mode": pairs[0][0]["mode"], "n": len(values), "accuracy": accuracy,
            "stderr": stderr, "fallbacks": sum(kinds.values()), "fallback_kinds": dict(kinds), **errors,
            "failed_calls": sum(errors.values()), "ungraded": sum(bool(r.get("grading_errors")) for _, r in pairs),
            "unread_verdicts": sum(int(r.get("unread") or 0) for _, r in pairs),
            "equivalence_fallbacks": sum(equivalence.values()), "equivalence_fallback_kinds": dict(equivalence),
            "usage": usage,
            "calls": sum(c["calls"] for c in usage.values()),
            "tokens": sum(c["prompt_tokens"] + c["completion_tokens"] for c in usage.values()),
            "seconds": sum(c["seconds"] for c in usage.values()),
        }
        if verifiable:
            shares = [sum(rec["rollout_correct"][:g]) / g for rec, _ in pairs]
            row["rollout_accuracy"], row["rollout_stderr"] = mean_stderr(shares)
        if verifiable and method in ("cat", "cat_q"):
            disagree = [r for _, r in pairs if r.get("disagrees")]
            all_wrong = [(rec, r) for rec, r in pairs if not any(rec["rollout_correct"][:g])]
            row.update(
                disagree_rate=_rate([bool(r.get("disagrees")) for _, r in pairs]),
                n_disagree=len(disagree),
                accuracy_when_disagree=_rate([r["correct"] for r in disagree]),
                all_wrong_rate=_rate([not any(rec["rollout_correct"][:g]) for rec, _ in pairs]),
                right_when_all_wrong=_rate([bool(r["correct"]) and not any(rec["rollout_correct"][:g])
                                            for rec, r in pairs]),
                right_given_all_wrong=_rate([r["correct"] for _, r in all_wrong]),
            )
            versus = [r for _, r in pairs if "disagrees_self_bon" in r]  # questions where self_bon ran at this G
            if versus:
                row.update(disagree_self_bon_rate=_rate([bool(r["disagrees_self_bon"]) for r in versus]),
                           n_disagree_self_bon=sum(bool(r["disagrees_self_bon"]) for r in versus),
                           accuracy_when_disagree_self_bon=_rate([r["correct"] for r in versus
                                                                  if r["disagrees_self_bon"]]))
        rows.append(row)
    return rows


def failure_totals(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Failures of a whole evaluation, each counted once: failed rollout calls, failed method calls (self-BoN
    policy, anchor), failed HealthBench judge calls and ungraded examples, and every answer check that fell back
    to string comparison (``equivalence.<reason>``: rollout grading, majority clustering and result grading).

    Examples:
        >>> rec = {"rollout_failures": [None, "LMTimeoutError: t"],
        ...        "rollout_equivalence_fallbacks": {"busy_fallback": 1},
        ...        "results": [{"fallback": "synthesis_failed", "equivalence_fallbacks": {"busy_fallback": 2}}]}
        >>> totals = failure_totals([rec])
        >>> totals["rollout_errors"], totals["anchor_errors"], totals["judge_errors"], totals["equivalence_fallbacks"]
        (1.0, 1.0, 0.0, 3.0)
        >>> totals["equivalence.busy_fallback"]
        3.0
    """
    totals = dict.fromkeys(("rollout_errors", "policy_errors", "anchor_errors", "judge_errors", "ungraded"), 0.0)
    equivalence: Counter[str] = Counter()
    for record in records:
        totals["rollout_errors"] += sum(1 for f in record.get("rollout_failures") or () if f)
        equivalence.update(record.get("rollout_equivalence_fallbacks") or {})
        for result in record["results"]:
            totals["policy_errors"] += result.get("fallback") == "policy_error"
            totals["anchor_errors"] += result.get("fallback") == "synthesis_failed"
            totals["judge_errors"] += len(result.get("grading_errors") or ())
            totals["ungraded"] += bool(result.get("grading_errors"))
            equivalence.update(result.get("equivalence_fallbacks") or {})
    totals["equivalence_fallbacks"] = float(sum(equivalence.values()))
    return totals | {f"equivalence.{k}": float(v) for k, v in sorted(equivalence.items())}


def failure_note(totals: dict[str, float]) -> str | None:
    """One line naming the failures of an evaluation (None when there were none).

    Examples:
        >>> failure_note({"rollout_errors": 2.0, "judge_errors": 0.0, "equivalence_fallbacks": 1.0,
        ...               "equivalence.timeout_fallback": 1.0})
        'failed calls: 2 rollout_errors; answer checks fallen back to string comparison: 1 (timeout_fallback: 1)'
    """
    calls = [f"{int(v)} {k}" for k, v in totals.items() if v and k.endswith("_errors")]
    parts = [f"failed calls: {', '.join(calls)}"] if calls else []
    unparsable = [f"{int(v)} {k.split('.', 1)[1]}" for k, v in totals.items() if v and k.startswith("parse.")]
    if unparsable:
        parts.append(f"outputs too deep or large to parse: {', '.join(unparsable)}")
    if totals.get("ungraded"):
        parts.append(f"{int(totals['ungraded'])} HealthBench examples ungraded (judge call failed)")
    if totals.get("equivalence_fallbacks"):
        kinds = ", ".join(f"{k.split('.', 1)[1]}: {int(v)}" for k, v in totals.items() if k.startswith("equivalence."))
        parts.append(f"answer checks fallen back to string comparison: {int(totals['equivalence_fallbacks'])} "
                     f"({kinds})")
    return "; ".join(parts) or None


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numeric MLflow metrics of one summary row (None values are left out)."""
    keys = ("n", "accuracy", "stderr", "rollout_accuracy", "rollout_stderr", "fallbacks", "calls", "tokens", "seconds",
            "failed_calls", "rollout_errors", "policy_errors", "anchor_errors", "judge_errors", "ungraded",
            "unread_verdicts", "equivalence_fallbacks", "disagree_rate", "n_disagree",
            "accuracy_when_disagree", "disagree_self_bon_rate", "n_disagree_self_bon",
            "accuracy_when_disagree_self_bon", "all_wrong_rate", "right_when_all_wrong", "right_given_all_wrong")
    metrics = {k: float(row[k]) for k in keys if row.get(k) is not None}
    metrics |= {f"equivalence.{k}": float(v) for k, v in (row.get("equivalence_fallback_kinds") or {}).items()}
    for role, counts in row["usage"].items():
        metrics |= {f"{role}.{k}": float(v) for k, v in counts.items()}
    if row["n"]:
        metrics["tokens_per_question"] = row["tokens"] / row["n"]
    return metrics


def results_table(records: Sequence[dict[str, Any]], max_chars: int = 2000) -> dict[str, list[Any]]:
    """The per-question results as columns (one row per question × method × G), for ``mlflow.log_table``."""
    columns: dict[str, list[Any]] = {k: [] for k in ("id", "method", "g", "answer", "gold", "correct", "score",
                                                     "fallback", "calls", "tokens", "response")}
    for record in records:
        for result in record["results"]:
            usage = attributed_usage(record, result)
            columns["id"].append(record["id"])
            columns["method"].append(result["method"])
            columns["g"].append(result["g"])
            columns["answer"].append(result.get("answer"))
            columns["gold"].append(record.get("gold"))
            columns["correct"].append(result.get("correct"))
            columns["score"].append(result.get("score"))
            columns["fallback"].append(result.get("fallback"))
            columns["calls"].append(sum(c["calls"] for c in usage.values()))
            columns["tokens"].append(sum(c["prompt_tokens"] + c["completion_tokens"] for c in usage.values()))
            columns["response"].append((result.get("text") or "")[:max_chars])
    return columns


def plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Accuracy (or score) vs G, one line per method with standard-error bars, saved as a PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    top = 0.05
    for i, method in enumerate(methods):
        points = sorted((r["g"], r["accuracy"], r["stderr"] or 0.0) for r in rows
                        if r["method"] == method and r["accuracy"] is not None)
        if points:
            gs, acc, se = zip(*points, strict=True)
            nudge = 1 + 0.03 * (i - (len(methods) - 1) / 2)  # side by side, so error bars stay readable
            ax.errorbar([g * nudge for g in gs], acc, yerr=se, marker="o", capsize=3, label=method)
            top = max(top, *(a + e for a, e in zip(acc, se, strict=True)))
    ax.set_ylim(-0.02, min(1.02, top * 1.1))
    gs_all = sorted({r["g"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(gs_all, [str(g) for g in gs_all])
    ax.set_xlabel("G (rollouts per question)")
    ax.set_ylabel("score" if rows and rows[0]["mode"] == "rubric" else "accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def curve_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The metrics of one row that the parent run logs with G as the step, so MLflow draws accuracy vs G per method
    (``accuracy/<method>``, ``stderr/<method>``, ``tokens_per_question/<method>``).

    Examples:
        >>> curve_metrics({"method": "cat", "accuracy": 0.5, "stderr": 0.1, "n": 4, "tokens": 800})
        {'accuracy/cat': 0.5, 'stderr/cat': 0.1, 'tokens_per_question/cat': 200.0}
    """
    method = row["method"]
    values = {f"accuracy/{method}": row.get("accuracy"), f"stderr/{method}": row.get("stderr"),
              f"tokens_per_question/{method}": row["tokens"] / row["n"] if row.get("n") else None}
    return {k: float(v) for k, v in values.items() if v is not None}


@contextlib.contextmanager
def _parent_run(experiment: str, run_name: str | None) -> Iterator[Any]:
    """The active MLflow run when the caller started one (``cat-dspy eval`` does, around the evaluation, so the run
    spans it and holds its traces), else a new run in ``experiment``."""
    import mlflow

    from cat_dspy import tracking

    active = mlflow.active_run()
    if active is not None:
        yield active
        return
    with tracking.run(experiment, run_name=run_name) as parent:
        yield parent


def log_eval(experiment: str, params: dict[str, Any], rows: Sequence[dict[str, Any]],
             records: Sequence[dict[str, Any]], run_dir: str | Path, *, run_name: str | None = None,
             parent_metrics: dict[str, float] | None = None, notes: Sequence[str] = (),
             start_time: float | None = None, end_time: float | None = None) -> str:
    """Log one evaluation to MLflow: a parent run, a nested child run per (method, G), the table and the plot.

    The parent logs ``accuracy/<method>`` (and its standard error, tokens per question) with G as the step, so
    MLflow's charts show accuracy vs G. Each child is given the evaluation's real span (``start_time`` to
    ``end_time``, epoch seconds; default: now): every (method, G) was computed over the whole evaluation. The plot
    and ``summary.json`` are also written into ``run_dir``. When a run is active (the caller's), it is the parent.

    Returns:
        The parent run's id.
    """
    import time

    import mlflow

    from cat_dspy import tracking

    run_dir = Path(run_dir)
    png = plot(rows, run_dir / PLOT_FILE, title=f"{params.get('dataset', '')} ({len(records)} questions)")
    summary = tracking.write_json({"params": params, "rows": rows, "notes": list(notes)}, run_dir / "summary.json")
    now = time.time()
    with _parent_run(experiment, run_name) as parent:
        tracking.log_params(params)
        mlflow.set_tags({CHILD_TAG: "parent", "run_dir": str(run_dir)})
        if notes:
            mlflow.set_tag("notes", "; ".join(notes)[:5000])
        mlflow.log_metrics({k: float(v) for k, v in (parent_metrics or {}).items()})
        for row in rows:
            mlflow.log_metrics(curve_metrics(row), step=int(row["g"]))
            with tracking.timed_run(f"{row['method']} G={row['g']}", start_time or now, end_time or now,
                                    nested=True, tags={CHILD_TAG: "child"}):
                tracking.log_params({"method": row["method"], "g": row["g"], "dataset": params.get("dataset"),
                                     "mode": row["mode"], "fallback_kinds": json.dumps(row["fallback_kinds"]),
                                     "equivalence_fallback_kinds": json.dumps(row.get("equivalence_fallback_kinds")
                                                                              or {})})
                mlflow.log_metrics(row_metrics(row), step=int(row["g"]))
        mlflow.log_table(tracking.redact(results_table(records)), artifact_file=TABLE_FILE)
        mlflow.log_artifact(str(png))
        mlflow.log_artifact(str(summary))
        return parent.info.run_id
