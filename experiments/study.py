"""The CaT-RL study: train and evaluate arms on one task, steps and seeds; aggregate the result files.

``run`` trains one (arm, seed) with its recipe (``cat-dspy train``: GRPO; ``command: sft`` in the arm: ``cat-dspy
sft``, CaT-SFT; ``recipe: null``: no training, the initial policy), evaluates the policy on the held-out questions
with ``cat-dspy eval``, and writes one small JSON file ``experiments/results/<study>/<arm>-seed<seed>.json``: the
configuration and its hash, the git commit, the held-out correctness of every question (per method at the largest G,
and the share of the G rollouts that are right), the summary rows, and a training-curve summary (reward, or loss for
SFT) from TRL's ``trainer_state.json``. A finished (arm, seed) whose result file has the same configuration hash is
skipped; a training stopped part-way resumes from its last whole checkpoint (``cat-dspy train`` and ``sft``
auto-resume from ``output_dir``) and an eval stopped part-way from its run directory.

``aggregate`` reads whatever result files exist and prints the comparison: per arm, held-out accuracy (mean over
seeds ± standard error across seeds), and the paired differences against ``base`` and ``majority_rl`` (by question,
over the questions every seed of both arms answered, and by seed where both arms share seeds), each with its
standard error and 95 % interval (:mod:`cat_dspy.scoring.stats`); it writes ``summary.json`` and a plot (held-out
accuracy per arm; reward vs step) and logs one MLflow parent run with a child per arm.

Run:
    python experiments/study.py run --study experiments/recipes/study_arith.yaml --arm base --seed 0
    python experiments/study.py run --study experiments/recipes/study_arith.yaml --all [--commit]
    python experiments/study.py aggregate --study experiments/recipes/study_arith.yaml
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cat_dspy.datasets import load_dataset
from cat_dspy.evaluation.report import summarize
from cat_dspy.evaluation.runner import RESULTS_FILE
from cat_dspy.jsonl_store import JsonlStore
from cat_dspy.scoring.stats import detectable_difference, interval95, mean_stderr, paired_difference, pairs_for_power

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
EFFECT = 0.05
"""The difference in held-out accuracy a study should be able to detect (5 points): the seeds it needs, at the
measured between-seed spread, are reported beside the seeds that ran."""
REFERENCES = ("base", "majority_rl")
"""The arms every other arm is compared with, unless the study file names its own (``references:``)."""
KEEP_CHECKPOINTS = 2
"""Checkpoints a training keeps (``--save_total_limit``; one of the 135M model is ~1.55 GB: fp32 weights and Adam's two
moments): the eval reads the final model, a resume only the last whole checkpoint; two, so that one cut off by a crash
leaves a whole one behind.
It is storage, not configuration: not in the hash, so results made before it still count."""
COMMANDS = ("train", "sft")  # an arm's `command:` (default train): the cat-dspy command its recipe is for
CURVE_KEYS = ("reward", "loss", "reward_std", "frac_reward_zero_std", "completions/mean_length",
              "completions/clipped_ratio", "entropy", "cat/synthesis_extracted", "cat/majority_disagreement",
              "reward_accuracy", "label_accuracy")
LABEL_KEYS = ("reward_accuracy", "label_accuracy")
"""The reward's label metrics (``<prefix>/reward_accuracy``, logged while training with ``label_metrics``), kept under
their bare names so that the arms' curves compare."""


def load_study(path: str | Path) -> dict[str, Any]:
    """A study file (``experiments/recipes/study_*.yaml``), checked: a name, data.train/test, eval, arms."""
    study = yaml.safe_load(Path(path).read_text())
    missing = [k for k in ("name", "data", "eval", "arms") if k not in (study or {})]
    if missing:
        raise SystemExit(f"{path}: missing {', '.join(missing)}")
    for arm, spec in study["arms"].items():
        if "seeds" not in spec or "recipe" not in spec:
            raise SystemExit(f"{path}: arm {arm!r} needs 'recipe' (null: no training) and 'seeds'")
        if spec.get("command", "train") not in COMMANDS:
            raise SystemExit(f"{path}: arm {arm!r}: command {spec['command']!r} is not one of {', '.join(COMMANDS)}")
        if not isinstance(spec.get("args", []), list):
            raise SystemExit(f"{path}: arm {arm!r}: args must be a list of flags, got {spec['args']!r}")
    unknown = [ref for ref in study.get("references", []) if ref not in study["arms"]]
    if unknown:
        raise SystemExit(f"{path}: references {unknown} are not arms of the study ({', '.join(study['arms'])})")
    return study


