"""``cat-dspy eval`` and ``cat-dspy compare`` end to end on scripted roles: data checks, MLflow, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cat_dspy import cli
from cat_dspy.cli import common
from cat_dspy.testing import scripted_lm


@pytest.fixture
def scripted_roles(monkeypatch):
    """Replace the CLI's model construction by scripted engines (the policy answers 7, 7, 3; the anchor 3)."""
    made = {}

    def policy(prompt):
        if "<response id=" in prompt:  # self-BoN
            return "2"
        made["n"] = made.get("n", 0) + 1
        question = re.search(r"\d\+\d\?", prompt).group()
        return f"{question} ... \\boxed{{{(7, 7, 3, 3)[made['n'] % 4]}}}"

    def build_roles(args):
        made.update(policy=scripted_lm(policy, cache=True), anchor=scripted_lm(lambda p: "\\boxed{3}", cache=True),
                    judge=scripted_lm(lambda p: "no", cache=True))
        return {role: made[role] for role in ("policy", "anchor", "judge")}

    monkeypatch.setattr(common, "build_roles", build_roles)
    return made


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bad_data_line_fails_before_any_model_is_built(tmp_path, monkeypatch, capsys):
    def no_models(args):
        raise AssertionError("models were built before the data was validated")

    monkeypatch.setattr(common, "build_roles", no_models)
    data = write_jsonl(tmp_path / "bad.jsonl", [{"question": "1+2?", "answer": "3"}, '{"question": "oops"'])
    assert cli.main(["eval", "--dataset", str(data), "--no-progress"]) == 2
    assert re.search(r"bad\.jsonl:2: malformed JSON", capsys.readouterr().err)
    missing = write_jsonl(tmp_path / "noq.jsonl", [{"question": "1+2?", "answer": "3"}, {"answer": "4"}])
    assert cli.main(["eval", "--dataset", str(missing), "--no-progress"]) == 2
    assert "noq.jsonl:2: missing field 'question'" in capsys.readouterr().err


def test_eval_logs_parent_and_child_runs_and_compare_prints_them(tmp_path, scripted_roles, capsys):
    import mlflow

    data = write_jsonl(tmp_path / "qs.jsonl", [{"question": f"{i}+{3 - i}?", "answer": "3"} for i in range(3)])
    argv = ["eval", "--dataset", str(data), "--g", "1,2", "--methods", "single,majority,self_bon,min_ppl,cat",
            "--experiment", "smoke", "--no-progress", "--max-tokens", "16"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    run_dir = Path(re.search(r"run dir: (\S+)", out).group(1))
    assert run_dir.parent == Path("runs") / "smoke"
    assert len((run_dir / "results.jsonl").read_text().splitlines()) == 3
    assert (run_dir / "accuracy_vs_g.png").stat().st_size > 1000
    calls = scripted_roles["policy"].engine_script.calls
    assert calls == 3 * 2 + 3  # 2 rollouts per question + one self-BoN choice at G=2

    runs = mlflow.search_runs(experiment_names=["smoke"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 10
    assert parents[0].data.params["g"] == "[1, 2]" and parents[0].data.params["policy.model"] == "local"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents[0].info.run_id)}
    assert {"results_table.json", "accuracy_vs_g.png", "summary.json"} <= artifacts
    cat2 = next(r for r in children if r.data.params["method"] == "cat" and r.data.params["g"] == "2")
    assert cat2.data.metrics["accuracy"] == 1.0 and cat2.data.metrics["anchor.calls"] == 3
    assert {"stderr", "n", "policy.completion_tokens", "disagree_rate", "right_when_all_wrong"} <= set(
        cat2.data.metrics)

    assert cli.main(["compare", "--experiment", "smoke"]) == 0
    table = capsys.readouterr().out
    for method in ("single", "majority", "self_bon", "min_ppl", "cat"):
        assert len(re.findall(rf"│ {method}\s+│ [12] ", table)) == 2, table
    assert "1.000 ± 0.000" in table

    # The same command again: every question is re-read, no LM call is made, a second parent run is logged.
    assert cli.main(argv) == 0
    assert "3 resumed" in capsys.readouterr().out
    assert sum(scripted_roles[r].engine_script.calls for r in ("policy", "anchor", "judge")) == 0
    assert cli.main(["compare", "--experiment", "smoke", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 10 and len({r["parent_run_id"] for r in rows}) == 1
    assert cli.main(["compare", "--experiment", "nope"]) == 1


def test_every_eval_recipe_builds_valid_eval_commands():
    import argparse
    import importlib.util

    import yaml

    from cat_dspy.cli import eval as eval_cli

    root = Path(__file__).resolve().parents[2] / "experiments"
    spec = importlib.util.spec_from_file_location("run_eval_recipe", root / "run_eval_recipe.py")
    recipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipes)
    families = yaml.safe_load((root / "recipes" / "eval-families.yaml").read_text())
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    paths = sorted((root / "recipes").glob("eval-*.yaml"))
    assert len(paths) == 5
    for path in paths:
        if path.name == "eval-families.yaml":
            continue
        recipe = yaml.safe_load(path.read_text())
        for family in ("gemma3", "qwen3", "llama31"):
            for smoke in (False, True):
                for argv in recipes.recipe_commands(recipe, families, family, smoke=smoke):
                    args = parser.parse_args(argv[1:])
                    assert args.policy == ("local" if smoke else families["families"][family]["model"])
                    assert args.policy_top_k == families["families"][family]["sampling"]["top_k"]
                    assert (args.prompt_prefix == "/no_think ") == (family == "qwen3")
                    if smoke:
                        assert max(args.g) <= 2 and args.limit <= 2 and args.max_tokens <= 32


def test_before_after_pairs_questions_and_reports_the_difference():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "experiments" / "before_after.py"
    spec = importlib.util.spec_from_file_location("before_after", path)
    before_after = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before_after)

    def record(correct: bool, rollouts: list[bool]) -> dict:
        return {"results": [{"method": "cat", "g": 4, "correct": correct}], "rollout_correct": rollouts}

    before = {"a": record(False, [False] * 4), "b": record(True, [True, False, False, False]),
              "only-before": record(True, [True] * 4)}
    after = {"a": record(True, [True, True, False, False]), "b": record(True, [True] * 4)}
    rows = {r["method"]: r for r in before_after.paired(before, after)}
    assert rows["cat"]["n"] == 2 and rows["cat"]["before"]["mean"] == 0.5 and rows["cat"]["after"]["mean"] == 1.0
    assert rows["cat"]["difference"]["mean"] == 0.5 and rows["cat"]["difference"]["se"] == pytest.approx(0.5)
    assert rows["rollouts"]["before"]["mean"] == pytest.approx(0.125)
    assert rows["rollouts"]["difference"]["mean"] == pytest.approx((0.5 + 0.75) / 2)
    with pytest.raises(SystemExit, match="no finished question"):
        before_after.paired({"x": record(True, [True])}, after)
