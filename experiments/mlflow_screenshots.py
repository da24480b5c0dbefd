"""Screenshots of what a reader meets in the MLflow UI: the runs table of an eval experiment, the accuracy-vs-G
chart of its parent run, and a comparison of two (method, G) child runs, taken by headless Chromium.

A tiny scripted eval (scripted LMs, no model; a few seconds) fills a fresh MLflow store in a temporary folder; an
``mlflow server`` is started on 127.0.0.1 over it; Chromium (the Debian package ``chromium``) loads each page and
writes a PNG. Nothing leaves the machine.

Run: python experiments/mlflow_screenshots.py   (writes docs/mlflow_*.png; PNGs are gitignored except docs/*.png)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--run-all-compositor-stages-before-draw")  # else charts show spinners


def make_store(folder: Path, questions: int = 12) -> None:
    """Run a small scripted ``cat-dspy eval`` into ``folder``/mlflow.db (G = 1, 2, 4, 8; four methods)."""
    import re

    from cat_dspy import cli
    from cat_dspy.cli import common
    from cat_dspy.testing import scripted_lm

    rng = random.Random(0)

    def policy(prompt: str) -> str:
        if "<response id=" in prompt:  # self-BoN's choice
            return "1"
        a, b = map(int, re.findall(r"What is (\d+) \+ (\d+)", prompt)[-1])
        return f"{a} + {b} = \\boxed{{{a + b if rng.random() < 0.45 else a + b + rng.choice((-1, 1, 10))}}}"

    def anchor(prompt: str) -> str:
        answers = re.findall(r"\\boxed\{(-?\d+)\}", prompt)
        return f"The answer is \\boxed{{{max(set(answers), key=answers.count) if answers else 0}}}"

    def build_roles(args: argparse.Namespace) -> dict:
        return {"policy": scripted_lm(policy), "anchor": scripted_lm(anchor), "judge": scripted_lm(lambda p: "no")}

    common.build_roles = build_roles
    data = folder / "arith.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {a + 3}?", "answer": str(2 * a + 3)}) + "\n"
                            for a in range(1, questions + 1)))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.chdir(folder)
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["eval", "--dataset", str(data), "--g", "1,2,4,8", "--methods", "single,majority,self_bon,cat",
                         "--experiment", "screenshots", "--no-progress", "--json"])
    if code:
        raise SystemExit(f"the scripted eval failed ({code})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"mlflow server did not answer {url} within {seconds:.0f} s")


def screenshot(chromium: str, url: str, png: Path, size: str, wait_ms: int) -> None:
    """One page to one PNG; a fresh profile each time (no state carried between shots)."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                        f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", url],
                       check=True, capture_output=True, timeout=180)
    print(f"{png}: {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="folder of the PNGs (default: docs)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--size", default="1600,1000", help="window size W,H (default: 1600,1000)")
    parser.add_argument("--wait-ms", type=int, default=40000, help="virtual time each page gets to render (ms)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = Path(tempfile.mkdtemp(prefix="cat-dspy-mlflow-"))
    make_store(store)

    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("screenshots")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r.info.run_id for r in runs if "mlflow.parentRunId" in r.data.tags}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{store / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health")
        exp, pid = experiment.experiment_id, parent.info.run_id
        pair = json.dumps([children["majority G=8"], children["cat G=8"]])
        ml = "workflowType=machine_learning"  # MLflow 3.17's "Model training" switch (else: the GenAI pages)
        pages = {
            "mlflow_experiment_default.png": f"{base}/#/experiments/{exp}",  # a fresh browser, the experiment clicked
            "mlflow_runs_table.png": f"{base}/#/experiments/{exp}/runs?{ml}",
            "mlflow_accuracy_vs_g.png": f"{base}/#/experiments/{exp}/runs/{pid}/model-metrics?{ml}",
            "mlflow_compare_majority_cat.png": f"{base}/#/compare-runs?runs={urllib.parse.quote(pair)}"
                                        f"&experiments={urllib.parse.quote(json.dumps([exp]))}&{ml}",
        }
        for name, url in pages.items():
            w, h = args.size.split(",")
            size = f"{w},{int(h) * 2}" if "compare" in name else args.size  # the metrics table is below
            screenshot(args.chromium, url, out / name, size, args.wait_ms)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
