"""A test marked ``exclusive`` runs while no other pytest-xdist worker runs a test (``tests/conftest.py``'s
``_exclusive`` fixture); the exclusive tests form one group that runs on one worker (the suite's scheduler), holding
the machine from the first to the last: an inner session on 2 workers records when and where each test ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"

INNER_CONFTEST = f'''
import importlib.util
import sys

import pytest

sys.path.insert(0, {str(TESTS)!r})
spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS / "conftest.py")!r})
suite = sys.modules["suite_conftest"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
suite.EXCLUSIVE = ("test_inner.py::test_alone",)  # marked by the suite's own hook, as the suite's are
_exclusive = suite._exclusive
pytest_runtest_protocol = suite.pytest_runtest_protocol
pytest_collection_modifyitems = suite.pytest_collection_modifyitems
pytest_xdist_make_scheduler = suite.pytest_xdist_make_scheduler


def pytest_configure(config):
    config.addinivalue_line("markers", "exclusive: runs alone")
'''

INNER_TESTS = '''
import json, os, time

import pytest


def record(name):
    start = time.monotonic()
    time.sleep(0.4)
    with open(os.environ["SPANS"], "a") as out:
        out.write(json.dumps([name, start, time.monotonic(), os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")


@pytest.mark.parametrize("i", range(2))
def test_alone(i):
    record(f"alone{i}")


@pytest.mark.parametrize("i", range(12))
def test_shared(i):
    record(f"shared{i}")
'''


def test_an_exclusive_test_overlaps_no_other(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(INNER_CONFTEST)
    (inner / "test_inner.py").write_text(INNER_TESTS)
    spans = tmp_path / "spans.jsonl"
    env = {**os.environ, "SPANS": str(spans)}
    command = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-q", "-p", "no:cacheprovider",
               str(inner)]
    done = subprocess.run(command, cwd=inner, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "14 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    runs = [json.loads(line) for line in spans.read_text().splitlines()]
    assert len(runs) == 14
    for name, start, end, _ in runs:
        if name.startswith("alone"):
            overlapping = [other for other, s, e, _ in runs if other != name and s < end and start < e]
            assert overlapping == [], (name, overlapping)
    alone = [(s, e, worker) for name, s, e, worker in runs if name.startswith("alone")]
    assert len({worker for _, _, worker in alone}) == 1  # the suite's scheduler ran its group on one worker
    first, last = min(s for s, _, _ in alone), max(e for _, e, _ in alone)
    assert not [name for name, s, _, _ in runs if name.startswith("shared") and first < s < last]  # held throughout
    shared = [(s, e) for name, s, e, _ in runs if name.startswith("shared")]
    assert any(s1 < e2 and s2 < e1 for i, (s1, e1) in enumerate(shared) for s2, e2 in shared[i + 1:])  # 2 at a time
