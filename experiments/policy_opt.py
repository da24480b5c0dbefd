"""Compute as Teacher for prompts: optimize the policy program with CaT's reference as the metric, no labels.

Arms, on generated arithmetic the embedded model is partly right on (one- and two-digit additions/subtractions,
operands 1-17: single-rollout accuracy ~0.25): ``unoptimized`` (the solve program as it ships), ``cat`` (its prompt
optimized by ``BootstrapFewShot`` with the CaT metric: demos whose answer agrees with the frozen anchor's reference,
synthesized from G samples of the base program), ``majority`` (the same with the majority answer of those G samples)
and ``gold`` (the gold answers: the labelled ceiling). Labels are withheld in training for ``cat`` and ``majority``.

``run`` optimizes one (arm, seed) with ``cat-dspy optimize --target policy`` (the seed draws the training questions
and seeds the sampling), evaluates the saved program on the held-out questions with ``cat-dspy eval --program``
(G rollouts per question: single-rollout accuracy is the share right, majority@G the majority answer) and writes one
small JSON file ``experiments/results/policy-opt/<arm>-seed<seed>.json``: configuration and hash, git commit, per
question correctness, the demos the optimizer kept (and, for the report only, whether each demo's answer is right),
and the LM calls and wall seconds of each stage. A finished (arm, seed) with the same configuration hash is skipped;
an interrupted one resumes (the optimize run folder's DSPy cache and reference JSONL, eval's run directory).

``aggregate`` compares the arms: mean over seeds ± standard error across seeds with a 95 % interval, the paired
differences against ``unoptimized`` (by question: per-question values averaged over seeds; by seed), ``cat`` against
``majority``, and the share of the gold metric's gain that the CaT metric recovers (with a 95 % bootstrap interval
over questions); writes ``summary.json``, ``summary.md`` and ``policy_opt.png``, and logs an MLflow parent run with
a child per arm.

Run:
    python experiments/policy_opt.py run --arm cat --seed 0
    python experiments/policy_opt.py run --all --commit
    python experiments/policy_opt.py aggregate
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
_spec = importlib.util.spec_from_file_location("study", Path(__file__).with_name("study.py"))
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)

STUDY: dict[str, Any] = {
    "name": "policy-opt",
    "data": {"make": ["python", "experiments/make_arithmetic.py", "--out", "data/policy-opt/arith17", "--train", "40",
                      "--test", "100", "--low", "1", "--high", "17", "--seed", "0"],
             "train": "data/policy-opt/arith17/train.jsonl", "test": "data/policy-opt/arith17/test.jsonl"},
    "sampling": ["--max-tokens", "48", "--temperature", "0.7", "--extraction", "flexible"],
    "optimize": ["--train", "16", "--g", "4", "--optimizer", "bootstrap", "--budget", "1", "--demos", "3",
                 "--anchor-max-tokens", "64", "--anchor-temperature", "0.7", "--threads", "4"],
    "eval": {"g": 4, "limit": 80, "args": ["--num-threads", "8"]},
    "runtime": "llamacpp",
    "arms": {"unoptimized": None, "cat": "cat", "majority": "majority", "gold": "gold"},
    "seeds": [0, 1, 2],
}
BASE = "unoptimized"
LABELS = {"unoptimized": "unoptimized", "cat": "CaT metric", "majority": "majority metric", "gold": "gold metric"}


def run_config(arm: str, seed: int) -> dict[str, Any]:
    """Everything that determines one (arm, seed)'s result."""
    return {k: STUDY[k] for k in ("name", "data", "sampling", "optimize", "eval", "runtime")} | {
        "arm": arm, "metric": STUDY["arms"][arm], "seed": seed}


def result_path(arm: str, seed: int, results: Path = RESULTS) -> Path:
    return results / STUDY["name"] / f"{arm}-seed{seed}.json"


def optimize_argv(arm: str, seed: int, work: Path) -> list[str] | None:
    """The ``cat-dspy optimize --target policy`` command of one (arm, seed); None for the unoptimized arm. The
    label-free arms of a seed share one reference cache (the same G samples and reference per question)."""
    metric = STUDY["arms"][arm]
    if metric is None:
        return None
    return ["optimize", "--target", "policy", "--metric", metric, "--dataset", STUDY["data"]["train"],
            *STUDY["optimize"], *STUDY["sampling"], "--seed", str(seed), "--out", str(program_path(arm, seed, work)),
            "--cache", str(work / "references" / f"seed{seed}"), "--run-dir", str(work / f"{arm}-seed{seed}"),
            "--experiment", f"{STUDY['name']}-optimize", "--no-progress"]


