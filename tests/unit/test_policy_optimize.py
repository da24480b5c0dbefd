"""``optimize --target policy`` on scripted engines: the label-free metrics read no label, GEPA's feedback names the
disagreement, references and calls are cached, and the saved program loads into solve, CaT and Solver."""

from __future__ import annotations

import inspect
import json
import re
import threading

import dspy
import pytest

from cat_dspy import cli
from cat_dspy.modules import CaT
from cat_dspy.modules.solver import Solver
from cat_dspy.optimization.label_free import CaTAgreement, MajorityAgreement, build_references, inputs_key
from cat_dspy.optimization.metrics import AnswerMetric
from cat_dspy.testing import scripted_lm

UNIFIED = "# SUMMARY ok\n# UNIFIED RESPONSE\nTherefore, the final answer is: $\\boxed{{{}}}$. I hope it is correct."
QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")


def _five(metric, gold, pred):
    return metric(gold, pred, None, "generate", [(None, {}, pred)])


# --- the metrics ----------------------------------------------------------------------------------------------


def _references(rollouts, reference, question="What is 7 + 5?"):
    return {inputs_key({"question": question}): {"question": question, "rollouts": rollouts, "reference": reference}}


def test_label_free_metrics_take_both_contracts_and_read_no_label():
    refs = _references(["\\boxed{12}", "\\boxed{11}", "\\boxed{12}"], UNIFIED.format(11))
    for metric in (CaTAgreement(refs), MajorityAgreement(refs), AnswerMetric()):
        inspect.signature(metric).bind(None, None, None, None, None)
        inspect.signature(metric).bind(None, None)
    dspy.GEPA(metric=CaTAgreement(refs), reflection_lm=scripted_lm(["x"]), max_metric_calls=4)  # accepted

    class NoLabel(dspy.Example):
        def __getattr__(self, name):
            if name == "answer":
                raise AssertionError("the metric read the label")
            return super().__getattr__(name)

        def get(self, key, default=None):
            assert key != "answer", "the metric read the label"
            return super().get(key, default)

    gold = NoLabel(question="What is 7 + 5?", answer="12").with_inputs("question")
    eleven, twelve = dspy.Prediction(response="\\boxed{11}"), dspy.Prediction(response="so \\boxed{12}")
    assert CaTAgreement(refs)(gold, eleven) == 1.0 and CaTAgreement(refs)(gold, twelve) == 0.0  # the reference: 11
    assert MajorityAgreement(refs)(gold, twelve) == 1.0 and MajorityAgreement(refs)(gold, eleven) == 0.0
    with pytest.raises(KeyError, match="no reference"):
        CaTAgreement(refs)(dspy.Example(question="What is 1 + 1?").with_inputs("question"), twelve)


def test_gepa_feedback_names_the_disagreement():
    refs = _references(["7 + 5 = 12", "7 + 5 = 13", "it is 12"], "... so 7 + 5 = 13.")
    gold = dspy.Example(question="What is 7 + 5?").with_inputs("question")
    cat = _five(CaTAgreement(refs, extraction="flexible"), gold, dspy.Prediction(response="7 + 5 = 12"))
    assert cat.score == 0.0
    assert cat.feedback.startswith("Disagrees: the final answer is 12, but the reference answer")
    assert "is 13" in cat.feedback and "answered: 12, 13, 12" in cat.feedback
    majority = _five(MajorityAgreement(refs, extraction="flexible"), gold, dspy.Prediction(response="13"))
    assert "but the majority answer (2 of 3 samples of the base program) is 12" in majority.feedback
    agree = _five(CaTAgreement(refs, extraction="flexible"), gold, dspy.Prediction(response="13"))
    assert agree.score == 1.0 and "matches" in agree.feedback
    none = _five(CaTAgreement(refs, extraction="flexible"), gold, dspy.Prediction(response="no idea"))
    assert none.score == 0.0 and "No final answer" in none.feedback and "The reference answer" in none.feedback
    unscored = _five(CaTAgreement(refs), gold, dspy.Prediction(response="\\boxed{13}"))  # strict: no box, no answer
    assert unscored.score == 0.0 and unscored.feedback.startswith("The reference answer")


