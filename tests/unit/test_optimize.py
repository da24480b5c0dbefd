"""Optimizing CaT's prompts on scripted engines: the metrics (both DSPy contracts), compiles, save/load, the CLI."""

from __future__ import annotations

import inspect
import json
import re

import dspy
import pytest
from components import require_component

from cat_dspy import cli
from cat_dspy.modules import CaT, Judge
from cat_dspy.optimization.compile import compile_target
from cat_dspy.optimization.metrics import JudgeMetric, RubricMetric, SynthesisMetric, compare, contrast
from cat_dspy.testing import scripted_lm

UNIFIED = "# SUMMARY ok\n# UNIFIED RESPONSE\nTherefore, the final answer is: $\\boxed{{{}}}$. I hope it is correct."


def _five(metric, gold, pred):
    return metric(gold, pred, None, "synthesize", [(None, {}, pred)])


# --- metrics -------------------------------------------------------------------------------------------------


def test_every_metric_takes_gepas_five_arguments():
    for metric in (SynthesisMetric(), RubricMetric(judge=Judge()), JudgeMetric()):
        inspect.signature(metric).bind(None, None, None, None, None)
        inspect.signature(metric).bind(None, None)
        assert metric.__name__ == type(metric).__name__
    dspy.GEPA(metric=SynthesisMetric(), reflection_lm=scripted_lm(["x"]), max_metric_calls=4)  # accepted


def test_synthesis_metric_scores_and_explains():
    gold = dspy.Example(rollouts=["a \\boxed{7}", "b \\boxed{9}", "c \\boxed{9}"], answer="7").with_inputs("rollouts")
    metric = SynthesisMetric()
    right = dspy.Prediction(reference=UNIFIED.format(7), answer="7")
    assert metric(gold, right) == 1.0 and metric(gold, right, trace=[]) == 1.0
    result = _five(metric, gold, right)
    assert isinstance(result, dspy.Prediction) and result.score == 1.0
    assert "kept a minority answer 7 (1 of 3 rollouts)" in result.feedback

    wrong = _five(metric, gold, dspy.Prediction(reference=UNIFIED.format(9), answer="9"))
    assert wrong.score == 0.0
    assert "correct answer is 7" in wrong.feedback
    assert "Rollouts: 1 right (answer 7); 2 wrong (answer 9); 3 wrong (answer 9)." in wrong.feedback
    assert "kept the majority answer 9 (2 of 3 rollouts) and dropped the correct minority answer of rollout 1" in (
        wrong.feedback
    )
    unboxed = _five(metric, gold, dspy.Prediction(reference="I think it is seven.", answer=None))
    assert unboxed.score == 0.0 and "\\boxed{ANSWER}" in unboxed.feedback
    new = _five(metric, gold, dspy.Prediction(reference=UNIFIED.format(8), answer="8"))
    assert "new answer 8 that no rollout gave" in new.feedback


def test_synthesis_metric_without_any_right_rollout():
    gold = dspy.Example(rollouts=["\\boxed{1}", "no answer here"], answer="2")
    result = _five(SynthesisMetric(), gold, dspy.Prediction(reference="\\boxed{1}", answer="1"))
    assert "2 wrong (no final answer)" in result.feedback
    assert "no rollout was right" in result.feedback


def _keyword_judge():
    """Per-criterion judge: a criterion 'mentions X' is met when X occurs in the response."""

    def verdict(prompt):
        response = re.search(r"<response>\n(.*?)\n</response>", prompt, re.S).group(1)
        criterion = re.search(r"<criterion>\n(.*?)\n</criterion>", prompt, re.S).group(1)
        return "yes" if criterion.removeprefix("mentions ") in response else "no"

    return Judge(per_criterion=True, lm=scripted_lm(verdict))


def test_rubric_metric_is_auc_and_names_criteria_that_fail_to_separate():
    gold = dspy.Example(
        reference="r",
        rollouts=["42 polite", "41 polite", "40"],
        correct=[True, False, False],
        answer="42",
    ).with_inputs("reference")
    metric = RubricMetric(judge=_keyword_judge(), min_criteria=3)
    good = dspy.Prediction(criteria=["mentions 42", "mentions polite", "mentions 4"])
    assert metric(gold, good) == 1.0  # rewards 1, 2/3, 1/3
    result = _five(metric, gold, good)
    assert "'mentions 4' (met by 1/1 correct, 2/2 incorrect)" in result.feedback.split("fail to separate")[1]
    assert "Criteria that separate them: 'mentions 42'" in result.feedback
    assert "correct final answer is 42" in result.feedback

    blind = _five(metric, gold, dspy.Prediction(criteria=["mentions polite"]))
    assert blind.score == 0.75  # 42 vs 41 tie (0.5), 42 vs 40 win (1)
    assert "Only 1 criteria; write at least 3" in blind.feedback
    empty = _five(metric, gold, dspy.Prediction(criteria=[]))
    assert empty.score == 0.0 and "<criterion>" in empty.feedback


