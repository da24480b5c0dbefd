"""experiments/testtime.py on a tiny generated eval results file whose analyses are worked out by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("testtime", ROOT / "experiments" / "testtime.py")
testtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(testtime)


def record(qid: str, gold: str, rollouts: list[str], at4: dict[str, str]) -> dict:
    """A verifiable eval record: 4 rollouts; at G=1 every method answers rollout 0, at G=4 as ``at4`` says."""
    results = []
    for g, answers in ((1, dict.fromkeys(at4, rollouts[0])), (4, at4)):
        for method, answer in answers.items():
            result = {"method": method, "g": g, "answer": answer, "correct": answer == gold, "text": "long " * 50,
                      "usage": {}}
            if method == "cat":
                majority = rollouts[0] if g == 1 else answers["majority"]
                result.update(majority_answer=majority, disagrees=answer != majority)
            results.append(result)
    return {"id": qid, "question": f"{qid}?", "gold": gold, "mode": "verifiable", "rollouts": ["text"] * 4,
            "rollout_answers": rollouts, "rollout_correct": [a == gold for a in rollouts],
            "rollout_failures": [None] * 4, "rollout_usage": [{"calls": 1, "prompt_tokens": 10,
                                                                "completion_tokens": 5}] * 4,
            "rollout_seconds": 1.0, "results": results}


RECORDS = [
    # majority right, CaT right, self-BoN wrong
    record("q1", "3", ["3", "3", "4", "4"], {"single": "3", "majority": "3", "self_bon": "4", "cat": "3"}),
    # every rollout wrong; CaT right anyway (its answer is none of the rollouts')
    record("q2", "8", ["5", "6", "5", "7"], {"single": "5", "majority": "5", "self_bon": "6", "cat": "8"}),
    # majority and CaT wrong, self-BoN right
    record("q3", "1", ["2", "2", "2", "1"], {"single": "2", "majority": "2", "self_bon": "1", "cat": "2"}),
]


def test_analyses_accuracy_vs_g_disagreement_and_right_when_all_wrong(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    compact = tmp_path / "committed" / "seed0.jsonl"
    assert testtime.main([str(run_dir), "--save", str(compact), "--out", str(tmp_path / "out"),
                          "--equivalence", "string"]) == 0
    result = json.loads((tmp_path / "out" / "testtime.json").read_text())
    assert (tmp_path / "out" / "accuracy_vs_g.png").stat().st_size > 1000
    curves = result["accuracy_vs_g"]
    assert curves["majority"]["4"]["accuracy"] == pytest.approx(1 / 3)
    assert curves["self_bon"]["4"]["accuracy"] == pytest.approx(1 / 3)
    assert curves["cat"]["4"]["accuracy"] == pytest.approx(2 / 3)
    assert curves["cat"]["1"]["accuracy"] == pytest.approx(1 / 3)  # rollout 0: right on q1 only
    assert curves["rollouts (expected single sample)"]["4"]["accuracy"] == pytest.approx((0.5 + 0 + 0.25) / 3)
    d = {(x["other"], x["g"]): x for x in result["disagreement"]}
    assert d["majority", 4]["n_disagree"] == 1 and d["majority", 4]["accuracy_when_disagree"] == 1.0
    assert d["majority", 4]["other_accuracy_when_disagree"] == 0.0
    assert d["self_bon", 4]["n_disagree"] == 3 and d["self_bon", 4]["accuracy_when_disagree"] == pytest.approx(2 / 3)
    assert d["self_bon", 4]["other_accuracy_when_disagree"] == pytest.approx(1 / 3)
    assert d["self_bon", 1]["n_disagree"] == 0 and d["self_bon", 1]["accuracy_when_disagree"] is None
    wrong = {r["g"]: r for r in result["all_rollouts_wrong"]}
    assert wrong[4]["all_wrong_rate"] == pytest.approx(1 / 3)
    assert wrong[4]["right_when_all_wrong"] == pytest.approx(1 / 3)
    assert wrong[4]["right_given_all_wrong"] == 1.0
    assert wrong[1]["all_wrong_rate"] == pytest.approx(2 / 3) and wrong[1]["right_given_all_wrong"] == 0.0
    assert "cat vs self_bon  G=4      3/3" in capsys.readouterr().out

    # the compact copy (texts dropped) gives the same analyses
    lines = compact.read_text().splitlines()
    assert len(lines) == 3 and "long long" not in compact.read_text() and "rollouts" not in json.loads(lines[0])
    again = testtime.analyses(testtime.load_records(compact), "string")
    assert again["disagreement"] == result["disagreement"]
    assert again["all_rollouts_wrong"] == result["all_rollouts_wrong"]


def test_inputs_sharing_question_ids_are_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    with pytest.raises(SystemExit, match="share question ids"):
        testtime.main([str(path), str(path)])


def test_doctests_of_the_experiment_scripts():
    """experiments/ is outside pytest's testpaths: run its scripts' doctests here."""
    import doctest

    spec_study = importlib.util.spec_from_file_location("study", ROOT / "experiments" / "study.py")
    study = importlib.util.module_from_spec(spec_study)
    spec_study.loader.exec_module(study)
    for module in (testtime, study):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted and not result.failed, module.__name__
