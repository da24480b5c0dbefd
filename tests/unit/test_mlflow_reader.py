"""What a reader meets in MLflow: the experiment opens on the runs table, accuracy vs G is a chart (G is the step),
runs carry the real span of their work, no param reads "None", and ``eval --traces`` records DSPy traces."""

from __future__ import annotations

import json
import time

import mlflow

from cat_dspy import cli, tracking
from cat_dspy.cli import common
from cat_dspy.testing import scripted_lm


def test_experiment_is_tagged_to_open_on_the_runs_table_and_a_chosen_kind_is_kept():
    tracking.setup("reader")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("reader")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    client.set_experiment_tag(experiment.experiment_id, tracking.EXPERIMENT_KIND_TAG, "genai_development")
    tracking.setup("reader")
    assert client.get_experiment_by_name("reader").tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


def test_params_whose_value_is_none_are_left_out():
    with tracking.run("reader") as active:
        tracking.log_params({"program": None, "seed": 0, "top_k": None, "flag": False})
    params = mlflow.get_run(active.info.run_id).data.params
    assert params == {"seed": "0", "flag": "False"}


def test_timed_run_records_the_given_span_and_nests_under_the_active_run():
    start, end = time.time() - 3600, time.time() - 1800
    with tracking.run("reader") as parent:
        with tracking.timed_run("child", start, end, nested=True, tags={"k": "v"}) as child:
            mlflow.log_metric("x", 1.0)
    info = mlflow.get_run(child.info.run_id)
    assert info.info.start_time == int(start * 1000) and info.info.end_time == int(end * 1000)
    assert info.info.status == "FINISHED" and info.data.metrics == {"x": 1.0}
    assert info.data.tags["mlflow.parentRunId"] == parent.info.run_id and info.data.tags["k"] == "v"


def _scripted(monkeypatch):
    def build_roles(args):
        return {"policy": scripted_lm(lambda p: "so \\boxed{3}" if "1+2" in p else "\\boxed{5}"),
                "anchor": scripted_lm(lambda p: "\\boxed{3}"), "judge": scripted_lm(lambda p: "no")}

    monkeypatch.setattr(common, "build_roles", build_roles)


def test_eval_logs_accuracy_with_g_as_step_and_children_span_the_evaluation(tmp_path, monkeypatch):
    _scripted(monkeypatch)
    data = tmp_path / "qs.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "3"}) + "\n" for q in ("1+2?", "0+3?")))
    before = time.time()
    assert cli.main(["eval", "--dataset", str(data), "--g", "1,2,4", "--methods", "single,majority,cat",
                     "--experiment", "steps", "--no-progress"]) == 0
    runs = mlflow.search_runs(experiment_names=["steps"], output_format="list")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 9
    history = mlflow.MlflowClient().get_metric_history(parent.info.run_id, "accuracy/majority")
    # question 1+2 is right (3), 0+3 wrong (5): majority accuracy 0.5 at every G, one point per G
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.5), (4, 0.5)]
    assert {m.step for m in mlflow.MlflowClient().get_metric_history(parent.info.run_id, "accuracy/cat")} == {1, 2, 4}
    # every child spans the evaluation: it starts when the parent does (not when it was logged) and ends before it
    for child in children:
        assert parent.info.start_time <= child.info.start_time <= child.info.end_time <= parent.info.end_time
        assert child.info.start_time <= parent.info.start_time + 1000  # started with the evaluation
        assert "None" not in child.data.params.values()
    assert parent.info.start_time >= int(before * 1000) - 1000
    assert "program" not in parent.data.params  # None: left out
    assert not mlflow.search_traces(locations=[parent.info.experiment_id], return_type="list")


def test_eval_traces_records_dspy_traces_in_the_parent_run(tmp_path, monkeypatch):
    _scripted(monkeypatch)
    data = tmp_path / "qs.jsonl"
    data.write_text(json.dumps({"question": "1+2?", "answer": "3"}) + "\n")
    assert cli.main(["eval", "--dataset", str(data), "--g", "2", "--methods", "single,cat",
                     "--experiment", "traced", "--no-progress", "--traces"]) == 0
    runs = mlflow.search_runs(experiment_names=["traced"], output_format="list")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    traces = mlflow.search_traces(locations=[parent.info.experiment_id], return_type="list")
    assert traces, "no DSPy trace recorded"
    assert {t.info.request_metadata.get("mlflow.sourceRun") for t in traces} == {parent.info.run_id}
    spans = [s.name for t in traces for s in t.data.spans]
    assert any("Rollout" in name for name in spans) and any("Synthesize" in name for name in spans), spans