def test_judge_metric_agreement_and_feedback():
    gold = dspy.Example(response="Rest.", criteria=["rest", "ice", "call 911"], expected=[True, False, False])
    metric = JudgeMetric()
    assert metric(gold, dspy.Prediction(verdicts=[True, False, False], unread=0)) == 1.0
    result = _five(metric, gold, dspy.Prediction(verdicts=[False, False], unread=1))
    assert result.score == pytest.approx(2 / 3)
    assert "Criterion 1 'rest': the reference says yes, the judge said no." in result.feedback
    assert "1 verdicts could not be read" in result.feedback


def test_contrast_and_compare():
    assert contrast(["\\boxed{5}", "\\boxed{5}"], [True, True], "5") == (
        ["\\boxed{5}", "\\boxed{5}", "\\boxed{6}"],
        [True, True, False],
    )
    assert contrast(["\\boxed{5}", "\\boxed{4}"], [True, False], "5")[1] == [True, False]
    report = compare([0, 0, 1, 1], [1, 0, 1, 1])
    assert report["difference"]["mean"] == 0.25 and report["difference"]["se"] == pytest.approx(0.25)


# --- compile, save, load -------------------------------------------------------------------------------------


def _trainset(n=3):
    return [
        dspy.Example(rollouts=[f"TRAIN-{i} \\boxed{{4}}", f"other-{i} \\boxed{{5}}"], answer="4").with_inputs(
            "rollouts"
        )
        for i in range(n)
    ]


def test_bootstrap_demos_render_through_the_free_text_adapter_and_survive_save_load(tmp_path):
    anchor = scripted_lm([UNIFIED.format(4)])
    program = CaT(g=2, anchor=anchor, judge=scripted_lm(["yes"]))
    metric = SynthesisMetric()
    optimizer = dspy.BootstrapFewShot(metric=metric, metric_threshold=metric.threshold, max_bootstrapped_demos=2,
                                      max_labeled_demos=0)
    judge_one = program.judge.judge_one
    compiled = compile_target(program, "synthesize", optimizer, _trainset(), [])
    assert program.synthesize is compiled and compiled.lm is anchor and not compiled._compiled
    assert len(compiled.synthesize.demos) == 2
    assert program.judge.judge_one is judge_one

    path = tmp_path / "p.json"
    program.provenance = {"optimizer": "bootstrap"}
    program.save(str(path))  # DSPy's own save: the prompts' state, plus how the program reads answers
    state = json.loads(path.read_text())
    assert len(state["synthesize.synthesize"]["demos"]) == 2
    assert state["cat_dspy"] == {"optimizer": "bootstrap", "mode": "verifiable", "question_aware": False,
                                 "extraction": "strict"}

    fresh_anchor = scripted_lm([UNIFIED.format(4)])
    fresh = CaT(g=2, anchor=fresh_anchor)
    fresh.load(str(path))
    assert fresh.provenance == {"optimizer": "bootstrap"}
    pred = fresh.synthesize(rollouts=["TEST \\boxed{4}", "TEST \\boxed{3}"])
    assert pred.answer == "4"
    prompt = fresh_anchor.engine_script.prompts[-1]
    assert "TRAIN-0" in prompt and "TRAIN-1" in prompt and prompt.count("UNIFIED RESPONSE") >= 3
    assert "[[ ##" not in prompt  # FreeTextAdapter, not ChatAdapter
    base_anchor = scripted_lm([UNIFIED.format(4)])
    CaT(g=2, anchor=base_anchor).synthesize(rollouts=["TEST \\boxed{4}"])
    assert "TRAIN-0" not in base_anchor.engine_script.prompts[-1]


def test_gepa_rewrites_the_instruction_from_feedback(tmp_path):
    def anchor_fn(prompt):
        return UNIFIED.format(4 if "MAGIC" in prompt else 5)

    reflections = []

    def reflect(prompt):
        reflections.append(prompt)
        return json.dumps({"new_instruction": "MAGIC: keep the answer the rollouts agree on."})

    program = CaT(g=2, anchor=scripted_lm(anchor_fn))
    optimizer = dspy.GEPA(metric=SynthesisMetric(), reflection_lm=scripted_lm(reflect), max_metric_calls=12,
                          reflection_minibatch_size=2, num_threads=1, seed=0)
    compiled = compile_target(program, "synthesize", optimizer, _trainset(2), _trainset(2))
    assert compiled.synthesize.signature.instructions.startswith("MAGIC")
    assert any("correct answer is 4" in r for r in reflections)  # the metric's feedback reached the reflection LM
    path = tmp_path / "g.json"
    program.save(str(path))
    fresh_anchor = scripted_lm(anchor_fn)
    loaded = CaT(anchor=fresh_anchor)
    loaded.load(str(path))
    assert loaded.synthesize(rollouts=["x"]).answer == "4"