def test_rubric_feedback_lists_the_unmet_criteria():
    from cat_dspy.modules import Judge

    question = "My ankle hurts"
    refs = {inputs_key({"question": question}): {"question": question, "rollouts": ["rest"], "reference": "Rest, ice.",
                                                 "criteria": ["mentions rest", "mentions ice"]}}

    def verdict(prompt):
        response = re.search(r"<response>\n(.*?)\n</response>", prompt, re.S).group(1)
        criterion = re.search(r"<criterion>\n(.*?)\n</criterion>", prompt, re.S).group(1)
        return "yes" if criterion.removeprefix("mentions ") in response else "no"

    metric = CaTAgreement(refs, judge=Judge(per_criterion=True, lm=scripted_lm(verdict)))
    result = _five(metric, dspy.Example(question=question).with_inputs("question"), dspy.Prediction(response="rest"))
    assert result.score == 0.5 and "Unmet criteria: 'mentions ice'." in result.feedback


def test_gepa_rewrites_the_policy_instruction_from_the_cat_feedback():
    def policy(prompt):
        a, b = map(int, QUESTION.findall(prompt)[-1])
        return f"{a} + {b} = {a + b if 'CAREFUL' in prompt else a + b + 1}"

    reflections = []

    def reflect(prompt):
        reflections.append(prompt)
        return json.dumps({"new_instruction": "CAREFUL: add the two numbers."})

    questions = [f"What is {i} + {i}?" for i in range(1, 4)]
    refs = {k: v for q in questions for k, v in _references([], f"so {2 * int(q.split()[2])}", q).items()}
    for record in refs.values():
        record["rollouts"] = [record["reference"]]
    examples = [dspy.Example(question=q).with_inputs("question") for q in questions]
    optimizer = dspy.GEPA(metric=CaTAgreement(refs, extraction="flexible"), reflection_lm=scripted_lm(reflect),
                          max_metric_calls=12, reflection_minibatch_size=2, num_threads=1, seed=0)
    with dspy.context(lm=scripted_lm(policy)):
        compiled = optimizer.compile(Solver(extraction="flexible"), trainset=examples, valset=examples)
    assert compiled.generate.signature.instructions.startswith("CAREFUL")
    assert any("but the reference answer" in r for r in reflections)  # the CaT feedback reached the reflection LM


# --- references: once per question, cached, resumed -----------------------------------------------------------


def _roles(cache=False):
    """Policy: "What is a + b?" -> the k-th sample of a question says a + b, a + b, a + b + 1, a + b, ... (a majority
    of a + b); the anchor takes the largest boxed answer when a is even, the smallest when a is odd."""
    counts, lock = {}, threading.Lock()

    def policy(prompt):
        a, b = map(int, QUESTION.findall(prompt)[-1])
        with lock:
            k = counts[(a, b)] = counts.get((a, b), -1) + 1
        return f"{a} plus {b} is \\boxed{{{a + b + (k % 4 == 2)}}}"

    def anchor(prompt):
        answers = [int(x) for x in re.findall(r"\\boxed\{(\d+)\}", prompt.rsplit("<rollouts>", 1)[-1])]
        a = int(re.search(r"(\d+) plus", prompt.rsplit("<rollouts>", 1)[-1]).group(1))
        return UNIFIED.format(max(answers) if a % 2 == 0 else min(answers))

    return {"policy": scripted_lm(policy, cache=cache), "anchor": scripted_lm(anchor, cache=cache),
            "judge": scripted_lm(["yes"], cache=cache)}


