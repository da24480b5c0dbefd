"""Paired before/after comparison of two `cat-dspy eval` runs on the same questions (e.g. a policy before and after
CaT-RL): per (method, G), accuracy before, after, and the paired difference with its standard error; the same for
the mean rollout accuracy (the policy's expected single-sample accuracy).

Run: python experiments/before_after.py runs/arith-rl/before runs/arith-rl/after [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cat_dspy.evaluation.runner import RESULTS_FILE
from cat_dspy.jsonl_store import JsonlStore
from cat_dspy.scoring.stats import mean_stderr


def paired(before: dict, after: dict) -> list[dict]:
    """One row per (method, G) over the question ids both runs finished (gold-graded, verifiable runs)."""
    ids = sorted(set(before) & set(after))
    if not ids:
        raise SystemExit("the two runs share no finished question")
    rows = []
    keys = [(r["method"], r["g"]) for r in before[ids[0]]["results"]]
    for method, g in [*keys, ("rollouts", max(g for _, g in keys))]:
        def score(record: dict, method: str = method, g: int = g) -> float:
            if method == "rollouts":
                return sum(record["rollout_correct"][:g]) / g
            result = next(r for r in record["results"] if (r["method"], r["g"]) == (method, g))
            return float(bool(result["correct"]))

        b, a = [score(before[i]) for i in ids], [score(after[i]) for i in ids]
        stats = {name: mean_stderr(v) for name, v in (("before", b), ("after", a),
                                                       ("difference", [y - x for x, y in zip(b, a, strict=True)]))}
        rows.append({"method": method, "g": g, "n": len(ids), **{k: {"mean": m, "se": se} for k, (m, se) in
                                                                 stats.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="run directory of the first eval (holds results.jsonl)")
    parser.add_argument("after", type=Path, help="run directory of the second eval")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    args = parser.parse_args()
    rows = paired(*(JsonlStore(d / RESULTS_FILE).load() for d in (args.before, args.after)))
    if args.json:
        print("\n".join(json.dumps(r) for r in rows))
        return
    print(f"{'method':<10}{'G':>3}{'n':>5}  {'before':>15}  {'after':>15}  {'after - before':>15}")
    for r in rows:
        cells = [f"{r[k]['mean']:.3f} ± {r[k]['se']:.3f}" for k in ("before", "after", "difference")]
        print(f"{r['method']:<10}{r['g']:>3}{r['n']:>5}  " + "  ".join(f"{c:>15}" for c in cells))


if __name__ == "__main__":
    main()
