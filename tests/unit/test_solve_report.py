"""``cat-dspy solve`` without ``--json`` ends with lines for a person: a compute summary per role in which calls
answered from DSPy's cache are named as such, then what happened; ``--json`` keeps every number."""

from __future__ import annotations

import json
import logging

import pytest

from cat_dspy import cli
from cat_dspy.testing import scripted_lm


@pytest.fixture
def roles(monkeypatch):
    made = {}
    monkeypatch.setattr("cat_dspy.cli.solve.build_roles", lambda args: made)
    return made


def test_the_report_ends_with_the_compute_summary_and_names_cache_hits(roles, capsys):
    roles.update(policy=scripted_lm(lambda p: "7 + 5 = 12", cache=True),
                 anchor=scripted_lm(lambda p: "So 7 + 5 = 12.", cache=True), judge=scripted_lm(["no"]))
    argv = ["solve", "What is 7 + 5?", "--g", "3", "--seed", "1"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    tail = "\n".join(first[-6:])
    assert first[-6].startswith("compute (solve ") and "model load" in first[-6]
    assert [line.split()[0] for line in first[-5:-2]] == ["policy", "anchor", "total"], tail
    assert "3 calls" in first[-5] and "cache" not in tail and "{'policy'" not in "\n".join(first)
    assert "3 of 3 rollouts agree with the reference answer 12" in " ".join(first[-2:])  # flexible: prose answers

    assert cli.main(argv) == 0  # the same requests again: DSPy answers them from its cache
    again = capsys.readouterr().out.splitlines()
    assert "3 calls (3 from DSPy's cache)" in again[-5] and "1 call (1 from DSPy's cache)" in again[-4], again[-6:]
    assert " 0 prompt +" in again[-5]

    assert cli.main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cache_hits"] == {"policy": 3, "anchor": 1} and result["usage"]["policy"]["calls"] == 0
    assert result["parsed"] is not None and result["seconds"]["solve"] >= 0


def test_a_normal_run_quiets_library_info_logs_and_verbose_keeps_them(roles, capsys):
    roles.update(policy=scripted_lm(lambda p: "\\boxed{4}"), anchor=scripted_lm(lambda p: "\\boxed{4}"),
                 judge=scripted_lm(["no"]))
    logging.getLogger("mlflow").setLevel(logging.INFO)
    assert cli.main(["solve", "What is 2 + 2?", "--g", "1"]) == 0
    assert logging.getLogger("mlflow").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("mlflow.store.db.utils").getEffectiveLevel() >= logging.WARNING
    logging.getLogger("mlflow").setLevel(logging.INFO)
    assert cli.main(["solve", "What is 2 + 2?", "--g", "1", "--verbose"]) == 0
    assert logging.getLogger("mlflow").getEffectiveLevel() == logging.INFO
