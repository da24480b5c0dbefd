"""Run one benchmark script on this checkout and on an earlier commit, alternately, in one run: before/after.

Each side runs its own copy of the script with its own package first on ``PYTHONPATH`` (the earlier commit is
checked out in a temporary git worktree), in the order base, head, base, head, ... so that load on the machine
falls on both sides alike. Every run's output is kept whole in the JSON written to ``--out``, beside the commits,
the command and the machine's load average before each run; what to compare is read from those outputs.

Run: python benchmarks/against_commit.py --base 0d25f26 --out experiments/results/benchmarks/rollouts.json \
        -- benchmarks/rollouts.py --g 8 --max-tokens 48 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def run_side(tree: Path, script: str, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(tree / script), *args], cwd=tree, env=env, capture_output=True,
                          text=True)
    return {"returncode": done.returncode, "seconds": round(time.perf_counter() - start, 2), "load_before": load,
            "stdout": done.stdout, "stderr_tail": done.stderr[-2000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=1, help="base/head pairs (default: 1)")
    parser.add_argument("--out", required=True, help="JSON file of every run's output")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...] (relative to the repo)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the benchmark after --: -- benchmarks/rollouts.py ...")
    script, script_args = command[0], command[1:]
    head = git("rev-parse", "HEAD")
    base = git("rev-parse", args.base)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        git("worktree", "add", "--detach", str(base_tree), base)
        try:
            for round_ in range(args.rounds):
                for side, tree in (("base", base_tree), ("head", REPO)):
                    result = run_side(tree, script, script_args)
                    runs.append({"side": side, "round": round_, **result})
                    print(f"--- {side} (round {round_ + 1}, {result['seconds']} s, load {result['load_before']:.2f},"
                          f" rc {result['returncode']})\n{result['stdout']}", flush=True)
        finally:
            git("worktree", "remove", "--force", str(base_tree))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"base": base, "head": head, "head_dirty": bool(git("status", "--porcelain")),
                               "command": command, "runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
