"""The signal table: which label-free teacher, and when — a pure summary of a signals ``results.jsonl``.

:func:`summarize_signals` reads only the records (:mod:`~cat_dspy.evaluation.signal_runner`: per rollout, every
signal's score, reward and pseudo-label at every G, and the gold correctness), so the table re-derives from the file.
Per (dataset, G, signal):

* ``auroc``: the signal's scores against gold correctness, pooled over the *mixed* groups (≥ 1 right and ≥ 1 wrong
  rollout among the first G; others carry no ranking information), ties counted half (:func:`auroc`);
* ``accuracy``: selection accuracy — the signal's pick among the first G is right (``cat``/``cat_q``: the
  reference's answer is right); a group the signal cannot score falls back to rollout 0 and is counted
  (``unavailable``); paired by question against ``majority`` (``vs_majority``: mean difference and 95 % interval,
  :func:`~cat_dspy.scoring.stats.paired_difference`);
* ``reward_accuracy``: per question, the share of rollouts whose 0/1 reward equals their gold reward, averaged;
  ``label_accuracy``: the pseudo-label is right;
* ``zero_variance``: the share of groups whose rewards are all equal (no GRPO gradient; a group the signal cannot
  score counts as one);
* ``compute``: per question, the signal's own probe (calls, tokens, seconds), besides the rollouts all share; the
  seconds are each call's wall time summed, and concurrent calls overlap (4 self-BoN calls of one question run
  together), so they rank the probes rather than add up to the question's time.

Per (dataset, G) also: ``disagreement`` (the paper's analysis: how often CaT's reference answer differs from the
majority answer, and how often each is right then) and ``cap`` (rollouts hitting the token cap, accuracy capped vs
not).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cat_dspy.evaluation.signals import SIGNALS
from cat_dspy.scoring.stats import interval95, mean_stderr, paired_difference


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` (the Mann–Whitney statistic, ties counted half);
    None without both classes. scikit-learn's ``roc_auc_score`` when installed (the same number), else exact
    mid-ranks.

    Examples:
        >>> auroc([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
        0.875
        >>> auroc([1.0, 1.0], [True, False]), auroc([1.0], [True])
        (0.5, None)
    """
    labels = [bool(x) for x in labels]
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return None
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        return rank_auroc(scores, labels)
    return float(roc_auc_score(labels, list(scores)))


def rank_auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """:func:`auroc` without scikit-learn: (sum of the positives' mid-ranks − P(P+1)/2) / (P·N).

    Examples:
        >>> rank_auroc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]), rank_auroc([3, 3, 3], [1, 0, 1])
        (0.875, 0.5)
    """
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: p[0])
    pos = sum(bool(lab) for _, lab in pairs)
    neg = len(pairs) - pos
    if not pos or not neg:
        return None
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mid = (i + 1 + j) / 2  # the mean of ranks i+1..j
        rank_sum += mid * sum(bool(lab) for _, lab in pairs[i:j])
        i = j
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def _interval(values: Sequence[float]) -> dict[str, Any]:
    mean, se = mean_stderr(values)
    lo, hi = interval95(mean, se, len(values))
    return {"mean": mean, "se": se, "lo": lo, "hi": hi, "n": len(values)}


def _selected_correct(record: dict[str, Any], name: str, g: int) -> tuple[bool, bool]:
    """(right, unavailable) of the signal's selection at G on one record."""
    result = record["signals"][name][str(g)]
    if result.get("unavailable"):
        return bool(record["rollout_correct"][0]), True
    if SIGNALS[name].label_based:
        return bool(result.get("label_correct")), False
    return bool(record["rollout_correct"][result["pick"]]), False


