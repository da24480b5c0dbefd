"""`make demo`, measured: its wall time and what CaT did, per sampling seed.

Runs the demo's command (``cat-dspy solve "$(QUESTION)" $(DEMO_ARGS)``, both read from the Makefile, so this is the
command `make demo` runs) once per ``--seeds`` value with a cold DSPy cache (a fresh ``DSPY_CACHEDIR``) and
``--json``, and records for each seed the wall time of the whole command (process start, model load and CaT), the
model load and solve seconds it reports, the load average before, the reference answer, the rollouts' answers and
rewards, and the demo's one-line summary (:func:`cat_dspy.cli.solve.outcome`). The answers and the summary depend
only on the seed (every request is seeded); the times depend on the machine and its load: measure them on an idle
machine, after the embedded model's one-time conversion (run `make demo` once first).

Run (from the repository root, in the venv `make demo` set up):
``python benchmarks/demo_time.py --seeds 0 1 2 3 4 5 6 7 --out experiments/results/benchmarks/demo_time.json``
(default: the Makefile's own seed only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def demo_command(makefile: Path = REPO / "Makefile") -> tuple[str, list[str]]:
    """The demo's question and ``cat-dspy solve`` arguments, as the Makefile sets them (``QUESTION ?=``,
    ``DEMO_ARGS ?=``)."""
    text = makefile.read_text()
    values = {}
    for name in ("QUESTION", "DEMO_ARGS"):
        match = re.search(rf"^{name} \?= (.*)$", text, flags=re.MULTILINE)
        if match is None:
            raise ValueError(f"{makefile}: no '{name} ?= ...' line")
        values[name] = match.group(1).strip()
    return values["QUESTION"], shlex.split(values["DEMO_ARGS"])


def with_seed(args: list[str], seed: int) -> list[str]:
    """``args`` with ``--seed`` set to ``seed`` (replaced where present, else appended).

    Examples:
        >>> with_seed(["--g", "4", "--seed", "3"], 5), with_seed(["--g", "4"], 1)
        (['--g', '4', '--seed', '5'], ['--g', '4', '--seed', '1'])
    """
    if "--seed" in args:
        i = args.index("--seed")
        return [*args[: i + 1], str(seed), *args[i + 2 :]]
    return [*args, "--seed", str(seed)]


def run_demo(question: str, args: list[str]) -> dict:
    """One run of the demo's command with a cold DSPy cache: its wall seconds and the ``--json`` result."""
    from cat_dspy.cli.solve import outcome

    cmd = [sys.executable, "-m", "cat_dspy.cli", "solve", question, *args, "--json"]
    with tempfile.TemporaryDirectory(prefix="cat-demo-cache-") as cache:
        env = {**os.environ, "DSPY_CACHEDIR": cache}
        load = os.getloadavg()[0]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_seconds": round(wall, 2), "load_average_before": load, "seconds": result["seconds"],
            "reference_answer": result["reference_answer"], "answers": result["answers"],
            "rewards": result["rewards"], "failures": result["failures"], "outcome": outcome(result)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", help="sampling seeds (default: the Makefile's --seed)")
    parser.add_argument("--out", type=Path, help="write the JSON here too (e.g. experiments/results/benchmarks/...)")
    options = parser.parse_args(argv)

    question, args = demo_command()
    seeds = options.seeds or [int(args[args.index("--seed") + 1])]
    runs = {}
    for seed in seeds:
        runs[str(seed)] = run_demo(question, with_seed(args, seed))
        print(f"seed {seed}: {runs[str(seed)]['wall_seconds']:.1f} s wall: {runs[str(seed)]['outcome']}", flush=True)
    report = {"command": "python benchmarks/demo_time.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "demo": shlex.join(["cat-dspy", "solve", question, *args]), "cpus": os.cpu_count(), "runs": runs}
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