def runtime(study: dict[str, Any]) -> str:
    """The in-process runtime of the embedded model in every run of the study (``CAT_DSPY_RUNTIME``): the study
    file's ``runtime:``, else ``torch`` — the runtime of the study files written before llama.cpp became the default
    CPU runtime, so their results stay comparable with new ones (the trained arms' checkpoints run on torch too).

    Examples:
        >>> runtime({}), runtime({"runtime": "llamacpp"})
        ('torch', 'llamacpp')
    """
    return study.get("runtime", "torch")


def run_config(study: dict[str, Any], arm: str, seed: int) -> dict[str, Any]:
    """Everything that determines one (arm, seed)'s result: the data, eval settings, the training recipe's text
    (and the runtime, where the study file names one: see :func:`runtime`)."""
    spec = study["arms"][arm]
    recipe = spec["recipe"]
    config = {"study": study["name"], "arm": arm, "seed": seed, "data": study["data"], "eval": study["eval"],
              "recipe": recipe, "recipe_text": (ROOT / recipe).read_text() if recipe else None}
    if "runtime" in study:
        config["runtime"] = study["runtime"]
    for key in ("command", "args"):  # hashed only where named, so older arms' hashes stay those of their files
        if key in spec:
            config[key] = spec[key]
    return config


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a run configuration.

    Examples:
        >>> config_hash({"a": 1, "b": [2]}) == config_hash({"b": [2], "a": 1})
        True
    """
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def git_commit() -> dict[str, Any]:
    """The commit the code ran at, the library's tree at it (``code``: unchanged by result-file commits, so a study
    whose runs commit their results still reads as one code version), and whether the library had changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None, "code": git("rev-parse", "HEAD:cat_dspy") or None,
            "dirty": bool(git("status", "--porcelain", "--", "cat_dspy"))}


def result_path(study: dict[str, Any], arm: str, seed: int, results: Path = RESULTS) -> Path:
    return results / study["name"] / f"{arm}-seed{seed}.json"


def references_path(result: Path) -> Path:
    """Where a CaT-SFT result file's references go: ``<arm>-seed<seed>.references.jsonl`` beside it."""
    return result.with_suffix(".references.jsonl")


def save_references(output_dir: Path, train: Path, dest: Path) -> dict[str, int]:
    """Copy a CaT-SFT arm's training targets (the anchor's references, ``references.jsonl`` in its ``output_dir``) to
    ``dest`` beside its result file (id, question, answer, whether usable, the SFT target), each with its question's
    label, and count them (:func:`reference_counts`). The labels serve this report only: CaT-SFT never reads them."""
    labels = {item.question: item.answer for item in load_dataset(str(train))}
    records = sorted(JsonlStore(output_dir / "references.jsonl", key="key").load().values(), key=lambda r: r["id"])
    keep = ("id", "question", "reference_answer", "usable", "target")  # not the rollouts: they stay in output_dir
    dest.write_text("".join(json.dumps({**{k: r.get(k) for k in keep}, "label": labels.get(r["question"])}) + "\n"
                            for r in records))
    return reference_counts(dest)


def reference_counts(path: Path) -> dict[str, int]:
    """How many references a CaT-SFT arm trained on, how many had an answer (the usable ones) and how many of those
    answers equal the label (:func:`cat_dspy.scoring.equivalence.equivalent`)."""
    from cat_dspy.scoring.equivalence import equivalent

    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {"references": len(records), "with_answer": sum(bool(r.get("usable")) for r in records),
            "right": sum(bool(r.get("usable")) and equivalent(r.get("reference_answer"), r.get("label"))
                         for r in records)}