def _cell(records: list[dict[str, Any]], name: str, g: int) -> dict[str, Any]:
    key = str(g)
    pooled_scores, pooled_labels, mixed = [], [], 0
    reward_acc, label_acc, zero_var, unavailable = [], [], 0, 0
    for r in records:
        result = r["signals"][name][key]
        correct = [bool(c) for c in r["rollout_correct"][:g]]
        if result.get("unavailable"):
            unavailable += 1
            zero_var += 1
            label_acc.append(0.0)
            continue
        if 0 < sum(correct) < g:
            mixed += 1
            for s, c in zip(result["scores"], correct, strict=True):
                if s is not None:
                    pooled_scores.append(s)
                    pooled_labels.append(c)
        rewards = result.get("rewards")
        if rewards is not None:
            reward_acc.append(sum(int(w) == int(c) for w, c in zip(rewards, correct, strict=True)) / g)
            zero_var += len(set(rewards)) <= 1
        label_acc.append(float(bool(result.get("label_correct"))))
    chosen = [_selected_correct(r, name, g) for r in records]
    accuracy = [float(c) for c, _ in chosen]
    majority = [float(_selected_correct(r, "majority", g)[0]) for r in records] if "majority" in records[0][
        "signals"] else None
    compute: dict[str, float] = {}
    probe = SIGNALS[name].probe
    if probe:
        for key2 in ("calls", "prompt_tokens", "completion_tokens", "seconds"):
            values = [r.get("compute", {}).get(probe, {}).get(key2, 0) for r in records]
            compute[key2] = sum(values) / len(values)
        if name == "soft_cat":  # its references are cat's
            compute = {k: v + sum(r.get("compute", {}).get("cat", {}).get(k, 0) for r in records) / len(records)
                       for k, v in compute.items()}
    return {
        "signal": name,
        "g": g,
        "questions": len(records),
        "unavailable": unavailable,
        "unavailable_reasons": sorted({r["signals"][name][key]["unavailable"][:120] for r in records
                                       if r["signals"][name][key].get("unavailable")}),
        "auroc": auroc(pooled_scores, pooled_labels),
        "mixed_groups": mixed,
        "accuracy": _interval(accuracy),
        "vs_majority": paired_difference(accuracy, majority) if majority is not None else None,
        "reward_accuracy": _interval(reward_acc),
        "label_accuracy": _interval(label_acc),
        "zero_variance": zero_var / len(records),
        "compute": compute,
    }


def _disagreement(records: list[dict[str, Any]], g: int) -> dict[str, Any] | None:
    rows = [r["disagreement"][str(g)] for r in records if str(g) in (r.get("disagreement") or {})]
    if not rows:
        return None
    differ = [d for d in rows if d["differs"]]
    return {
        "questions": len(rows),
        "rate": len(differ) / len(rows),
        "differ": len(differ),
        "cat_right_when_differ": (sum(d["cat_correct"] for d in differ) / len(differ)) if differ else None,
        "majority_right_when_differ": (sum(d["majority_correct"] for d in differ) / len(differ)) if differ else None,
    }


def _cap(records: list[dict[str, Any]]) -> dict[str, Any]:
    capped = [(c, ok) for r in records for c, ok in zip(r.get("rollout_capped") or [], r["rollout_correct"],
                                                        strict=False) if c is not None]
    hit = [ok for c, ok in capped if c]
    free = [ok for c, ok in capped if not c]
    return {"rollouts": len(capped), "capped_share": (len(hit) / len(capped)) if capped else None,
            "accuracy_capped": (sum(hit) / len(hit)) if hit else None,
            "accuracy_uncapped": (sum(free) / len(free)) if free else None,
            "rollout_accuracy": _interval([float(ok) for r in records for ok in r["rollout_correct"]])}


