"""``cat-dspy optimize --target policy --metric cat`` end to end on the embedded model (tiny sizes), then the saved
program loads into ``solve`` and into ``CaT`` / ``Solver``."""

from __future__ import annotations

import json

import pytest

from cat_dspy import cli

pytestmark = pytest.mark.integration


def test_optimize_the_policy_with_the_cat_metric_on_the_embedded_model(tmp_path, capsys):
    from cat_dspy.modules import CaT
    from cat_dspy.modules.solver import Solver

    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i + 2}?", "answer": "label withheld"}) + "\n"
                            for i in range(1, 9)))
    out = tmp_path / "policy.json"
    argv = ["optimize", "--target", "policy", "--metric", "cat", "--dataset", str(data), "--train", "4", "--g", "2",
            "--max-tokens", "32", "--anchor-max-tokens", "48", "--temperature", "0.7", "--extraction", "flexible",
            "--demos", "1", "--threads", "2", "--seed", "0", "--out", str(out), "--cache", str(tmp_path / "cache"),
            "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert cli.main(argv) == 0
    assert "saved policy program (bootstrap, --metric cat)" in capsys.readouterr().out
    state = json.loads(out.read_text())
    assert state["cat_dspy"]["target"] == "policy" and state["cat_dspy"]["metric"] == "cat"
    [cache] = (tmp_path / "cache").glob("policy-references-*.jsonl")
    records = [json.loads(line)["value"] for line in cache.read_text().splitlines()]
    assert len(records) == 4 and all(len(r["rollouts"]) == 2 and r["reference"] for r in records)
    report = json.loads((tmp_path / "policy.report.json").read_text())
    assert report["usage"]["references"]["calls"] == 4 * 3  # G policy calls + one anchor call per question

    assert cli.main(argv) == 0  # the rerun: references from the JSONL, every call from the run folder's cache
    assert all(u["calls"] == 0 for u in json.loads((tmp_path / "policy.report.json").read_text())["usage"].values())

    demos = state["rollout.generate"]["demos"]
    cat, solver = CaT(g=2), Solver()
    cat.load(str(out))
    solver.load(str(out))
    assert cat.rollout.generate.demos == solver.generate.demos and len(solver.generate.demos) == len(demos)
    capsys.readouterr()
    assert cli.main(["solve", "What is 3 + 4?", "--g", "2", "--max-tokens", "16", "--extraction", "flexible",
                     "--program", str(out), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rollouts"]) == 2