def execute(argv: list[str], local_runtime: str) -> None:
    """Run ``cat-dspy ARGV`` in a child process (its output goes to this terminal) with the embedded model on
    ``local_runtime``; fail on a non-zero exit."""
    command = [sys.executable, "-m", "cat_dspy.cli", *argv]
    print(f"+ CAT_DSPY_RUNTIME={local_runtime}", " ".join(command), flush=True)
    code = subprocess.run(command, cwd=ROOT, env={**os.environ, "CAT_DSPY_RUNTIME": local_runtime, "OMP_NUM_THREADS":
                                                  os.environ.get("OMP_NUM_THREADS", "1")}).returncode
    if code:
        raise SystemExit(f"exit {code}: cat-dspy {' '.join(argv)}")


def train_argv(study: dict[str, Any], arm: str, seed: int, output_dir: Path) -> list[str] | None:
    """The ``cat-dspy train`` (or ``sft``) command of one (arm, seed), or None for an arm without training."""
    spec = study["arms"][arm]
    if not spec["recipe"]:
        return None
    return [spec.get("command", "train"), "--config", spec["recipe"], *map(str, spec.get("args", [])),
            "--dataset_name", study["data"]["train"], "--seed", str(seed), "--output_dir", str(output_dir),
            "--run_name", f"{study['name']}-{arm}-seed{seed}", "--save_total_limit", str(KEEP_CHECKPOINTS)]


def eval_argv(study: dict[str, Any], arm: str, seed: int, run_dir: Path, policy: Path | None) -> list[str]:
    """The held-out ``cat-dspy eval`` command of one (arm, seed); the anchor is always the initial model."""
    ev = study["eval"]
    argv = ["eval", "--dataset", study["data"]["test"], "--g", ",".join(map(str, ev["g"])),
            "--methods", ",".join(ev["methods"]), *map(str, ev.get("args", [])), "--seed", str(seed),
            "--run-dir", str(run_dir), "--experiment", f"study-{study['name']}-evals", "--no-progress", "--json"]
    if policy is not None:
        argv += ["--policy", f"local:{policy}"]
    return argv


def training_curve(output_dir: Path) -> dict[str, Any] | None:
    """Steps, wall time and the logged curve (reward or SFT loss, spread, length, CaT metrics) from
    ``trainer_state.json``;
    ``first``/``last``: the mean of the first and last four logging steps."""
    state_file = output_dir / "trainer_state.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    points = [{"step": e["step"], **{k: e[k] for k in CURVE_KEYS if k in e},
               **{k: e[name] for name in e for k in LABEL_KEYS if name.endswith(f"/{k}")}}
              for e in state.get("log_history", []) if "reward" in e or "loss" in e]
    summary: dict[str, Any] = {"global_step": state.get("global_step"), "points": points}
    for name, part in (("first", points[:4]), ("last", points[-4:])):
        summary[name] = {k: mean_stderr([p[k] for p in part if k in p])[0] for k in CURVE_KEYS}
    runtime = [e["train_runtime"] for e in state.get("log_history", []) if "train_runtime" in e]
    summary["train_runtime"] = runtime[-1] if runtime else None
    return summary


def per_question(records: list[dict[str, Any]], g: int) -> dict[str, Any]:
    """Held-out correctness per question at G: each method's (0/1) and the share of the first G rollouts right."""
    out: dict[str, Any] = {"ids": [r["id"] for r in records], "g": g,
                           "rollouts": [sum(r["rollout_correct"][:g]) / g for r in records]}
    for record in records:
        for result in record["results"]:
            if result["g"] == g:
                out.setdefault(result["method"], []).append(1.0 if result["correct"] else 0.0)
    return out