def program_path(arm: str, seed: int, work: Path) -> Path:
    return work / "programs" / f"{arm}-seed{seed}.json"


def eval_argv(arm: str, seed: int, work: Path) -> list[str]:
    ev = STUDY["eval"]
    argv = ["eval", "--dataset", STUDY["data"]["test"], "--limit", str(ev["limit"]), "--g", str(ev["g"]),
            "--methods", "single,majority", *STUDY["sampling"], *ev["args"], "--seed", str(seed),
            "--run-dir", str(work / "eval" / f"{arm}-seed{seed}"), "--experiment", f"{STUDY['name']}-evals",
            "--no-progress", "--json"]
    if STUDY["arms"][arm] is not None:
        argv += ["--program", str(program_path(arm, seed, work))]
    return argv


def timed(argv: list[str]) -> float:
    start = time.time()
    study.execute(argv, STUDY["runtime"])
    return time.time() - start


def demo_report(program: Path, train: Path) -> list[dict[str, Any]]:
    """The demos the optimizer kept: question, response, the answer read, and (for this report only; no arm's
    optimizer saw it) whether that answer is the gold one."""
    from cat_dspy.datasets import load_dataset
    from cat_dspy.scoring.equivalence import equivalent
    from cat_dspy.scoring.extraction import extract_answer

    gold = {item.question: item.answer for item in load_dataset(str(train))}
    demos = json.loads(program.read_text())["rollout.generate"]["demos"]
    out = []
    for demo in demos:
        answer = extract_answer(demo["response"], "flexible")
        out.append({"question": demo["question"], "response": demo["response"], "answer": answer,
                    "right": equivalent(gold.get(demo["question"]), answer)})
    return out


def reference_report(folder: Path, train: Path) -> dict[str, Any] | None:
    """How often the label-free targets of the training questions are right (for this report only): the CaT
    reference's answer and the majority answer of the G samples, over the references of the seed."""
    from cat_dspy.datasets import load_dataset
    from cat_dspy.scoring.equivalence import equivalent
    from cat_dspy.scoring.extraction import extract_answer
    from cat_dspy.scoring.rewards import majority_answer

    files = sorted(folder.glob("policy-references-*.jsonl"))
    if not files:
        return None
    gold = {item.question: item.answer for item in load_dataset(str(train))}
    records = [json.loads(line)["value"] for f in files for line in f.read_text().splitlines() if line.strip()]
    cat = [equivalent(gold[r["question"]], extract_answer(r["reference"], "flexible")) for r in records]
    majority = [equivalent(gold[r["question"]], majority_answer([extract_answer(o, "flexible")
                                                                 for o in r["rollouts"]])[0]) for r in records]
    samples = [equivalent(gold[r["question"]], extract_answer(o, "flexible")) for r in records for o in r["rollouts"]]
    return {"questions": len(records), "cat_reference_right": sum(cat) / len(cat),
            "majority_right": sum(majority) / len(majority), "samples_right": sum(samples) / len(samples)}


