"""The competence sweep of the signal table: which label-free teacher, and when (``cat-dspy signals`` per level).

Five generated arithmetic levels (``make_arithmetic.py --level 0..4``: 1-digit addition, about a fifth of the
rollouts right, to 3-digit multiplication, none right) and a GSM8K subset (from ``$CAT_DSPY_DATA``), G = 16
rollouts per question sampled once on the embedded SmolLM2-135M (flexible extraction: it answers in prose), every
signal at G = 2, 4, 8, 16. Each level is one resumable ``cat-dspy signals`` run directory under ``OUT/<level>/``;
``aggregate`` merges their ``results.jsonl`` into ``OUT/summary.json``, ``OUT/summary.txt`` and ``OUT/signals.png``.

    python experiments/signals.py run --out experiments/results/signals        # resumable; then aggregate
    python experiments/signals.py aggregate --out experiments/results/signals  # from the records alone

``--questions N`` sets the questions per level (``--gsm8k-questions`` GSM8K's); ``--levels`` runs a subset (a smoke
run). Sized by measurement: on one core (OMP_NUM_THREADS=1, the machine shared) a G = 16 arithmetic question with
every signal took ~190 s (rollouts 26 s; ~20k scored or prefilled tokens, mostly the probes), so the default sweep,
4 questions x 5 sets, is about an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LEVELS = ("L0", "L1", "L2", "L3", "L4", "gsm8k")
G = "2,4,8,16"
MAX_TOKENS = {"L0": 64, "L1": 64, "L2": 64, "L3": 64, "L4": 64, "gsm8k": 128}  # summary.json's `cap`: its effect
ANCHOR_MAX_TOKENS = 96
# Mutual predictability scores G prompts of G-1 rollouts each (~G^2 rollout lengths of full-vocabulary scoring):
# measured on one core, mp at G = 2, 4, 8 took a third of a question's scored tokens; it runs at G <= 4.
PROBE_GS = ["mp=2,4"]


def data_file(level: str, out: Path, questions: int, seed: int) -> Path:
    """The level's JSONL: generated arithmetic (written under OUT/data, seeded), or the GSM8K test file."""
    if level == "gsm8k":
        from cat_dspy.datasets import DATASETS, ENV_VAR, data_dirs  # the library's own lookup: $CAT_DSPY_DATA

        name = DATASETS["gsm8k"].files["test"]
        found = [d / name for d in data_dirs() if (d / name).is_file()]
        if not found:
            raise SystemExit(f"no {name} in the data directories {data_dirs()} (set {ENV_VAR} to a folder holding it)")
        return found[0]
    target = out / "data" / level
    subprocess.run([sys.executable, str(HERE / "make_arithmetic.py"), "--level", level[1:], "--test", str(questions),
                    "--seed", str(seed), "--out", str(target)], check=True, stdout=subprocess.DEVNULL)
    return target / "test.jsonl"


def command(level: str, out: Path, questions: int, seed: int, num_threads: int, extra: list[str]) -> list[str]:
    path = data_file(level, out, questions, seed)
    cmd = [sys.executable, "-m", "cat_dspy.cli", "signals", "--dataset", str(path), "--dataset-label", level,
           "--limit", str(questions), "--g", G, "--max-tokens", str(MAX_TOKENS[level]),
           "--anchor-max-tokens", str(ANCHOR_MAX_TOKENS), "--extraction", "flexible", "--seed", str(seed),
           "--num-threads", str(num_threads), "--run-dir", str(out / level), "--no-progress"]
    if level == "gsm8k":
        cmd += ["--data-seed", str(seed)]  # a seeded subset, not the file's first questions
    for probe in PROBE_GS:
        cmd += ["--probe-gs", probe]
    return cmd + extra


def run(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    levels = args.levels or list(LEVELS)
    for level in levels:
        questions = args.gsm8k_questions if level == "gsm8k" and args.gsm8k_questions else args.questions
        cmd = command(level, out, questions, args.seed, args.num_threads, args.extra)
        start = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {level}: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
        print(f"[{time.strftime('%H:%M:%S')}] {level}: done in {time.time() - start:.0f} s", flush=True)
    aggregate(args)


def aggregate(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from cat_dspy import tracking
    from cat_dspy.evaluation.signal_report import format_table, plot_signals, summarize_signals

    out = Path(args.out)
    records = []
    for level in LEVELS:
        path = out / level / "results.jsonl"
        if path.is_file():
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"no results under {out}")
    summary = summarize_signals(records)
    tracking.write_json(summary, out / "summary.json")
    (out / "summary.txt").write_text(format_table(summary) + "\n")
    plot_signals(summary, out / "signals.png")
    print(format_table(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("run", "aggregate"):
        p = sub.add_parser(name)
        p.add_argument("--out", default=str(HERE / "results" / "signals"))
        if name == "run":
            p.add_argument("--questions", type=int, default=4, help="questions per level (default: 4)")
            p.add_argument("--gsm8k-questions", type=int, default=None, help="GSM8K questions (default: --questions)")
            p.add_argument("--levels", nargs="*", choices=LEVELS, default=None, help="a subset of the levels")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--num-threads", type=int, default=8, help="questions in flight (engine batches)")
            p.add_argument("extra", nargs=argparse.REMAINDER, help="more cat-dspy signals flags (after --)")
    args = parser.parse_args()
    if getattr(args, "extra", None) and args.extra[0] == "--":
        args.extra = args.extra[1:]
    run(args) if args.cmd == "run" else aggregate(args)


if __name__ == "__main__":
    main()
