"""``cat-dspy optimize`` end to end on the embedded model (tiny budget), then ``solve --program`` with the result."""

from __future__ import annotations

import json

import pytest

from cat_dspy import cli
from cat_dspy.cli import solve as solve_cli

pytestmark = pytest.mark.integration


def test_optimize_synthesize_on_the_embedded_model_then_solve_with_it(tmp_path, monkeypatch, capsys):
    data = tmp_path / "arith.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) for i in (1, 2, 3)))
    out = tmp_path / "synth.json"
    argv = ["optimize", "--target", "synthesize", "--dataset", str(data), "--train", "2", "--dev", "1", "--g", "2",
            "--max-tokens", "24", "--demos", "1", "--out", str(out), "--cache", str(tmp_path / "cache")]
    assert cli.main(argv) == 0
    state = json.loads(out.read_text())
    demos = state["synthesize.synthesize"]["demos"]
    assert state["cat_dspy"]["target"] == "synthesize" and len(demos) <= 1
    assert list((tmp_path / "cache").glob("rollouts-*.jsonl"))

    built = {}
    real_build = solve_cli.build_roles

    def build(args):
        built.update(real_build(args))
        return built

    monkeypatch.setattr(solve_cli, "build_roles", build)
    capsys.readouterr()
    solve = ["solve", "What is 17 + 25?", "--g", "2", "--max-tokens", "16", "--program", str(out), "--json"]
    assert cli.main(solve) == 0
    messages = [m for entry in built["anchor"].history for m in entry["messages"]]
    synthesis = [m for m in messages if m["role"] == "system" and "# UNIFIED RESPONSE" in m["content"]]
    assert synthesis, "the anchor was never asked to synthesize"
    prompts = built["anchor"].history[-1]["messages"]
    assert len(prompts) == 2 + 2 * len(demos)  # system, one user/assistant pair per demo, the request
    for demo in demos:
        assert demo["reference"] in [m["content"] for m in prompts]