def _data(path, poison=False):
    rows = [{"question": f"What is {a} + {a + 3}?", "answer": "zzz" if poison else str(2 * a + 3)}
            for a in range(1, 11)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _argv(data, tmp, name, metric, *extra):
    return ["optimize", "--target", "policy", "--metric", metric, "--dataset", str(data), "--train", "6", "--g", "3",
            "--demos", "2", "--threads", "2", "--seed", "1", "--out", str(tmp / f"{name}.json"), "--cache",
            str(tmp / f"cache-{name}"), "--run-dir", str(tmp / f"run-{name}"), "--no-progress", *extra]


@pytest.mark.parametrize("metric", ["cat", "majority"])
def test_a_label_poisoned_dataset_gives_the_same_program(metric, tmp_path, monkeypatch):
    data = tmp_path / "arith.jsonl"
    saved = {}
    for poison in (False, True):
        _data(data, poison)  # the same path: the saved provenance names it
        lms = _roles()
        monkeypatch.setattr("cat_dspy.cli.optimize.build_roles", lambda args, lms=lms: lms)
        name = f"{metric}-{poison}"
        assert cli.main(_argv(data, tmp_path, name, metric)) == 0
        saved[poison] = (tmp_path / f"{name}.json").read_text()
    assert saved[False] == saved[True]
    assert len(json.loads(saved[False])["rollout.generate"]["demos"]) == 2


def test_the_gold_metric_reads_the_labels_and_the_label_free_ones_differ_from_it(tmp_path, monkeypatch):
    """The poisoning test can tell: the gold metric finds no demo on garbage labels; cat and majority keep different
    demos (the anchor sides with the minority answer on even a)."""
    data = tmp_path / "arith.jsonl"
    demos = {}
    for metric, poison in (("gold", False), ("gold", True), ("cat", False), ("majority", False)):
        _data(data, poison)
        lms = _roles()
        monkeypatch.setattr("cat_dspy.cli.optimize.build_roles", lambda args, lms=lms: lms)
        assert cli.main(_argv(data, tmp_path, f"{metric}-{poison}", metric)) == 0
        state = json.loads((tmp_path / f"{metric}-{poison}.json").read_text())
        demos[metric, poison] = [d["question"] for d in state["rollout.generate"]["demos"]]
        assert state["cat_dspy"]["metric"] == metric and state["cat_dspy"]["target"] == "policy"
    assert len(demos["gold", False]) == 2 and demos["gold", True] == []
    assert demos["cat", False] != demos["majority", False]


def test_references_and_calls_are_cached_and_a_rerun_makes_no_lm_call(tmp_path, monkeypatch, capsys):
    data = _data(tmp_path / "arith.jsonl")
    lms = _roles(cache=True)
    monkeypatch.setattr("cat_dspy.cli.optimize.build_roles", lambda args: lms)
    monkeypatch.setattr("cat_dspy.cli.solve.build_roles", lambda args: lms)
    argv = _argv(data, tmp_path, "p", "cat", "--test", "2")
    assert cli.main(argv) == 0
    [cache] = (tmp_path / "cache-p").glob("policy-references-*.jsonl")
    assert len(cache.read_text().splitlines()) == 6
    calls = {role: lm.engine_script.calls for role, lm in lms.items()}
    assert calls["policy"] >= 6 * 3 and calls["anchor"] == 6
    report = json.loads((tmp_path / "p.report.json").read_text())
    assert report["usage"]["references"]["calls"] == 6 * 3 + 6 and report["test_single"]["n"] == 2
    first = capsys.readouterr().out

    assert cli.main(argv) == 0  # the JSONL references and the run folder's DSPy cache serve everything
    assert {role: lm.engine_script.calls for role, lm in lms.items()} == calls
    assert capsys.readouterr().out.splitlines()[0] == first.splitlines()[0]
    rerun = json.loads((tmp_path / "p.report.json").read_text())
    assert all(u["calls"] == 0 for u in rerun["usage"].values())

    # The saved program is a CaT program: solve loads it, and so do CaT and Solver from Python.
    out = tmp_path / "p.json"
    assert cli.main(["solve", "What is 20 + 23?", "--g", "2", "--program", str(out), "--json"]) == 0
    demos = json.loads(out.read_text())["rollout.generate"]["demos"]
    assert demos and demos[0]["response"] in lms["policy"].engine_script.prompts[-1]
    cat = CaT(g=2)
    cat.load(str(out))
    solver = Solver()
    solver.load(str(out))
    assert solver.generate.demos == cat.rollout.generate.demos and len(solver.generate.demos) == len(demos)


class Killed(BaseException):
    """A kill in the middle of a run (not an LM failure: nothing catches it)."""


def test_a_killed_run_resumes_without_recomputing_finished_questions(tmp_path):
    from cat_dspy.evaluation.runner import dspy_cache_in
    from cat_dspy.optimization.compile import JsonlCache

    examples = [dspy.Example(question=f"What is {a} + {a + 3}?").with_inputs("question") for a in range(1, 7)]
    lms = _roles(cache=True)
    real = lms["policy"].engine_script._fn
    state = {"calls": 0, "kill_at": 10}

    def dying(prompt):
        state["calls"] += 1
        if state["calls"] == state["kill_at"]:
            raise Killed
        return real(prompt)

    lms["policy"].engine_script._fn = dying
    cat = CaT(g=3, policy=lms["policy"], anchor=lms["anchor"])

    def build():
        cache = JsonlCache(tmp_path / "refs", "policy-references", {"k": 1})
        with dspy_cache_in(tmp_path / "dspy_cache"), dspy.context(lm=lms["policy"]):
            return build_references(examples, Solver(), cat, cache, g=3, lm=lms["policy"], temperature=1.0,
                                    threads=1)

    with pytest.raises(Killed):
        build()
    [path] = (tmp_path / "refs").glob("*.jsonl")
    finished = len(path.read_text().splitlines())
    assert 0 < finished < 6  # the questions that finished were written; the one whose call died was not
    before = state["calls"]
    references = build()
    assert len(references) == 6
    assert state["calls"] - before <= (6 - finished) * 3  # only the unfinished questions' calls (some were cached)
    assert lms["anchor"].engine_script.calls == 6


# --- a user's program: --module, and the Python example ------------------------------------------------------


def _load_program_example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "programs" / "policy_program.py"
    spec = importlib.util.spec_from_file_location("policy_program", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def test_a_scripts_module_is_optimized_saved_and_loaded_by_its_class(tmp_path, monkeypatch):
    example, path = _load_program_example()
    data = _data(tmp_path / "arith.jsonl", poison=True)
    lms = _roles()
    monkeypatch.setattr("cat_dspy.cli.optimize.build_roles", lambda args: lms)
    argv = _argv(data, tmp_path, "module", "cat", "--module", f"{path}:ShortAnswer")
    assert cli.main(argv) == 0
    state = json.loads((tmp_path / "module.json").read_text())
    assert set(state) - {"metadata"} == {"answer"} and state["answer"]["demos"]
    loaded = example.ShortAnswer()
    loaded.load(str(tmp_path / "module.json"))
    assert loaded.answer.demos and "[[ ##" not in lms["policy"].engine_script.prompts[-1]  # its own free-text adapter
    with pytest.raises(SystemExit, match=r"FILE\.py:NAME"):
        cli.main(_argv(data, tmp_path, "bad", "cat", "--module", "no_such_file.py:X"))


def test_the_python_example_optimizes_a_users_program_with_the_cat_metric(tmp_path):
    example, _ = _load_program_example()
    lms = _roles()
    optimized = example.main(str(tmp_path / "short.json"), lms=lms)
    assert len(optimized.answer.demos) == 2 and (tmp_path / "short.json").is_file()
    assert lms["anchor"].engine_script.calls == 8  # one reference per question


# --- the measurement's aggregator (experiments/policy_opt.py) on hand-made result files ----------------------


def test_policy_opt_aggregates_paired_differences_and_the_share_recovered(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / "policy_opt.py"
    spec = importlib.util.spec_from_file_location("policy_opt", path)
    policy_opt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(policy_opt)
    ids = [f"q{i}" for i in range(10)]
    right = {"unoptimized": 2, "cat": 5, "majority": 4, "gold": 8}  # questions right out of 10, every seed
    folder = tmp_path / "policy-opt"
    folder.mkdir()
    for arm, k in right.items():
        for seed in (0, 1, 2):
            values = [1.0 if i < k else 0.0 for i in range(10)]
            result = {"arm": arm, "seed": seed, "started": 0.0, "finished": 1.0,
                      "heldout": {"ids": ids, "rollouts": values, "majority": values},
                      "calls": {"eval": 40, **({"optimize.references": 20, "optimize.train-base": 4}
                                               if arm != "unoptimized" else {})},
                      "seconds": {"optimize": 0.0 if arm == "unoptimized" else 10.0, "eval": 5.0},
                      "demos": [{"right": True}, {"right": arm == "gold"}] if arm != "unoptimized" else []}
            (folder / f"{arm}-seed{seed}.json").write_text(json.dumps(result))
    summary = policy_opt.aggregate(results=tmp_path, log=False)
    assert summary["recovered"]["rollouts"]["share"] == pytest.approx(0.5)  # (0.5 - 0.2) / (0.8 - 0.2)
    rows = {r["arm"]: r for r in summary["tables"]["rollouts"]}
    assert rows["cat"]["vs_unoptimized_by_question"]["mean"] == pytest.approx(0.3)
    assert rows["cat"]["vs_majority_by_question"]["mean"] == pytest.approx(0.1)
    assert summary["cost"]["cat"]["optimize_calls"] == 24 and summary["cost"]["unoptimized"]["optimize_calls"] == 0
    text = (folder / "summary.md").read_text()
    assert "| CaT metric (0, 1, 2) | 0.500 ± 0.000" in text and "| gold metric (0, 1, 2)" in text
    assert "3/6" in text and (folder / "policy_opt.png").is_file()