def test_judge_compile_tunes_only_the_prompt_the_judge_calls():
    judge_lm = scripted_lm(['<verdict id="1">yes</verdict> <verdict id="2">no</verdict>'])
    program = CaT(g=2, mode="rubric", judge=judge_lm)
    metric = JudgeMetric()
    trainset = [
        dspy.Example(response=f"r{i}", criteria=["a", "b"], expected=[True, False]).with_inputs("response", "criteria")
        for i in range(2)
    ]
    optimizer = dspy.BootstrapFewShot(metric=metric, metric_threshold=1.0, max_bootstrapped_demos=2,
                                      max_labeled_demos=0)
    compiled = compile_target(program, "judge", optimizer, trainset, [])
    assert len(compiled.judge_all.demos) == 2 and compiled.judge_one.demos == []
    assert {name for name, _ in program.named_predictors()} >= {"judge.judge_all", "judge.judge_one"}


# --- the command line ----------------------------------------------------------------------------------------


@pytest.fixture
def gsm_file(tmp_path):
    path = tmp_path / "arith.jsonl"
    lines = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 9)]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return path


def _scripted_roles(monkeypatch):
    """Policy answers 2i for 'What is i + i?'; the anchor copies the first rollout's answer."""

    def policy(prompt):
        i = int(re.search(r"What is (\d+) \+", prompt).group(1))
        return f"{i} plus {i} is \\boxed{{{2 * i}}}"

    def anchor(prompt):
        tail = prompt.rsplit("<rollouts>", 1)[-1]
        return UNIFIED.format(re.search(r"\\boxed\{(\d+)\}", tail).group(1))

    lms = {"policy": scripted_lm(policy), "anchor": scripted_lm(anchor), "judge": scripted_lm(["yes"])}
    monkeypatch.setattr("cat_dspy.cli.optimize.build_roles", lambda args: lms)
    monkeypatch.setattr("cat_dspy.cli.solve.build_roles", lambda args: lms)
    return lms


