"""Test-time analyses from ``cat-dspy eval`` results: accuracy vs G for every selection method and
CaT; how often CaT's answer differs from majority vote and from self-selected best-of-N, and its accuracy (and
theirs) on those questions; questions CaT answers right while all G rollouts were wrong.

Input: run directories of verifiable evals (their ``results.jsonl``) or compact copies written by ``--save``
(the same records without the rollout and response texts: small enough to commit under experiments/results/).

Run:
    cat-dspy eval --dataset data/study/arith12/test.jsonl --g 1,2,4,8,16 \
        --methods single,majority,self_bon,min_ppl,cat,cat_q --max-tokens 48 --temperature 0.7 \
        --anchor-max-tokens 64 --anchor-temperature 0.7 --extraction flexible --num-threads 16 --seed 0 \
        --run-dir runs/study/testtime-seed0
    python experiments/testtime.py runs/study/testtime-seed0 --save experiments/results/testtime/seed0.jsonl \
        --out experiments/results/testtime
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cat_dspy.evaluation.grading import grade_answer
from cat_dspy.evaluation.report import plot, summarize
from cat_dspy.evaluation.runner import RESULTS_FILE
from cat_dspy.jsonl_store import JsonlStore
from cat_dspy.scoring.stats import mean_stderr

DROPPED = ("rollouts", "question")  # long texts left out of the compact copy
SYNTHESIS = ("cat", "cat_q")
SELECTION = ("majority", "self_bon")


def load_records(path: Path) -> list[dict[str, Any]]:
    """Question records from a run directory (``results.jsonl``) or a compact ``.jsonl`` copy."""
    file = path / RESULTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise SystemExit(f"{file}: no eval results")
    return list(JsonlStore(file).load().values())


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its long texts (rollouts, responses); every field the analyses read is kept.

    Examples:
        >>> compact({"id": "q", "rollouts": ["long"], "results": [{"method": "cat", "text": "long", "answer": "3"}]})
        {'id': 'q', 'results': [{'method': 'cat', 'answer': '3'}]}
    """
    out = {k: v for k, v in record.items() if k not in DROPPED}
    out["results"] = [{k: v for k, v in r.items() if k != "text"} for r in record["results"]]
    return out


def _result(record: dict[str, Any], method: str, g: int) -> dict[str, Any] | None:
    return next((r for r in record["results"] if r["method"] == method and r["g"] == g), None)


def _same(a: str | None, b: str | None, equivalence: str) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return grade_answer(a, b, mode=equivalence)


def disagreement(records: Sequence[dict[str, Any]], method: str, other: str, g: int,
                 equivalence: str = "symbolic") -> dict[str, Any] | None:
    """How often ``method``'s answer differs from ``other``'s at G (both without an answer: agreement), and the
    accuracy of each on the questions where they differ; None when either was not evaluated at G.

    Examples:
        >>> def rec(cat, bon, gold):
        ...     return {"results": [{"method": "cat", "g": 4, "answer": cat, "correct": cat == gold},
        ...                         {"method": "self_bon", "g": 4, "answer": bon, "correct": bon == gold}]}
        >>> d = disagreement([rec("3", "3", "3"), rec("4", "5", "4"), rec("6", "7", "7")], "cat", "self_bon", 4,
        ...                  "string")
        >>> d["n"], d["n_disagree"], round(d["disagree_rate"], 3)
        (3, 2, 0.667)
        >>> d["accuracy_when_disagree"], d["other_accuracy_when_disagree"]
        (0.5, 0.5)
    """
    pairs = [(_result(r, method, g), _result(r, other, g)) for r in records]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return None
    differ = [(a, b) for a, b in pairs if not _same(a.get("answer"), b.get("answer"), equivalence)]
    mine = mean_stderr([float(bool(a["correct"])) for a, _ in differ])
    theirs = mean_stderr([float(bool(b["correct"])) for _, b in differ])
    return {"method": method, "other": other, "g": g, "n": len(pairs), "n_disagree": len(differ),
            "disagree_rate": len(differ) / len(pairs), "accuracy_when_disagree": mine[0],
            "accuracy_when_disagree_se": mine[1], "other_accuracy_when_disagree": theirs[0]}


