"""``cat-dspy eval`` + ``compare`` on the real embedded model, on its default runtime (llama.cpp in process): tiny
(3 questions, G ∈ {1, 3}, 16-token rollouts), run with one question in flight and with all three."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cat_dspy.cli import main
from cat_dspy.lm.models import engine_of, make_lm
from cat_dspy.scoring.equivalence import equivalent

pytestmark = pytest.mark.integration

METHODS = ("single", "majority", "min_ppl", "cat")  # self_bon: test_mutual_predictability_embedded.py
GS = (1, 3)
QUESTIONS = {"What is 2 + 2?": "4", "What is 7 + 5?": "12", "What is 3 + 3?": "6"}  # ones the 135M model can answer


def records_of(run_dir: Path) -> list[dict]:
    """The run's records, in question order (results.jsonl holds them in the order they finished)."""
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return sorted(records, key=lambda r: r["id"])


def outcome(records: list[dict]) -> list[tuple]:
    """Everything a run decided, per question: the rollouts and each (method, G)'s text, answer, grade, fallback."""
    return [(r["id"], r["rollouts"], r["rollout_answers"], r["rollout_nll"],
             sorted((x["method"], x["g"], x["index"], x["text"], x["answer"], x["correct"], x["fallback"])
                    for x in r["results"])) for r in records]


def check_selections(record: dict) -> None:
    """majority is the most common answer among the record's actual rollouts; min_ppl the lowest mean NLL."""
    answers, nlls = record["rollout_answers"], record["rollout_nll"]
    for g in GS:
        by = {x["method"]: x for x in record["results"] if x["g"] == g}
        votes = [sum(b is not None and equivalent(a, b) for b in answers[:g]) if a is not None else 0
                 for a in answers[:g]]
        majority = by["majority"]
        assert majority["extra"]["size"] == max(votes)
        if max(votes) == 0:
            assert majority["index"] == 0 and majority["answer"] is None and majority["fallback"] == "no_answer"
        else:
            first_of_largest = votes.index(max(votes))  # ties: the answer that came first
            assert majority["index"] == first_of_largest and majority["answer"] == answers[first_of_largest]
        lowest = min(range(g), key=lambda i: (nlls[i], i))
        assert by["min_ppl"]["index"] == lowest and by["min_ppl"]["text"] == record["rollouts"][lowest]
        assert by["single"]["index"] == 0 and by["single"]["text"] == record["rollouts"][0]


def test_eval_on_llama_cpp_is_the_same_with_one_or_three_questions_in_flight_then_compare_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": a}) + "\n"
                            for i, (q, a) in enumerate(QUESTIONS.items())))
    argv = ["eval", "--dataset", str(data), "--g", ",".join(map(str, GS)), "--methods", ",".join(METHODS),
            "--id-field", "id", "--max-tokens", "16", "--anchor-max-tokens", "32", "--experiment", "it",
            "--no-progress", "--extraction", "flexible"]
    engine = engine_of(make_lm("local"))  # the engine the CLI's `local` roles share
    assert engine.runtime == "llamacpp"
    saved = engine.batch_window_s
    engine.batch_window_s = 0.3  # the questions' calls meet in one batch even on a loaded machine
    runs, calls = {}, {}
    try:
        for in_flight in (1, 3):
            engine.reset_stats()
            run_dir = tmp_path / f"in-flight-{in_flight}"
            assert main([*argv, "--num-threads", str(in_flight), "--run-dir", str(run_dir)]) == 0
            runs[in_flight], calls[in_flight] = records_of(run_dir), engine.stats["generate_calls"]
    finally:
        engine.batch_window_s = saved
    capsys.readouterr()
    # Every request is seeded (seed + rollout id, mixed with the prompt), and a seeded llama.cpp row gives the same
    # text and logprobs whatever shares its batch: the same samples, so the same results, bit for bit.
    assert outcome(runs[3]) == outcome(runs[1])
    assert calls[3] < calls[1]  # the questions' calls did share batches
    records = runs[3]
    assert [r["id"] for r in records] == ["q0", "q1", "q2"]
    correct = {(x["method"], x["g"]): 0 for x in records[0]["results"]}
    for record in records:
        assert len(record["rollouts"]) == max(GS) and all(u["calls"] == 1 for u in record["rollout_usage"])
        assert all(nll is not None and nll >= 0 for nll in record["rollout_nll"])  # real logprobs reach min_ppl
        assert {(r["method"], r["g"]) for r in record["results"]} == {(m, g) for m in METHODS for g in GS}
        assert not any(r["fallback"] == "no_logprobs" for r in record["results"])
        single = next(r for r in record["results"] if (r["method"], r["g"]) == ("single", 1))
        assert (single["answer"] is not None) == bool(re.search(r"\d", record["rollouts"][0]))  # flexible: last number
        check_selections(record)
        for x in record["results"]:
            correct[x["method"], x["g"]] += bool(x["correct"])
    assert sum(correct.values()) > 0, correct  # the identity is over methods that score, not all zeros
    run_dir = tmp_path / "in-flight-3"
    assert (run_dir / "accuracy_vs_g.png").is_file()

    assert main(["compare", "--experiment", "it", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(METHODS) * len(GS) and all(r["n"] == 3.0 for r in rows)  # the latest run
    for row in rows:
        assert row["accuracy"] == pytest.approx(correct[row["method"], row["g"]] / 3), row
    cat = next(r for r in rows if r["method"] == "cat" and r["g"] == 3)
    assert cat["anchor.calls"] == 3 and cat["policy.calls"] == 9 and cat["tokens"] > 0

    assert main([*argv, "--num-threads", "3", "--run-dir", str(run_dir)]) == 0  # resumed: every question re-read
    assert "3 resumed" in capsys.readouterr().out