def run_one(arm: str, seed: int, *, results: Path = RESULTS, work: Path | None = None, force: bool = False,
            commit: bool = False) -> Path:
    """Optimize (unless unoptimized) and evaluate one (arm, seed); write its result file. Skips a finished one."""
    from cat_dspy.evaluation.runner import RESULTS_FILE, record_usage
    from cat_dspy.jsonl_store import JsonlStore

    work = work or ROOT / "runs" / STUDY["name"]
    config = run_config(arm, seed)
    digest = study.config_hash(config)
    path = result_path(arm, seed, results)
    if path.is_file() and not force:
        if json.loads(path.read_text()).get("config_hash") == digest:
            print(f"{path}: finished, skipped")
            return path
        raise SystemExit(f"{path} was made with another configuration; move it away or pass --force")
    if not (ROOT / STUDY["data"]["test"]).is_file():
        command = [sys.executable if c == "python" else c for c in STUDY["data"]["make"]]
        subprocess.run(command, cwd=ROOT, check=True)
    started = time.time()
    optimize = optimize_argv(arm, seed, work)
    seconds = {"optimize": timed(optimize) if optimize else 0.0}
    seconds["eval"] = timed(eval_argv(arm, seed, work))
    from cat_dspy.datasets import load_dataset

    order = {item.id: i for i, item in enumerate(load_dataset(str(ROOT / STUDY["data"]["test"])))}
    run_dir = work / "eval" / f"{arm}-seed{seed}"
    records = sorted(JsonlStore(run_dir / RESULTS_FILE).load().values(), key=lambda r: order.get(r["id"], 0))
    eval_calls = sum(record_usage(r)["policy"]["calls"] for r in records)
    result: dict[str, Any] = {
        "study": STUDY["name"], "arm": arm, "seed": seed, "config": config, "config_hash": digest,
        "git": study.git_commit(), "started": started, "finished": time.time(),
        "finished_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commands": {"optimize": optimize, "eval": eval_argv(arm, seed, work)},
        "heldout": study.per_question(records, STUDY["eval"]["g"]), "seconds": seconds,
        "calls": {"eval": eval_calls},
    }
    if optimize:
        program = program_path(arm, seed, work)
        report = json.loads(program.with_name(program.stem + ".report.json").read_text())
        result["calls"] |= {f"optimize.{stage}": u["calls"] for stage, u in report["usage"].items()}
        result["optimize_seconds_by_stage"] = {stage: u["seconds"] for stage, u in report["usage"].items()}
        result["demos"] = demo_report(program, ROOT / STUDY["data"]["train"])
        result["train_base"] = report.get("train_base")
        if arm != "gold":
            result["references"] = reference_report(work / "references" / f"seed{seed}", ROOT / STUDY["data"]["train"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    print(f"{path}: written", flush=True)
    if commit:
        subprocess.run(["git", "add", str(path)], cwd=ROOT, check=True)
        subprocess.run(["git", "commit", "-q", "-m", f"policy-opt: {arm} seed {seed}", "--", str(path)], cwd=ROOT,
                       check=True)
    return path


# --- aggregation -----------------------------------------------------------------------------------------------

METRICS = {"rollouts": "single-rollout accuracy", "majority": "majority@G"}


def load_results(folder: Path) -> dict[str, dict[int, dict[str, Any]]]:
    arms: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(folder.glob("*-seed*.json")):
        result = json.loads(path.read_text())
        arms.setdefault(result["arm"], {})[int(result["seed"])] = result
    return {a: arms[a] for a in STUDY["arms"] if a in arms}


def by_question(runs: dict[int, dict[str, Any]], metric: str) -> dict[str, float]:
    return study._by_question(runs, metric)


def recovered(cat: list[float], gold: list[float], base: list[float], draws: int = 2000,
              seed: int = 0) -> dict[str, float | None]:
    """(cat − base) / (gold − base) over paired per-question values, with a 95 % percentile interval from resampling
    the questions (None where the gold gain is 0).

    Examples:
        >>> recovered([1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0])["share"]
        0.6666666666666666
    """
    def share(idx: list[int]) -> float | None:
        gain = sum(gold[i] - base[i] for i in idx)
        return None if gain == 0 else sum(cat[i] - base[i] for i in idx) / gain

    n = len(cat)
    point = share(list(range(n)))
    rng = random.Random(seed)
    samples = sorted(s for _ in range(draws) if (s := share([rng.randrange(n) for _ in range(n)])) is not None)
    if point is None or len(samples) < draws // 2:
        return {"share": point, "lo": None, "hi": None, "n": n}
    return {"share": point, "lo": samples[int(0.025 * len(samples))], "hi": samples[int(0.975 * len(samples)) - 1],
            "n": n}


def compare(arms: dict[str, dict[int, dict[str, Any]]], metric: str) -> list[dict[str, Any]]:
    """Per arm: mean over seeds ± se across seeds (95 % interval), the paired differences against ``unoptimized``
    (and ``cat`` against ``majority``) by question and by seed."""
    from cat_dspy.scoring.stats import interval95, mean_stderr, paired_difference

    rows = []
    for arm, runs in arms.items():
        seeds = study._seed_accuracy(runs, metric)
        mean, se = mean_stderr(list(seeds.values()))
        lo, hi = interval95(mean, se, len(seeds))
        row: dict[str, Any] = {"arm": arm, "metric": metric, "seeds": sorted(seeds), "per_seed": seeds, "mean": mean,
                               "se_seeds": se, "lo": lo, "hi": hi, "questions": len(by_question(runs, metric))}
        for ref in (BASE, "majority"):
            if ref == arm or ref not in arms or (ref == "majority" and arm != "cat"):
                continue
            mine, theirs = by_question(runs, metric), by_question(arms[ref], metric)
            ids = sorted(set(mine) & set(theirs))
            row[f"vs_{ref}_by_question"] = paired_difference([mine[q] for q in ids], [theirs[q] for q in ids])
            ref_seeds = study._seed_accuracy(arms[ref], metric)
            both = sorted(set(seeds) & set(ref_seeds))
            row[f"vs_{ref}_by_seed"] = paired_difference([seeds[s] for s in both], [ref_seeds[s] for s in both])
        rows.append(row)
    return rows


def cost(runs: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Mean per seed: LM calls of the optimization (references, train baseline, compile) and of the held-out eval,
    and wall seconds of each."""
    from cat_dspy.scoring.stats import mean_stderr

    opt_calls = [sum(v for k, v in r["calls"].items() if k.startswith("optimize.")) for r in runs.values()]
    ref_calls = [r["calls"].get("optimize.references", 0) for r in runs.values()]
    return {"optimize_calls": mean_stderr(opt_calls)[0], "references_calls": mean_stderr(ref_calls)[0],
            "eval_calls": mean_stderr([r["calls"]["eval"] for r in runs.values()])[0],
            "optimize_seconds": mean_stderr([r["seconds"]["optimize"] for r in runs.values()])[0],
            "eval_seconds": mean_stderr([r["seconds"]["eval"] for r in runs.values()])[0]}


def _cell(d: dict[str, Any] | None) -> str:
    return study._cell(d)


def markdown(tables: dict[str, list[dict[str, Any]]], shares: dict[str, Any], costs: dict[str, Any],
             arms: dict[str, dict[int, dict[str, Any]]]) -> str:
    g = STUDY["eval"]["g"]
    lines = [f"| arm (seeds) | single-rollout accuracy | majority@{g} | demos right (of kept) | LM calls: optimize "
             "(references) / eval | wall s: optimize / eval |", "|---|---|---|---|---|---|"]
    for i, row in enumerate(tables["rollouts"]):
        arm = row["arm"]
        maj = tables["majority"][i]
        cells = []
        for r in (row, maj):
            c = f"{r['mean']:.3f} ± {r['se_seeds']:.3f}"
            if r.get("lo") is not None:
                c += f" [{r['lo']:.3f}, {r['hi']:.3f}]"
            cells.append(c)
        demos = [d for run in arms[arm].values() for d in run.get("demos", [])]
        right = f"{sum(d['right'] for d in demos)}/{len(demos)}" if demos else "–"
        c = costs[arm]
        lines.append(f"| {LABELS[arm]} ({', '.join(map(str, row['seeds']))}) | {cells[0]} | {cells[1]} | {right} | "
                     f"{c['optimize_calls']:.0f} ({c['references_calls']:.0f}) / {c['eval_calls']:.0f} | "
                     f"{c['optimize_seconds']:.0f} / {c['eval_seconds']:.0f} |")
    lines += ["", "| difference | metric | paired by seed | paired by question |", "|---|---|---|---|"]
    for metric, rows in tables.items():
        for row in rows:
            for ref in (BASE, "majority"):
                if f"vs_{ref}_by_question" in row:
                    lines.append(f"| {LABELS[row['arm']]} − {LABELS[ref]} | {METRICS[metric]} | "
                                 f"{_cell(row[f'vs_{ref}_by_seed'])} | {_cell(row[f'vs_{ref}_by_question'])} |")
    lines += ["", "| share of the gold metric's gain recovered by the CaT metric | value [95 % bootstrap interval over "
              "questions] |", "|---|---|"]
    for metric, s in shares.items():
        value = "–" if s["share"] is None else f"{s['share']:.2f}"
        if s.get("lo") is not None:
            value += f" [{s['lo']:.2f}, {s['hi']:.2f}]"
        lines.append(f"| {METRICS[metric]} | {value} (n={s['n']}) |")
    return "\n".join(lines) + "\n"


def plot(tables: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(fig)
    for k, (metric, rows) in enumerate(tables.items()):
        ax = fig.add_subplot(1, 2, k + 1)
        for i, row in enumerate(rows):
            values = list(row["per_seed"].values())
            ax.scatter([i] * len(values), values, color="grey", s=12, zorder=3)
            ax.errorbar([i], [row["mean"]], yerr=[row["se_seeds"] or 0.0], marker="o", capsize=4, zorder=4)
        ax.set_xticks(range(len(rows)), [LABELS[r["arm"]] for r in rows])
        ax.set_ylabel(f"held-out {METRICS[metric]}")
        ax.grid(alpha=0.3)
    fig.suptitle("policy program optimized by BootstrapFewShot, by metric (embedded SmolLM2-135M; dots: seeds)")
    fig.savefig(path, bbox_inches="tight")
    return path


def log_mlflow(arms: dict[str, dict[int, dict[str, Any]]], tables: dict[str, list], shares: dict[str, Any],
               costs: dict[str, Any], files: list[Path]) -> str:
    import mlflow

    from cat_dspy import tracking

    with tracking.run(STUDY["name"], run_name=f"study {STUDY['name']}") as parent:
        tracking.log_params({"study": STUDY["name"], "arms": ",".join(arms), "g": STUDY["eval"]["g"],
                             "held_out": STUDY["eval"]["limit"], "optimize": " ".join(STUDY["optimize"])})
        for f in files:
            mlflow.log_artifact(str(f))
        mlflow.log_metrics({f"recovered/{m}": s["share"] for m, s in shares.items() if s["share"] is not None})
        for arm, runs in arms.items():
            start, end = min(r["started"] for r in runs.values()), max(r["finished"] for r in runs.values())
            with tracking.timed_run(arm, start, end, nested=True, tags={"cat_dspy.study": STUDY["name"]}):
                tracking.log_params({"arm": arm, "metric": STUDY["arms"][arm], "seeds": ",".join(map(str, runs))})
                values = {f"cost/{k}": v for k, v in costs[arm].items()}
                for metric, rows in tables.items():
                    row = next(r for r in rows if r["arm"] == arm)
                    values |= {f"{metric}/accuracy": row["mean"], f"{metric}/se_seeds": row["se_seeds"]}
                    d = row.get(f"vs_{BASE}_by_question") or {}
                    values |= {f"{metric}/vs_{BASE}": d.get("mean"), f"{metric}/vs_{BASE}_se": d.get("se")}
                mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None})
        return parent.info.run_id


def aggregate(*, results: Path = RESULTS, log: bool = True) -> dict[str, Any]:
    folder = results / STUDY["name"]
    arms = load_results(folder)
    if not arms:
        raise SystemExit(f"{folder}: no result file yet (python experiments/policy_opt.py run ...)")
    tables = {m: compare(arms, m) for m in METRICS}
    shares = {}
    if all(a in arms for a in (BASE, "cat", "gold")):
        for metric in METRICS:
            per = {a: by_question(arms[a], metric) for a in (BASE, "cat", "gold")}
            ids = sorted(set.intersection(*(set(p) for p in per.values())))
            shares[metric] = recovered(*([per[a][q] for q in ids] for a in ("cat", "gold", BASE)))
    costs = {arm: cost(runs) for arm, runs in arms.items()}
    summary = {"study": STUDY["name"], "config": {k: STUDY[k] for k in ("data", "sampling", "optimize", "eval")},
               "arms": {a: sorted(r) for a, r in arms.items()}, "tables": tables, "recovered": shares, "cost": costs,
               "references": {a: {s: r.get("references") for s, r in runs.items()} for a, runs in arms.items()
                              if any(r.get("references") for r in runs.values())}}
    summary_path = folder / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=1))
    md = folder / "summary.md"
    md.write_text(markdown(tables, shares, costs, arms))
    png = plot(tables, folder / "policy_opt.png")
    print(md.read_text())
    if log:
        print(f"MLflow run {log_mlflow(arms, tables, shares, costs, [summary_path, md, png])}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="optimize and evaluate (arm, seed) pairs; finished ones are skipped")
    run.add_argument("--arm", action="append", choices=list(STUDY["arms"]))
    run.add_argument("--seed", type=int, action="append")
    run.add_argument("--all", action="store_true", help="every arm and seed, seed by seed")
    run.add_argument("--force", action="store_true")
    run.add_argument("--commit", action="store_true", help="git commit each result file as soon as it is written")
    agg = sub.add_parser("aggregate", help="tables, plot and MLflow runs from the result files")
    agg.add_argument("--results", type=Path, default=RESULTS)
    agg.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "aggregate":
        aggregate(results=args.results, log=not args.no_mlflow)
        return 0
    if not args.arm and not args.all:
        parser.error("name --arm ARM (and --seed S), or --all")
    for seed in args.seed or STUDY["seeds"]:
        for arm in args.arm or list(STUDY["arms"]):
            run_one(arm, seed, force=args.force, commit=args.commit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