def analyses(records: Sequence[dict[str, Any]], equivalence: str = "symbolic") -> dict[str, Any]:
    """Accuracy vs G for every method (:func:`cat_dspy.evaluation.report.summarize`'s rows), CaT's disagreement
    with majority and self-BoN at each G, and right-when-all-rollouts-wrong (from the same rows)."""
    rows = summarize(records)
    gs = sorted({r["g"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    curves = {m: {r["g"]: {"accuracy": r["accuracy"], "se": r["stderr"]} for r in rows if r["method"] == m}
              for m in methods}
    curves["rollouts (expected single sample)"] = {
        r["g"]: {"accuracy": r["rollout_accuracy"], "se": r["rollout_stderr"]} for r in rows
        if r["method"] == methods[0] and r.get("rollout_accuracy") is not None}
    disagree = [d for m in SYNTHESIS if m in methods for other in SELECTION if other in methods for g in gs
                if (d := disagreement(records, m, other, g, equivalence)) is not None]
    all_wrong = [{k: r.get(k) for k in ("method", "g", "n", "all_wrong_rate", "right_when_all_wrong",
                                        "right_given_all_wrong")} for r in rows if r["method"] in SYNTHESIS]
    return {"questions": len(records), "gs": gs, "methods": methods, "accuracy_vs_g": curves,
            "disagreement": disagree, "all_rollouts_wrong": all_wrong, "rows": rows}


def print_report(result: dict[str, Any]) -> None:
    gs = result["gs"]
    print(f"{result['questions']} questions; accuracy ± se by G")
    print(f"{'method':<36}" + "".join(f"{'G=' + str(g):>16}" for g in gs))
    for method, curve in result["accuracy_vs_g"].items():
        cells = [f"{curve[g]['accuracy']:.3f} ± {curve[g]['se']:.3f}" if g in curve and curve[g]["accuracy"]
                 is not None else "–" for g in gs]
        print(f"{method:<36}" + "".join(f"{c:>16}" for c in cells))
    print("\ndisagreement (answers differ) and accuracy on those questions")
    for d in result["disagreement"]:
        acc = "–" if d["accuracy_when_disagree"] is None else (
            f"{d['method']} {d['accuracy_when_disagree']:.3f} vs {d['other']} {d['other_accuracy_when_disagree']:.3f}")
        print(f"  {d['method']} vs {d['other']:<9} G={d['g']:<3} {d['n_disagree']:>4}/{d['n']:<4} "
              f"({d['disagree_rate']:.3f})  {acc}")
    print("\nall G rollouts wrong: share of questions, and CaT right on them (share of all / of those)")
    for r in result["all_rollouts_wrong"]:
        if r["all_wrong_rate"] is None:
            continue
        given = "–" if r["right_given_all_wrong"] is None else f"{r['right_given_all_wrong']:.3f}"
        print(f"  {r['method']:<6} G={r['g']:<3} all wrong {r['all_wrong_rate']:.3f}  "
              f"right {r['right_when_all_wrong']:.3f} / {given}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="eval run directories or compact .jsonl copies")
    parser.add_argument("--equivalence", default="symbolic", choices=("symbolic", "string"))
    parser.add_argument("--save", type=Path, default=None,
                        help="write the records (of one input) as a compact .jsonl to commit")
    parser.add_argument("--out", type=Path, default=None, help="folder for testtime.json and accuracy_vs_g.png")
    args = parser.parse_args(argv)
    records = [r for path in args.inputs for r in load_records(path)]
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise SystemExit("the inputs share question ids: give one eval (one seed) at a time")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text("".join(json.dumps(compact(r)) + "\n" for r in records))
        print(f"{args.save}: {len(records)} records")
    result = analyses(records, args.equivalence)
    print_report(result)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "testtime.json").write_text(json.dumps(result, indent=1, default=str))
        plot(result["rows"], args.out / "accuracy_vs_g.png", title=f"{len(records)} questions")
        print(f"{args.out / 'testtime.json'}\n{args.out / 'accuracy_vs_g.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
