"""Secrets: canary keys in the environment never reach MLflow (params, metrics, artifacts, traces), logs, run
folders or saved programs, even when a backend error echoes a key and a model prints one."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import mlflow
import pytest

from cat_dspy import tracking
from cat_dspy.cli import common, solve
from cat_dspy.modules import CaT
from cat_dspy.testing import scripted_lm

pytestmark = pytest.mark.robustness

KEY = "sk-canary-4f1c9a7e2b6d0835"
TOKEN = "tok-canary-93be17d5c02a4f68"
CANARIES = (KEY, TOKEN)
RUBRIC = "<rubric>" + "".join(f"<criterion>Mentions item {i} ({TOKEN}).</criterion>" for i in range(5)) + "</rubric>"


@pytest.fixture(autouse=True)
def _canaries(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", TOKEN)


def leaky_roles(args: argparse.Namespace | None = None) -> dict:
    """Scripted roles that put the canaries everywhere a real backend could: outputs and error messages."""
    calls = {"judge": 0}

    def judge(prompt: str) -> str:
        calls["judge"] += 1
        if calls["judge"] % 2:
            raise RuntimeError(f"401 Unauthorized: Incorrect API key provided: {KEY}")  # as providers echo it
        return "\n".join(f'<verdict id="{i}">yes</verdict>' for i in range(1, 6))

    return {
        "policy": scripted_lm(lambda p: f"My environment says OPENAI_API_KEY={KEY}. Therefore \\boxed{{4}}"),
        "anchor": scripted_lm(lambda p: RUBRIC if "grading rubric" in p else f"Use token {TOKEN}: \\boxed{{4}}"),
        "judge": scripted_lm(judge),
    }


def leaks(paths: list[Path], *texts: str) -> list[str]:
    """Where a canary occurs: files (bytes, recursively) and texts."""
    found = []
    for root in paths:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            found += [f"{path} has {c[:12]}" for c in CANARIES if c.encode() in data]
    for i, text in enumerate(texts):
        found += [f"text {i} has {c[:12]}" for c in CANARIES if c in text]
    return found


def mlflow_files(tmp_path: Path) -> list[Path]:
    """The MLflow store: the sqlite DB (params, metrics, tags, traces) and every artifact folder."""
    return [p for p in (tmp_path / "mlflow.db", tmp_path / "mlruns", tmp_path / "mlartifacts") if p.exists()]


def all_traces() -> list[str]:
    experiments = [e.experiment_id for e in mlflow.search_experiments()]
    return [t.to_json() for t in mlflow.search_traces(locations=experiments, return_type="list")]


def parse(parser_args: list[str], add: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(parser_args)


ROLE_ARGS = ["--policy", "openai/gpt-4o-mini", "--anchor", "openai/gpt-4o-mini", "--judge", "openai/gpt-4o-mini",
             "--api-base", f"https://proxy.example/v1?key={TOKEN}"]


def _solve(monkeypatch) -> dict:
    monkeypatch.setattr(solve, "build_roles", leaky_roles)
    args = parse(["What is 2+2?", "--g", "3", "--mode", "rubric", "--traces", "--json", *ROLE_ARGS],
                 solve.add_arguments)
    return solve.solve(args)


def test_solve_never_leaks(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    result = _solve(monkeypatch)
    assert any(KEY in r for r in result["rollouts"])  # the canary really went through the pipeline
    assert any("judge_error" in f for f in result["failures"]) and not any(KEY in f for f in result["failures"])
    run = mlflow.search_runs(experiment_names=["cat-dspy-solve"], output_format="list")[0]
    assert run.data.params["policy.api_base"] == "https://proxy.example/v1?key=***"
    program = tmp_path / "program.json"
    roles = leaky_roles()
    cat = CaT(g=3, mode="rubric", policy=roles["policy"], anchor=roles["anchor"], judge=roles["judge"])
    cat(question="What is 2+2?")  # a program that has run (and met the canaries) is saved
    cat.save(str(program))
    assert not leaks([*mlflow_files(tmp_path), program], caplog.text, *all_traces())


def test_traces_are_redacted(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    roles = leaky_roles()
    cat = CaT(g=2, mode="rubric", policy=roles["policy"], anchor=roles["anchor"], judge=roles["judge"])
    with tracking.run("secrets", traces=True):
        pred = cat(question="What is 2+2?")
    assert any(KEY in r for r in pred.rollouts)
    traces = all_traces()
    assert traces and any("Mentions item" in t for t in traces)  # traces were recorded, with the model text
    assert any("***" in t for t in traces)
    assert not leaks(mlflow_files(tmp_path), caplog.text, *traces)


def test_eval_never_leaks(tmp_path, monkeypatch, caplog, capsys):
    from cat_dspy.cli import eval as eval_cli

    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(common, "build_roles", leaky_roles)
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(1, 4)))
    run_dir = tmp_path / "run"
    args = parse(["--dataset", str(data), "--g", "1,2", "--methods", "single,majority,self_bon,cat", "--run-dir",
                  str(run_dir), "--no-progress", "--json", "--equivalence", "string", *ROLE_ARGS],
                 eval_cli.add_arguments)
    assert eval_cli.run(args) == 0
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3
    out = capsys.readouterr()
    # The DSPy cache holds raw completions by design; results.jsonl: see test_eval_results_file_is_redacted.
    published = [*mlflow_files(tmp_path), *(p for p in run_dir.iterdir() if p.name not in ("dspy_cache",
                                                                                          "results.jsonl"))]
    assert not leaks(published, caplog.text, out.err)


def test_solve_records_traces(monkeypatch):
    _solve(monkeypatch)
    assert all_traces()


def test_eval_results_file_is_redacted(tmp_path):
    from cat_dspy.datasets import Item
    from cat_dspy.evaluation.runner import build_programs, run_eval

    programs = build_programs(leaky_roles(), mode="verifiable", g=1)
    run_eval([Item("q1", "What is 2+2?", "4")], programs, [1], ["single"], tmp_path / "run", progress=False,
             cache=False)
    assert not leaks([tmp_path / "run" / "results.jsonl"])
