"""The GPU check's helpers (benchmarks/gpu_check/): the summary reads what stages left behind, partial runs included,
and the carried wheels are pinned to the versions this environment runs (the dry run links those)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", _DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summary = _load("summary")
shadow_env = _load("shadow_env")

# What `cat-dspy train --disable_tqdm true` prints: floats formatted as strings, one dict per logging step; the
# last step line was cut by the stage's timeout.
_STEP = ("{{'loss': '0.01', 'reward': '{reward}', 'completions/mean_length': '40', 'cat/reward_seconds': '{rs}', "
         "'cat/synthesis_extracted': '1', 'cat/invalid_groups': '{inv}', 'cat/anchor_errors': '0', "
         "'step_time': '{st}', 'epoch': '0.06'}}")
_LOG = "\n".join([
    "Loading weights: 100%",
    _STEP.format(reward="0.25", rs="4.0", inv="0", st="20.0"),  # first step: compiles
    "2026/11/30 WARNING dspy.clients.lm: LM response was truncated",
    _STEP.format(reward="0.5", rs="1.0", inv="1", st="5.0"),
    _STEP.format(reward="0.75", rs="1.0", inv="0", st="5.0"),
    "{'loss': '0.02', 'reward': '0.8', 'step_ti",
])


def test_training_log_partial_run(tmp_path: Path) -> None:
    log = tmp_path / "grpo.log"
    log.write_text(_LOG)
    run = summary.training(log)
    assert run["steps_logged"] == 3
    assert run["step_s"] == [20.0, 5.0, 5.0]
    assert run["reward_mean"] == [0.25, 0.5, 0.75]
    assert run["first_step_s"] == 20.0 and run["median_later_step_s"] == 5.0
    assert run["reward_share"] == pytest.approx(6.0 / 30.0)
    assert run["reward_share_later"] == pytest.approx(2.0 / 10.0)
    assert run["invalid_groups"] == 1
    assert run["train_runtime_s"] is None  # the run did not finish


def test_training_log_without_steps(tmp_path: Path) -> None:
    log = tmp_path / "grpo.log"
    log.write_text("Traceback (most recent call last):\nValueError: boom\n")
    assert summary.training(log) is None
    assert summary.training(tmp_path / "missing.log") is None


def _write_results(results: Path, stages: list[dict]) -> None:
    results.mkdir()
    (results / "stages.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stages))
    (results / "env.json").write_text(json.dumps({"python": "3.12.3", "packages": {"torch": "2.11.0"}}))


def test_summary_marks_timeouts_and_budget_skips_incomplete(tmp_path: Path, monkeypatch, capsys) -> None:
    results, out = tmp_path / "results", tmp_path / "out"
    _write_results(results, [
        {"stage": "setup", "rc": 0, "seconds": 9.0},
        {"stage": "engine", "rc": 0, "seconds": 60.0},
        {"stage": "grpo", "rc": 124, "seconds": 270.0},
        {"stage": "vllm", "rc": None, "skipped": "only 12s left of TOTAL_S", "budget": True},
    ])
    out.mkdir()
    (out / "grpo.log").write_text(_LOG)
    (out / "vllm.log").write_text(_LOG)  # an earlier run's log: vllm did not run this time, so it is not read
    monkeypatch.setattr("sys.argv", ["summary.py", "--results", str(results), "--out", str(out)])
    assert summary.main() == 1
    printed = capsys.readouterr().out
    assert "TIMEOUT" in printed and "not complete: grpo, vllm" in printed
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["grpo"]["steps_logged"] == 3
    assert data["vllm"] is None


def test_summary_complete_run_exits_zero(tmp_path: Path, monkeypatch) -> None:
    results, out = tmp_path / "results", tmp_path / "out"
    _write_results(results, [{"stage": "setup", "rc": 0, "seconds": 9.0},
                             {"stage": "vllm", "rc": None, "skipped": "vLLM is not installed on this machine"}])
    monkeypatch.setattr("sys.argv", ["summary.py", "--results", str(results), "--out", str(out)])
    assert summary.main() == 0


def test_read_names_normalizes_pins_and_comments(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nJSON_repair==0.64.6  # why\n\nlatex2sympy2.extended\n"
                       "rpds-py>=1 ; python_version>'3'\n")
    assert shadow_env.read_names(listing) == {"json-repair", "latex2sympy2-extended", "rpds-py"}


def test_carried_wheels_are_the_versions_installed_here() -> None:
    """The dry run takes the version-specific wheels' packages from this environment: same versions only."""
    pins = {}
    for line in (_DIR / "wheels.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name] = version
    assert len(pins) == 25 and all(pins.values())
    installed = {}
    for name in pins:
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed in this environment")
    assert installed == pins


def test_script_parses() -> None:
    script = _DIR.parent / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "--dry-run" in usage.stdout
    wrong = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown option --bogus" in wrong.stderr
