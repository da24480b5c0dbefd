"""Crash and resume: ``cat-dspy eval`` SIGKILLed at seeded random points, then rerun, loses nothing, duplicates
nothing, repeats no LM call of a finished question, and leaves MLflow runs that agree with the results.
``cat-dspy optimize`` killed halfway through writing a record of its cache resumes from the torn file and samples
again only what was not durably written.

``train`` is covered on its reward side (``test_faults.py``, ``test_hostile_math.py``): a kill/resume of a GRPO run
with ``resume_from_checkpoint`` needs minutes of CPU training per kill, beyond this suite's budget.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from . import eval_driver

pytestmark = pytest.mark.robustness

N = 10  # questions
CALLS_PER_QUESTION = 5  # 2 rollouts, self-BoN at G=2, CaT at G=1 and G=2
IN_FLIGHT = 2  # questions evaluated concurrently (a kill loses at most their unfinished calls)
SEED = 7
DRIVER = Path(eval_driver.__file__)


def _calls(log: Path) -> list[list[str]]:
    return [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []


def _finished(results: Path) -> list[str]:
    if not results.exists():
        return []
    data = results.read_bytes()
    return [json.loads(line)["id"] for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


def _start(tmp_path: Path, data: Path, run_dir: Path, log: Path) -> subprocess.Popen:
    args = ["--dataset", str(data), "--id-field", "id", "--g", "1,2", "--methods", "single,majority,self_bon,cat",
            "--equivalence", "string", "--run-dir", str(run_dir), "--no-progress", "--json", "--experiment", "crash",
            "--num-threads", str(IN_FLIGHT)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    return subprocess.Popen([sys.executable, str(DRIVER), str(log), "0.02", "--", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False when it exited first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        assert time.monotonic() < deadline, "the eval subprocess made no progress"
        time.sleep(0.005)
    return False


def test_eval_survives_sigkill_at_random_points(tmp_path):
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Q{i}: what is {i} + {i}?", "answer": str(2 * i)})
                            + "\n" for i in range(1, N + 1)))
    run_dir, log, results = tmp_path / "run", tmp_path / "calls.tsv", tmp_path / "run" / "results.jsonl"
    rng = random.Random(SEED)
    # Kill points: after a random number of new LM calls (twice), then right after the last record is written
    # (while the run logs to MLflow).
    points = [rng.randint(3, 14), rng.randint(5, 16), None]
    history = []  # (pid, finished ids at kill time)
    kills = 0
    for point in points:
        before = len(_calls(log))
        proc = _start(tmp_path, data, run_dir, log)
        if point is None:
            killed = _kill_when(proc, lambda: len(_finished(results)) == N)
        else:
            killed = _kill_when(proc, lambda p=point, b=before: len(_calls(log)) >= b + p)
        kills += killed
        history.append((proc.pid, set(_finished(results))))
    final = _start(tmp_path, data, run_dir, log)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()[-3000:]
    assert kills >= 2

    # Nothing lost, nothing duplicated: one durable record per question.
    ids = _finished(results)
    assert sorted(ids) == sorted(f"q{i}" for i in range(1, N + 1)) and len(ids) == N
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert all(r["results"] and all(isinstance(x["correct"], bool) for x in r["results"]) for r in records)
    assert all(x["correct"] for r in records for x in r["results"])  # resumed answers are the right ones

    # No LM call repeated for a question that had finished before a kill.
    calls = _calls(log)
    pids = [pid for pid, _ in history] + [final.pid]
    for k, (_, done) in enumerate(history):
        later = {str(pid) for pid in pids[k + 1 :]}
        repeated = [c for c in calls if c[0] in later and c[2].removeprefix("Q") in {d[1:] for d in done}]
        assert not repeated, repeated[:5]
    # Work repeated at all: at most the questions in flight at each kill (their uncached calls).
    assert CALLS_PER_QUESTION * N <= len(calls) <= CALLS_PER_QUESTION * (N + IN_FLIGHT * kills)
    per_question = Counter(c[2] for c in calls)
    assert set(per_question) == {f"Q{i}" for i in range(1, N + 1)}

    # MLflow: every finished eval run is complete and agrees with the results; killed ones are never FINISHED.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["crash"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("cat_dspy.eval") == "parent"]
    finished = [r for r in parents if r.info.status == "FINISHED"]
    assert finished and len(parents) - len(finished) <= kills
    last = max(finished, key=lambda r: r.info.start_time)
    metrics = last.data.metrics
    assert metrics["questions"] == N and metrics["resumed"] + metrics["evaluated"] == N
    assert metrics["resumed"] == len(history[-1][1])  # the final run re-read exactly what was on disk
    for run in finished:
        assert run.data.metrics["questions"] == N
        children = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("mlflow.parentRunId")
                    == run.info.run_id]
        assert len(children) == 4 * 2  # every (method, G)
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=last.info.run_id,
                                                                artifact_path="results_table.json",
                                                                dst_path=str(tmp_path / "dl"))).read_text())
    column = table["id"] if "id" in table else [row[table["columns"].index("id")] for row in table["data"]]
    assert Counter(column) == {f"q{i}": 8 for i in range(1, N + 1)}
    print(f"kills={kills} finished-at-kill={[len(d) for _, d in history]} calls={len(calls)} (clean run: "
          f"{CALLS_PER_QUESTION * N}) mlflow parents={len(parents)} finished={len(finished)}")


OPT_DRIVER = Path(__file__).with_name("optimize_driver.py")
TRAIN, G, THREADS = 6, 2, 2


def _optimize(tmp_path: Path, data: Path, log: Path, crash_at: int) -> subprocess.CompletedProcess:
    """One ``cat-dspy optimize`` subprocess; with ``crash_at`` > 0 it SIGKILLs itself halfway through writing the
    ``crash_at``-th record of its cache (``optimize_driver.py``)."""
    args = ["--target", "synthesize", "--dataset", str(data), "--train", str(TRAIN), "--dev", "1", "--g", str(G),
            "--threads", str(THREADS), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "synth.json"),
            "--seed", "1", "--experiment", "crash"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    return subprocess.run([sys.executable, str(OPT_DRIVER), str(log), "0.02", str(crash_at), "--", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _durable(cache: Path) -> list[str]:
    """The question numbers whose rollouts are whole lines of the rollout cache (a torn last line excluded)."""
    data = cache.read_bytes() if cache.exists() else b""
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    return [json.loads(line)["value"][0].split(":")[0] for line in lines]


def test_optimize_killed_while_writing_its_cache_resumes_without_repeating_finished_calls(tmp_path):
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": f"Q{i}: what is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(1, 13)))
    log = tmp_path / "calls.tsv"
    killed = []  # per killed run: its pid, the questions durably cached when it died
    for _ in range(2):  # twice: the second run also resumes from a torn line, then tears another
        before = len(_calls(log))
        proc = _optimize(tmp_path, data, log, crash_at=3)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        (cache,) = (tmp_path / "cache").glob("rollouts-*.jsonl")
        assert not cache.read_bytes().endswith(b"\n")  # it died in the middle of a record
        pids = {c[0] for c in _calls(log)[before:]}
        assert len(pids) == 1
        killed.append((pids.pop(), set(_durable(cache))))
        assert len(killed[-1][1]) == 2 * len(killed)
    assert "rollouts-" in proc.stderr and "dropped a torn last line" in proc.stderr

    before = len(_calls(log))
    final = _optimize(tmp_path, data, log, crash_at=0)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "dropped a torn last line" in final.stderr
    state = json.loads((tmp_path / "synth.json").read_text())
    assert state["synthesize.synthesize"]["demos"]  # the compile ran on the resumed examples

    # The cache holds one whole record per training question; what was durable at each kill is kept as it was.
    text = cache.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == TRAIN == len(set(_durable(cache)))

    # No finished rollout is sampled again: later runs make no policy call for a question cached before a kill.
    calls = _calls(log)
    policy = [c for c in calls if c[1] == "policy"]
    (final_pid,) = {c[0] for c in calls[before:]}
    pids = [pid for pid, _ in killed] + [final_pid]
    for k, (_, durable) in enumerate(killed):
        repeated = [c for c in policy if c[0] in pids[k + 1 :] and c[2] in durable]
        assert not repeated, repeated[:5]
    # The rerun samples exactly the questions that were not durable: G calls each, nothing more.
    rerun = Counter(c[2] for c in calls[before:] if c[1] == "policy")
    missing = set(_durable(cache)) - killed[-1][1]
    assert set(rerun) == missing and all(n == G for n in rerun.values()) and len(missing) == TRAIN - 4
    # Work repeated at all: the torn record and the one other question in flight at each kill.
    assert G * TRAIN <= len(policy) <= G * (TRAIN + THREADS * len(killed))
    print(f"policy calls: {len(policy)} (clean run: {G * TRAIN}); rerun: {sum(rerun.values())}; "
          f"durable at kills: {[len(d) for _, d in killed]}")