def test_cli_optimizes_saves_reports_and_solve_loads_the_program(tmp_path, gsm_file, monkeypatch, capsys):
    import mlflow

    lms = _scripted_roles(monkeypatch)
    out = tmp_path / "opt" / "synth.json"
    argv = ["optimize", "--target", "synthesize", "--dataset", str(gsm_file), "--train", "3", "--dev", "1",
            "--test", "2", "--g", "2", "--out", str(out), "--cache", str(tmp_path / "cache"), "--seed", "1"]
    assert cli.main(argv) == 0
    assert "held-out base: 1.000" in capsys.readouterr().out
    state = json.loads(out.read_text())
    assert len(state["synthesize.synthesize"]["demos"]) == 2 and state["cat_dspy"]["optimizer"] == "bootstrap"
    report = json.loads((tmp_path / "opt" / "synth.report.json").read_text())
    assert report["n"] == 2 and report["optimized"]["mean"] == 1.0 and "rollout_baselines" in report
    assert len(list((tmp_path / "cache").glob("rollouts-*.jsonl"))) == 1

    run = mlflow.search_runs(experiment_names=["cat-dspy-optimize"], filter_string="tags.mlflow.runName = "
                             "'optimize-synthesize-bootstrap'", output_format="list")[0]
    assert run.data.params["cat.target"] == "synthesize" and run.data.metrics["test.optimized.mean"] == 1.0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "program")}
    assert "program/synth.json" in artifacts

    calls = lms["policy"].engine_script.calls
    assert cli.main(argv) == 0  # rollouts come from the cache
    assert lms["policy"].engine_script.calls == calls

    assert cli.main(["solve", "What is 17 + 17?", "--g", "2", "--program", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reference_answer"] == "34"
    assert lms["anchor"].engine_script.prompts[-1].count("UNIFIED RESPONSE") >= 3  # demos in the prompt


def test_cli_rubric_and_judge_targets(tmp_path, gsm_file, monkeypatch):
    lms = _scripted_roles(monkeypatch)
    rubric = "<rubric>" + "".join(f"<criterion>mentions {w}</criterion>" for w in ("plus", "is", "2")) + "</rubric>"
    lms["anchor"] = scripted_lm(
        lambda p: rubric if "grading rubric" in p else UNIFIED.format(re.search(r"\\boxed\{(\d+)\}", p).group(1))
    )
    out = tmp_path / "rubric.json"
    argv = ["optimize", "--target", "rubric", "--dataset", str(gsm_file), "--train", "2", "--dev", "1", "--test",
            "1", "--g", "2", "--out", str(out), "--cache", "none"]
    assert cli.main(argv) == 0
    assert json.loads(out.read_text())["cat_dspy"]["mode"] == "rubric"

    health = tmp_path / "health.jsonl"
    records = [
        {"question": [{"role": "user", "content": f"question {i}"}], "rubrics": [
            {"criterion": f"advises rest {i}", "points": 5, "tags": []},
            {"criterion": f"recommends surgery {i}", "points": -5, "tags": []}],
         "ideal_completions_data": {"ideal_completion": f"Rest well {i}."}}
        for i in range(4)
    ]
    health.write_text("\n".join(json.dumps(r) for r in records))
    out = tmp_path / "judge.json"
    argv = ["optimize", "--target", "judge", "--dataset", str(health), "--train", "2", "--dev", "1", "--test", "1",
            "--criteria", "3", "--out", str(out), "--cache", "none"]
    assert cli.main(argv) == 0
    assert "judge.judge_all" in json.loads(out.read_text())


@pytest.mark.parametrize("optimizer", ["gepa", "mipro"])
def test_gepa_and_mipro_refuse_the_embedded_model_as_proposer_unless_asked(optimizer, gsm_file, monkeypatch):
    _scripted_roles(monkeypatch)
    base = ["optimize", "--target", "synthesize", "--dataset", str(gsm_file), "--optimizer", optimizer,
            "--train", "2", "--dev", "1", "--cache", "none"]
    with pytest.raises(SystemExit, match=f"--optimizer {optimizer} needs a capable proposal LM.*--reflection-lm"):
        cli.main(base)

    class Reached(Exception):
        pass

    def stop_at_optimizer(args, metric, proposer, task_lm):
        raise Reached(proposer)

    # Asked for: the proposal LM named by --reflection-lm (here "local", the embedded model forced) gets to the
    # optimizer, which is where this test stops.
    monkeypatch.setattr("cat_dspy.optimization.compile.make_optimizer", stop_at_optimizer)
    with pytest.raises(Reached) as reached:
        cli.main([*base, "--reflection-lm", "local"])
    assert reached.value.args[0].model.startswith("local")


def test_mipro_with_a_free_text_proposer(monkeypatch):
    require_component("optuna")
    import argparse

    from cat_dspy.adapters import FreeTextAdapter
    from cat_dspy.optimization.compile import make_optimizer

    program = CaT(g=2, anchor=scripted_lm(lambda p: UNIFIED.format(4 if "Reconcile" in p else 5)))
    proposer = scripted_lm(["Reconcile the rollouts and keep the answer they agree on."])
    args = argparse.Namespace(optimizer="mipro", budget="3", demos=1, threads=1, dev=2, seed=0, train=2)
    optimizer, extra = make_optimizer(args, SynthesisMetric(), proposer, program.synthesize.lm)
    with dspy.context(adapter=FreeTextAdapter()):  # what optimize() does for an embedded proposal LM
        compiled = compile_target(program, "synthesize", optimizer, _trainset(2), _trainset(2), **extra)
    assert "Reconcile" in compiled.synthesize.signature.instructions
    assert proposer.engine_script.calls > 0


@pytest.mark.needs_data("healthbench")
def test_judge_examples_from_healthbench_physician_rubrics(data_dir):
    import argparse

    from cat_dspy.datasets import load_dataset
    from cat_dspy.optimization.compile import ideal_completions
    from cat_dspy.optimization.metrics import judge_examples

    items = load_dataset("healthbench", data_dir=data_dir)[:20]
    ideals = ideal_completions(argparse.Namespace(data_dir=data_dir), items)
    assert len(ideals) >= 10  # most conversations carry a physician-written ideal completion
    examples = judge_examples(items, ideals, n_criteria=6, seed=0)
    assert len(examples) == len(ideals)
    for ex in examples:
        own = {r["criterion"]: r["points"] > 0 for i in items if i.id == ex.id for r in i.rubrics}
        assert len(ex.criteria) == 6 and ex.response == ideals[ex.id]
        assert all(own.get(c, False) == y for c, y in zip(ex.criteria, ex.expected, strict=True))
    assert examples == judge_examples(items, ideals, n_criteria=6, seed=0)  # seeded
