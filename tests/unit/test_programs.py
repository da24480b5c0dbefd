"""The example in programs/python_api.py runs: eval and optimize called from Python with plain arguments."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from cat_dspy.testing import scripted_lm

ROOT = Path(__file__).resolve().parents[2]
UNIFIED = "# SUMMARY\nthe rollouts agree\n# UNIFIED RESPONSE\nso Therefore, the final answer is: $\\boxed{{{}}}$."


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "programs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_python_api_example_evaluates_and_optimizes(tmp_path):
    def policy(prompt):  # right on even questions only: single/majority are wrong on odd ones
        i = int(re.findall(r"What is (\d+) \+", prompt)[-1])
        return f"{i} plus {i} is \\boxed{{{2 * i if i % 2 == 0 else 2 * i + 1}}}"

    def anchor(prompt):  # copies the first rollout's answer
        return UNIFIED.format(re.search(r"\\boxed\{(\d+)\}", prompt.rsplit("<rollouts>", 1)[-1]).group(1))

    lms = {"policy": scripted_lm(policy), "anchor": scripted_lm(anchor), "judge": scripted_lm(["yes"])}
    result = _load("python_api").main(tmp_path / "work", lms=lms)
    rows = {(r["method"], r["g"]): r for r in result["rows"]}
    assert set(rows) == {(m, g) for m in ("single", "majority", "cat") for g in (1, 2)}
    assert all(r["n"] == 6 and abs(r["accuracy"] - 0.5) < 1e-9 for r in rows.values())  # 3 of 6 even questions
    saved = json.loads(Path(result["optimized"]["out"]).read_text())
    assert saved["cat_dspy"]["target"] == "synthesize" and result["optimized"]["examples"] == 3
    assert lms["anchor"].engine_script.calls > 0