def run_one(study: dict[str, Any], arm: str, seed: int, *, results: Path = RESULTS, work: Path = ROOT,
            force: bool = False, commit: bool = False) -> Path:
    """Train (if the arm trains) and evaluate one (arm, seed); write its result file. Skips a finished one."""
    config = run_config(study, arm, seed)
    digest = config_hash(config)
    path = result_path(study, arm, seed, results)
    if path.is_file() and not force:
        found = json.loads(path.read_text())
        if found.get("config_hash") == digest:
            print(f"{path}: finished, skipped")
            return path
        raise SystemExit(f"{path} was made with another configuration ({found.get('config_hash')} != {digest}); "
                         "move it away or pass --force")
    started = time.time()
    if not (ROOT / study["data"]["test"]).is_file() and study["data"].get("make"):
        command = [sys.executable if c == "python" else c for c in study["data"]["make"]]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
    output_dir = work / "outputs" / "study" / study["name"] / f"{arm}-seed{seed}"
    train = train_argv(study, arm, seed, output_dir)
    if train is not None:
        execute(train, runtime(study))  # resumes from output_dir's last checkpoint when one is there
    run_dir = work / "runs" / "study" / study["name"] / f"{arm}-seed{seed}"
    execute(eval_argv(study, arm, seed, run_dir, output_dir if train is not None else None), runtime(study))
    # In the test file's order (eval appends each question when it finishes, several being in flight).
    order = {item.id: i for i, item in enumerate(load_dataset(str(ROOT / study["data"]["test"])))}
    records = sorted(JsonlStore(run_dir / RESULTS_FILE).load().values(), key=lambda r: order.get(r["id"], len(order)))
    if not records:
        raise SystemExit(f"{run_dir / RESULTS_FILE}: no finished question")
    g = max(study["eval"]["g"])
    result = {
        "study": study["name"], "arm": arm, "seed": seed, "config": config, "config_hash": digest,
        "git": git_commit(), "started": started, "finished": time.time(),
        "finished_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commands": {"train": train, "eval": eval_argv(study, arm, seed, run_dir,
                                                      output_dir if train is not None else None)},
        "heldout": per_question(records, g),
        "rows": [{k: row.get(k) for k in ("method", "g", "n", "accuracy", "stderr", "rollout_accuracy",
                                          "rollout_stderr", "disagree_rate", "accuracy_when_disagree",
                                          "right_when_all_wrong", "failed_calls", "tokens")}
                 for row in summarize(records)],
        "training": training_curve(output_dir) if train is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if train is not None and train[0] == "sft":
        counts = save_references(output_dir, ROOT / study["data"]["train"], references_path(path))
        print(f"{references_path(path)}: {counts}", flush=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)  # a result file is whole or absent
    print(f"{path}: written")
    if commit:
        files = [str(f) for f in (path, references_path(path)) if f.is_file()]
        subprocess.run(["git", "add", *files], cwd=ROOT, check=True)
        subprocess.run(["git", "commit", "-m", f"study {study['name']}: {arm} seed {seed}", "--", *files],
                       cwd=ROOT, check=True)
    return path


# --- aggregation -----------------------------------------------------------------------------------------------


def load_results(folder: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{arm: {seed: result}}`` from the result files in ``folder``."""
    arms: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(folder.glob("*-seed*.json")):
        result = json.loads(path.read_text())
        arms.setdefault(result["arm"], {})[int(result["seed"])] = result
    return arms


def _by_question(runs: dict[int, dict[str, Any]], metric: str) -> dict[str, float]:
    """Per question id, the metric averaged over the arm's seeds (questions every seed answered)."""
    tables = [dict(zip(r["heldout"]["ids"], r["heldout"][metric], strict=True)) for r in runs.values()
              if metric in r["heldout"]]
    if not tables:
        return {}
    common = set.intersection(*(set(t) for t in tables))
    return {q: sum(t[q] for t in tables) / len(tables) for q in sorted(common)}


def _seed_accuracy(runs: dict[int, dict[str, Any]], metric: str) -> dict[int, float]:
    return {seed: sum(r["heldout"][metric]) / len(r["heldout"][metric]) for seed, r in sorted(runs.items())
            if r["heldout"].get(metric)}


def references(study: dict[str, Any]) -> tuple[str, ...]:
    """The study's reference arms (``references:``, default :data:`REFERENCES`).

    Examples:
        >>> references({}), references({"references": ["base", "random_rl"]})
        (('base', 'majority_rl'), ('base', 'random_rl'))
    """
    return tuple(study.get("references", REFERENCES))


def compare(arms: dict[str, dict[int, dict[str, Any]]], metric: str = "rollouts",
            refs: tuple[str, ...] = REFERENCES) -> list[dict[str, Any]]:
    """One row per arm: held-out ``metric`` (``rollouts``: expected single-sample accuracy; or a method name) as
    mean over seeds ± se across seeds with its 95 % interval, and the paired differences against each reference
    arm: by question (per-question values averaged over seeds) and by seed (seeds both arms ran), with the seeds the
    by-seed spread needs to detect :data:`EFFECT` with 80 % power and the difference the seeds that ran can detect
    (:func:`~cat_dspy.scoring.stats.pairs_for_power`, :func:`~cat_dspy.scoring.stats.detectable_difference`)."""
    rows = []
    for arm, runs in arms.items():
        seeds = _seed_accuracy(runs, metric)
        mean, se = mean_stderr(list(seeds.values()))
        lo, hi = interval95(mean, se, len(seeds))
        row: dict[str, Any] = {"arm": arm, "metric": metric, "seeds": sorted(seeds), "per_seed": seeds,
                               "mean": mean, "se_seeds": se, "lo": lo, "hi": hi,
                               "questions": len(_by_question(runs, metric))}
        for ref in refs:
            if ref == arm or ref not in arms:
                continue
            mine, theirs = _by_question(runs, metric), _by_question(arms[ref], metric)
            ids = sorted(set(mine) & set(theirs))
            row[f"vs_{ref}_by_question"] = paired_difference([mine[q] for q in ids], [theirs[q] for q in ids])
            ref_seeds = _seed_accuracy(arms[ref], metric)
            both = sorted(set(seeds) & set(ref_seeds))
            row[f"vs_{ref}_by_seed"] = paired_difference([seeds[s] for s in both], [ref_seeds[s] for s in both])
            by_seed = row[f"vs_{ref}_by_seed"]
            by_seed["seeds_for_power"] = pairs_for_power(by_seed, EFFECT)
            by_seed["detectable"] = detectable_difference(by_seed)
        rows.append(row)
    return rows


def _cell(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    if d["n"] == 1:  # one pair: no spread to speak of
        return f"{d['mean']:+.3f} (n=1)"
    interval = f" [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d.get("lo") is not None else ""
    return f"{d['mean']:+.3f} ± {d['se']:.3f}{interval} (n={d['n']})"


def print_table(rows: list[dict[str, Any]], refs: tuple[str, ...] = REFERENCES) -> None:
    print(f"held-out {rows[0]['metric'] if rows else ''}: mean over seeds ± se across seeds; differences: mean ± se "
          "[95 % interval] (n pairs)")
    for row in rows:
        acc = "–" if row["mean"] is None else f"{row['mean']:.3f} ± {row['se_seeds']:.3f}"
        print(f"{row['arm']:<12} seeds {row['seeds']}  {acc}")
        for ref in refs:
            for how in ("by_question", "by_seed"):
                key = f"vs_{ref}_{how}"
                if key in row:
                    print(f"{'':<14}- {ref} ({how.replace('_', ' ')}): {_cell(row[key])}")


def curve(runs: dict[int, dict[str, Any]], key: str = "reward") -> list[tuple[int, float]]:
    """``(step, mean over seeds)`` of one logged training metric of an arm; empty where no seed logged it (SFT has
    ``loss``, not ``reward``; ``base`` has no training)."""
    points = [p for r in runs.values() if r.get("training") for p in r["training"]["points"] if p.get(key) is not None]
    return [(step, mean_stderr([p[key] for p in points if p["step"] == step])[0])
            for step in sorted({p["step"] for p in points})]


def markdown(study: dict[str, Any], rows_by_metric: dict[str, list[dict[str, Any]]]) -> str:
    """The comparison as Markdown, the tables the README quotes: held-out accuracy per arm and method (mean over
    seeds ± standard error across seeds, each seed's mean rollout accuracy in brackets), then every arm's paired
    difference in mean rollout accuracy against each reference arm, by seed and by question."""
    g = max(study["eval"]["g"])
    names = {"rollouts": "mean rollout accuracy", "single": "single sample", "majority": f"majority vote (G={g})",
             "cat": f"CaT at test time (G={g})", "cat_q": f"CaT, question-aware (G={g})",
             "self_bon": f"self best-of-N (G={g})", "mp": f"mutual predictability (G={g})"}  # methods.METHODS
    label = {arm: spec.get("label", arm) for arm, spec in study["arms"].items()}
    metrics = list(rows_by_metric)
    lines = ["| arm (seeds) | " + " | ".join(names.get(m, m) for m in metrics) + " |",
             "|---" * (len(metrics) + 1) + "|"]
    for i, row in enumerate(rows_by_metric["rollouts"]):
        seeds = ", ".join(map(str, row["seeds"]))
        cells = []
        for m in metrics:
            r = rows_by_metric[m][i]
            if r["mean"] is None:
                cell = "–"
            elif len(r["seeds"]) == 1:
                cell = f"{r['mean']:.3f}"
            else:  # mean ± se across seeds; each seed's value for the rollouts
                cell = f"{r['mean']:.3f} ± {r['se_seeds']:.3f}"
                if m == "rollouts":
                    cell += " (" + ", ".join(f"{r['per_seed'][s]:.3f}" for s in r["seeds"]) + ")"
            cells.append(cell)
        lines.append(f"| {label.get(row['arm'], row['arm'])} ({seeds}) | " + " | ".join(cells) + " |")
    refs = references(study)
    power = any((row.get(f"vs_{ref}_by_seed") or {}).get("seeds_for_power") for row in rows_by_metric["rollouts"]
                for ref in refs)
    lines += ["", "| difference in mean rollout accuracy | paired by seed | paired by question |"
              + (f" detectable by seed (80 % power) | seeds to detect ±{EFFECT:.2f} |" if power else ""),
              "|---|---|---|" + ("---|---|" if power else "")]
    for row in rows_by_metric["rollouts"]:
        for ref in refs:
            mirror = row["arm"] in refs and refs.index(row["arm"]) < refs.index(ref)
            if f"vs_{ref}_by_question" in row and not mirror:  # majority_rl − base, not also base − majority_rl
                needed = row[f"vs_{ref}_by_seed"].get("seeds_for_power")
                detectable = row[f"vs_{ref}_by_seed"].get("detectable")
                lines.append(f"| {label.get(row['arm'], row['arm'])} − {label.get(ref, ref)} | "
                             f"{_cell(row[f'vs_{ref}_by_seed'])} | {_cell(row[f'vs_{ref}_by_question'])} |"
                             + (f" {'–' if detectable is None else f'±{detectable:.3f}'} |"
                                f" {'–' if needed is None else needed} |" if power else ""))
    return "\n".join(lines) + "\n"


TRAINING_KEYS = {"reward": "reward", "reward_accuracy": "reward accuracy", "label_accuracy": "label accuracy",
                 "frac_reward_zero_std": "zero-std groups", "entropy": "entropy",
                 "completions/mean_length": "length (tokens)", "completions/clipped_ratio": "cut at the cap"}
"""The training-curve columns of the training table (means of the first and of the last four logging steps)."""


def _phase(trained: list[dict[str, Any]], key: str, part: slice) -> float | None:
    """A logged metric over some logging steps (``part`` of each seed's points), averaged, then over seeds."""
    means = [mean_stderr([p[key] for p in t["points"][part] if p.get(key) is not None])[0] for t in trained]
    return mean_stderr([m for m in means if m is not None])[0]


def training_table(study: dict[str, Any], arms: dict[str, dict[int, dict[str, Any]]]) -> tuple[dict, str]:
    """Per trained arm, each :data:`TRAINING_KEYS` metric at the first and last logging steps (means of four steps,
    then over seeds): what the reward taught, and whether the policy collapsed. Returns ``(table, markdown)``."""
    label = {arm: spec.get("label", arm) for arm, spec in study["arms"].items()}
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for arm, runs in arms.items():
        trained = [r["training"] for r in runs.values() if r.get("training")]
        if not trained or study["arms"].get(arm, {}).get("command") == "sft":  # SFT logs a loss, not rollouts
            continue
        first, last = slice(None, 4), slice(-4, None)
        table[arm] = {key: {"first": _phase(trained, key, first), "last": _phase(trained, key, last)}
                      for key in TRAINING_KEYS}
    table = {arm: v for arm, v in table.items() if any(x["last"] is not None for x in v.values())}
    if not table:
        return table, ""
    keys = [k for k in TRAINING_KEYS if any(v[k]["last"] is not None for v in table.values())]
    lines = ["| arm (training: first → last steps) | " + " | ".join(TRAINING_KEYS[k] for k in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for arm, values in table.items():
        cells = ["–" if values[k]["first"] is None else f"{values[k]['first']:.2f} → {values[k]['last']:.2f}"
                 for k in keys]
        lines.append(f"| {label.get(arm, arm)} | " + " | ".join(cells) + " |")
    return table, "\n".join(lines) + "\n"


def plot(arms: dict[str, dict[int, dict[str, Any]]], rows: list[dict[str, Any]], path: Path) -> Path:
    """Held-out accuracy per arm (each seed a dot, mean ± se) and the training reward vs step (mean over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, row in enumerate(rows):
        values = list(row["per_seed"].values())
        left.scatter([i] * len(values), values, color="grey", s=12, zorder=3)
        if row["mean"] is not None:
            left.errorbar([i], [row["mean"]], yerr=[row["se_seeds"] or 0.0], marker="o", capsize=4, zorder=4)
    left.set_xticks(range(len(rows)), [r["arm"] for r in rows])
    left.set_ylabel(f"held-out accuracy ({rows[0]['metric'] if rows else ''})")
    left.grid(alpha=0.3)
    for arm, runs in arms.items():
        points = curve(runs)  # none for SFT: it logs a loss, not a reward
        if points:
            right.plot(*zip(*points, strict=True), marker=".", label=arm)
    right.set_xlabel("training step")
    right.set_ylabel("training reward (mean over seeds)")
    right.grid(alpha=0.3)
    if right.get_legend_handles_labels()[0]:
        right.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def log_mlflow(study: dict[str, Any], arms: dict[str, dict[int, dict[str, Any]]], rows_by_metric: dict[str, list],
               png: Path, summary: Path, experiment: str) -> str:
    """One parent run for the study, one child per arm (its span: its first start to its last finish)."""
    import mlflow

    from cat_dspy import tracking

    with tracking.run(experiment, run_name=f"study {study['name']}") as parent:
        tracking.log_params({"study": study["name"], "arms": ",".join(arms), "g": max(study["eval"]["g"])})
        mlflow.log_artifact(str(png))
        mlflow.log_artifact(str(summary))
        for arm, runs in arms.items():
            start = min(r["started"] for r in runs.values())
            end = max(r["finished"] for r in runs.values())
            with tracking.timed_run(arm, start, end, nested=True, tags={"cat_dspy.study": study["name"]}):
                tracking.log_params({"arm": arm, "seeds": ",".join(map(str, sorted(runs))),
                                     "recipe": study["arms"].get(arm, {}).get("recipe"),
                                     "commits": ",".join(sorted({str(r["git"]["commit"])[:12]
                                                                 for r in runs.values()}))})
                for metric, rows in rows_by_metric.items():
                    row = next(r for r in rows if r["arm"] == arm)
                    values = {f"{metric}/accuracy": row["mean"], f"{metric}/se_seeds": row["se_seeds"]}
                    for ref in references(study):
                        d = row.get(f"vs_{ref}_by_question") or {}
                        values |= {f"{metric}/vs_{ref}": d.get("mean"), f"{metric}/vs_{ref}_se": d.get("se")}
                    mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None})
                for key in ("loss", *TRAINING_KEYS):  # the curves that show collapse, mean over seeds
                    for step, mean in curve(runs, key):
                        mlflow.log_metric(f"train/{key}", float(mean), step=int(step))
        return parent.info.run_id


def aggregate(study: dict[str, Any], *, results: Path = RESULTS, experiment: str | None = None,
              log: bool = True) -> dict[str, Any]:
    """Compare every arm with result files; write ``summary.json``, ``summary.md`` (the tables the README quotes) and
    ``study.png`` beside them; log to MLflow."""
    folder = results / study["name"]
    arms = load_results(folder)
    if not arms:
        raise SystemExit(f"{folder}: no result file yet (python experiments/study.py run ...)")
    order = [a for a in study["arms"] if a in arms] + [a for a in arms if a not in study["arms"]]
    arms = {a: arms[a] for a in order}
    metrics = ["rollouts", *[m for m in study["eval"]["methods"] if m != "min_ppl"]]
    refs = references(study)
    rows_by_metric = {m: compare(arms, m, refs) for m in metrics}
    training, training_md = training_table(study, arms)
    commits = sorted({str(r["git"]["commit"]) for runs in arms.values() for r in runs.values()})
    versions = {str(r["git"].get("code") or r["git"]["commit"]) for runs in arms.values() for r in runs.values()}
    if len(versions) > 1:
        print(f"warning: the result files come from {len(versions)} versions of cat_dspy (commits "
              f"{', '.join(c[:12] for c in commits)})")
    summary = {"study": study["name"], "arms": {a: sorted(r) for a, r in arms.items()}, "commits": commits,
               "tables": rows_by_metric, "training": training}
    sft_targets = {a: {seed: reference_counts(references_path(result_path(study, a, seed, results)))
                       for seed in runs if references_path(result_path(study, a, seed, results)).is_file()}
                   for a, runs in arms.items()}
    if any(sft_targets.values()):  # the CaT-SFT arms' training targets: how many, with an answer, right
        summary["references"] = {a: counts for a, counts in sft_targets.items() if counts}
    summary_path = folder / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=1))
    (folder / "summary.md").write_text(markdown(study, rows_by_metric) + (f"\n{training_md}" if training_md else ""))
    png = plot(arms, rows_by_metric["rollouts"], folder / "study.png")
    for rows in rows_by_metric.values():
        print_table(rows, refs)
        print()
    if training_md:
        print(training_md)
    if log:
        run_id = log_mlflow(study, arms, rows_by_metric, png, summary_path, experiment or f"study-{study['name']}")
        print(f"MLflow run {run_id}")
    print(f"{summary_path}\n{png}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate (arm, seed) pairs; finished ones are skipped")
    run.add_argument("--study", required=True)
    run.add_argument("--arm", action="append", help="arm(s) to run (default with --all: every arm)")
    run.add_argument("--seed", type=int, action="append", help="seed(s) (default: the arm's seeds)")
    run.add_argument("--all", action="store_true", help="every arm and seed of the study, in order")
    run.add_argument("--force", action="store_true", help="rerun even when a result file exists")
    run.add_argument("--commit", action="store_true", help="git commit each result file as soon as it is written")
    run.add_argument("--dry-run", action="store_true", help="print the commands only")
    agg = sub.add_parser("aggregate", help="the comparison table, plot and MLflow runs from the result files")
    agg.add_argument("--study", required=True)
    agg.add_argument("--results", type=Path, default=RESULTS)
    agg.add_argument("--experiment", default=None, help="MLflow experiment (default: study-<name>)")
    agg.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    study = load_study(args.study)
    if args.command == "aggregate":
        aggregate(study, results=args.results, experiment=args.experiment, log=not args.no_mlflow)
        return 0
    if not args.arm and not args.all:
        parser.error("name --arm ARM (and --seed S), or --all")
    unknown = [a for a in args.arm or () if a not in study["arms"]]
    if unknown:
        parser.error(f"unknown arms {unknown}; the study has {list(study['arms'])}")
    for arm in args.arm or list(study["arms"]):
        for seed in args.seed or study["arms"][arm]["seeds"]:
            if args.dry_run:
                out = ROOT / "outputs" / "study" / study["name"] / f"{arm}-seed{seed}"
                train = train_argv(study, arm, seed, out)
                run_dir = ROOT / "runs" / "study" / study["name"] / f"{arm}-seed{seed}"
                for argv in filter(None, (train, eval_argv(study, arm, seed, run_dir, out if train else None))):
                    print("cat-dspy " + " ".join(argv))
                continue
            run_one(study, arm, seed, force=args.force, commit=args.commit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