def summarize_signals(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary of signal records (pure): ``{"groups": [{dataset, g, cap, disagreement, rows: [...]}, ...]}``,
    datasets in first-seen order, G ascending, signals in registry order."""
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_dataset.setdefault(r.get("dataset") or "", []).append(r)
    groups = []
    for dataset, recs in by_dataset.items():
        gs = sorted({int(g) for r in recs for g in r["gs"]})
        names = [n for n in SIGNALS if n in recs[0]["signals"]]
        cap = _cap(recs)
        for g in gs:
            rows = [_cell(recs, name, g) for name in names]
            rollouts = [r.get("rollout_usage", {}) for r in recs]
            share = g / max(max(r["gs"]) for r in recs)
            groups.append({
                "dataset": dataset, "g": g, "questions": len(recs), "cap": cap,
                "rollout_compute": {k: share * sum(u.get(k, 0) for u in rollouts) / len(recs)
                                    for k in ("calls", "prompt_tokens", "completion_tokens", "seconds")},
                "disagreement": _disagreement(recs, g), "rows": rows,
            })
    return {"groups": groups}


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary (one block per dataset and G)."""

    def pct(x: float | None) -> str:
        return "  —  " if x is None else f"{100 * x:5.1f}"

    lines = []
    for group in summary["groups"]:
        cap = group["cap"]
        lines.append(f"\n{group['dataset']}  G={group['g']}  questions={group['questions']}  capped rollouts="
                     f"{pct(cap['capped_share'])}%")
        lines.append(f"  {'signal':15s} {'AUROC':>6s} {'acc':>6s} {'±95%':>6s} {'vs maj':>7s} {'reward':>6s} "
                     f"{'label':>6s} {'0-var':>6s} {'calls':>6s} {'s/q':>6s}  unavailable")
        for row in group["rows"]:
            acc, vs = row["accuracy"], row["vs_majority"] or {}
            half = None if acc["hi"] is None else (acc["hi"] - acc["mean"])
            diff = "   —   " if vs.get("mean") is None else f"{100 * vs['mean']:+7.1f}"
            au = "  —   " if row["auroc"] is None else f"{row['auroc']:6.3f}"
            lines.append(f"  {row['signal']:15s} {au} {pct(acc['mean'])} {pct(half)} {diff} "
                         f"{pct(row['reward_accuracy']['mean'])} {pct(row['label_accuracy']['mean'])} "
                         f"{pct(row['zero_variance'])} {row['compute'].get('calls', 0):6.1f} "
                         f"{row['compute'].get('seconds', 0):6.1f}  {row['unavailable'] or ''}")
        d = group["disagreement"]
        if d:
            lines.append(f"  CaT vs majority: differ {pct(d['rate'])}% ({d['differ']}); then CaT right "
                         f"{pct(d['cat_right_when_differ'])}%, majority right {pct(d['majority_right_when_differ'])}%")
    return "\n".join(lines)


def plot_signals(summary: dict[str, Any], path: str | Path, g: int | None = None) -> Path | None:
    """Selection accuracy and AUROC against the dataset (difficulty, in the order the data came), one line per
    signal, 95 % intervals as error bars; at ``g`` (default: the largest G)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summary["groups"]
    if not groups:
        return None
    g = g or max(x["g"] for x in groups)
    chosen = [x for x in groups if x["g"] == g]
    datasets = [x["dataset"] for x in chosen]
    names = [row["signal"] for row in chosen[0]["rows"]]
    fig, (ax_acc, ax_auc) = plt.subplots(1, 2, figsize=(13, 5))
    xs = list(range(len(datasets)))
    for k, name in enumerate(names):
        rows = [next(r for r in x["rows"] if r["signal"] == name) for x in chosen]
        offset = (k - len(names) / 2) * 0.02
        acc = [r["accuracy"]["mean"] for r in rows]
        err = [0.0 if r["accuracy"]["hi"] is None else r["accuracy"]["hi"] - r["accuracy"]["mean"] for r in rows]
        style = {"linestyle": "--"} if name in ("gold", "random") else {}
        ax_acc.errorbar([x + offset for x in xs], acc, yerr=err, marker="o", capsize=3, label=name, **style)
        auc = [r["auroc"] for r in rows]
        if any(a is not None for a in auc):
            ax_auc.plot([x + offset for x, a in zip(xs, auc, strict=True) if a is not None],
                        [a for a in auc if a is not None], marker="o", label=name, **style)
    for ax, title in ((ax_acc, f"selection accuracy at G={g} (95% interval)"),
                      (ax_auc, f"AUROC vs gold, mixed groups, G={g}")):
        ax.set_xticks(xs, datasets, rotation=20)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_auc.axhline(0.5, color="grey", linewidth=0.8)
    ax_acc.set_ylabel("accuracy")
    (ax_auc if ax_auc.get_legend_handles_labels()[0] else ax_acc).legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics: ``<dataset>.G<g>.<signal>.<metric>``."""
    out: dict[str, float] = {}
    for group in summary["groups"]:
        prefix = f"{group['dataset']}.G{group['g']}"
        for row in group["rows"]:
            base = f"{prefix}.{row['signal']}"
            for key, value in (("auroc", row["auroc"]), ("accuracy", row["accuracy"]["mean"]),
                               ("reward_accuracy", row["reward_accuracy"]["mean"]),
                               ("label_accuracy", row["label_accuracy"]["mean"]),
                               ("zero_variance", row["zero_variance"]), ("unavailable", row["unavailable"])):
                if value is not None:
                    out[f"{base}.{key}"] = float(value)
        if group["disagreement"]:
            out[f"{prefix}.cat_vs_majority.differ"] = group["disagreement"]["rate"]
    return {k.replace("/", "_").replace(" ", "_"): v for k, v in out.items()}


__all__ = ["auroc", "format_table", "plot_signals", "rank_auroc", "summarize_signals", "summary_metrics"]
