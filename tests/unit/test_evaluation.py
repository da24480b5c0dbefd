"""Test-time evaluation on scripted engines: each method, grading, metrics, the G sweep's cost, resume."""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import Counter, defaultdict

import pytest

from cat_dspy.datasets import Item
from cat_dspy.evaluation.grading import RubricGrader, clipped_mean, healthbench_score
from cat_dspy.evaluation.methods import SelfBestOfN, apply_methods, select_majority, select_min_ppl
from cat_dspy.evaluation.report import summarize
from cat_dspy.evaluation.runner import attributed_usage, build_programs, run_eval
from cat_dspy.jsonl_store import StoreCorruptError
from cat_dspy.modules import Synthesize
from cat_dspy.scoring.stats import mean_stderr
from cat_dspy.testing import scripted_lm

ROLLOUTS = [f"work \\boxed{{{a}}}" for a in ("5", "4", "4.0", "5", "7")]
ANSWERS = ["5", "4", "4.0", "5", "7"]


def boxed(answer: str) -> str:
    return f"so the answer is \\boxed{{{answer}}}"


def by_question(answers: dict[str, list[str]]):
    """A policy script: rollout k of question Qi answers ``answers["Qi"][k % len]`` (in call order, per question)."""
    counts: Counter = Counter()
    lock = threading.Lock()

    def policy(prompt: str) -> str:
        qid = re.search(r"\bQ\d+\b", prompt).group()
        with lock:
            k = counts[qid]
            counts[qid] += 1
        return f"{qid} step {boxed(answers[qid][k % len(answers[qid])])}"

    return policy


def items_for(golds: dict[str, str]) -> list[Item]:
    return [Item(qid, f"{qid}: what is the number?", gold) for qid, gold in golds.items()]


def programs_for(policy, anchor, judge=None, mode="verifiable", g=8, cache=False):
    lms = {"policy": scripted_lm(policy, cache=cache), "anchor": scripted_lm(anchor, cache=cache),
           "judge": scripted_lm(judge or (lambda p: "no"), cache=cache)}
    return build_programs(lms, mode=mode, g=g, logprobs=False), lms


# ------------------------------------------------------------------------------------------------ methods
def test_majority_ties_break_to_the_earliest_cluster_and_use_equivalence():
    assert select_majority(ANSWERS[:4]) == (0, "5", 2)  # 5,4,4.0,5: "4" and "4.0" tie with "5"; 5 came first
    assert select_majority(ANSWERS[1:4]) == (0, "4", 2)  # 4 ≡ 4.0 beats the lone 5
    assert select_majority([None, "3", None, "3"]) == (1, "3", 2)
    results = apply_methods("q", ROLLOUTS, ANSWERS, None, [1, 5], ["single", "majority"])
    assert [(r.method, r.g, r.index, r.answer) for r in results] == [
        ("single", 1, 0, "5"), ("single", 5, 0, "5"), ("majority", 1, 0, "5"), ("majority", 5, 0, "5")]
    none = apply_methods("q", ["no answer", "none"], [None, None], None, [2], ["majority"])[0]
    assert (none.index, none.answer, none.fallback) == (0, None, "no_answer")


def test_min_ppl_picks_lowest_mean_nll_and_counts_missing_logprobs():
    assert select_min_ppl([1.2, 0.3, None, 0.3]) == (1, None)
    nlls = [1.2, 0.3, 0.1, None, None]
    results = apply_methods("q", ROLLOUTS, ANSWERS, nlls, [2, 3], ["min_ppl"])
    assert [(r.index, r.answer, r.fallback) for r in results] == [(1, "4", None), (2, "4.0", None)]
    fallback = apply_methods("q", ROLLOUTS, ANSWERS, None, [4], ["min_ppl"])[0]
    assert (fallback.index, fallback.fallback) == (0, "no_logprobs")


def test_self_bon_reads_the_choice_and_falls_back_to_the_first_rollout():
    policy = scripted_lm(lambda p: "Response 3 is best." if "work" in p else "I cannot tell")
    results = apply_methods("q", ROLLOUTS, ANSWERS, None, [1, 4], ["self_bon"], select_best=SelfBestOfN(lm=policy))
    assert [(r.g, r.index, r.answer, r.fallback) for r in results] == [(1, 0, "5", None), (4, 2, "4.0", None)]
    assert policy.engine_script.calls == 1  # G=1 has nothing to choose from: no call
    assert results[1].usage["policy"]["calls"] == 1 and results[0].usage["policy"]["calls"] == 0
    bad = SelfBestOfN(lm=scripted_lm(["none of them, maybe 9"]))(question="q", rollouts=["a", "b"])
    assert (bad.index, bad.fallback) == (0, "unparseable_choice")


def test_cat_is_question_blind_and_cat_q_sees_the_question():
    anchor = scripted_lm(lambda p: boxed("4"))
    results = apply_methods("SECRET QUESTION", ROLLOUTS, ANSWERS, None, [2], ["cat", "cat_q"],
                            synthesize=Synthesize(lm=anchor), synthesize_q=Synthesize(question_aware=True, lm=anchor))
    assert [(r.method, r.answer, r.index) for r in results] == [("cat", "4", None), ("cat_q", "4", None)]
    assert all(r.usage["anchor"]["calls"] == 1 for r in results)
    prompts = anchor.engine_script.prompts
    assert sum("SECRET QUESTION" in p for p in prompts) == 1  # only cat_q's prompt
    assert all(p.count('<response id="') == 2 for p in prompts)  # G=2: the first two rollouts only
    assert all("\\boxed{7}" not in p for p in prompts)


# ------------------------------------------------------------------------------------------------ pipeline
def test_synthesis_disagreeing_with_the_majority_and_all_wrong_groups(tmp_path):
    policy = by_question({"Q1": ["5", "5", "4"], "Q2": ["5", "6", "7"], "Q3": ["1"]})
    programs, lms = programs_for(policy, lambda p: "# UNIFIED RESPONSE " + boxed("1" if "Q3" in p else "4"), g=3)
    golds = {"Q1": "4", "Q2": "4", "Q3": "98765"}
    run = run_eval(items_for(golds), programs, [3], ["single", "majority", "cat"], tmp_path, progress=False,
                   num_threads=3)  # questions concurrently
    assert [r["id"] for r in run.records] == list(golds)
    rows = {r["method"]: r for r in summarize(run.records)}
    assert rows["majority"]["accuracy"] == 0.0
    cat = rows["cat"]
    assert cat["accuracy"] == pytest.approx(2 / 3) and cat["n"] == 3
    assert cat["disagree_rate"] == pytest.approx(2 / 3) and cat["accuracy_when_disagree"] == 1.0
    assert cat["all_wrong_rate"] == pytest.approx(2 / 3)  # Q2 and Q3: no rollout right
    assert cat["right_when_all_wrong"] == pytest.approx(1 / 3) and cat["right_given_all_wrong"] == 0.5
    assert cat["usage"]["anchor"]["calls"] == 3 and cat["usage"]["policy"]["calls"] == 9
    assert rows["single"]["usage"]["policy"]["calls"] == 3  # single is charged its one rollout per question
    # Gold is used only for grading: no prompt of any role ever contained it.
    assert not any("98765" in p for lm in lms.values() for p in lm.engine_script.prompts)


def test_g_sweep_costs_exactly_one_max_g_generation(tmp_path):
    golds = {"Q1": "4", "Q2": "6"}
    answers = {"Q1": ["4", "5"], "Q2": ["6", "7", "8"]}
    usage = {}
    for name, gs in (("sweep", [1, 2, 4, 8]), ("g8", [8])):
        programs, lms = programs_for(by_question(answers), lambda p: boxed("4"))
        run = run_eval(items_for(golds), programs, gs, ["single", "majority", "min_ppl"], tmp_path / name,
                       progress=False)
        usage[name] = (run.usage["policy"], lms["policy"].engine_script.calls)
        if name == "sweep":
            record = run.records[0]
            by_key = {(r["method"], r["g"]): r for r in record["results"]}
            total = sum(u["completion_tokens"] for u in record["rollout_usage"])
            assert attributed_usage(record, by_key["majority", 8])["policy"]["completion_tokens"] == total
            first2 = sum(u["completion_tokens"] for u in record["rollout_usage"][:2])
            assert attributed_usage(record, by_key["majority", 2])["policy"]["completion_tokens"] == first2
            assert attributed_usage(record, by_key["single", 8])["policy"]["calls"] == 1
    (sweep, sweep_calls), (g8, g8_calls) = usage["sweep"], usage["g8"]
    assert sweep_calls == g8_calls == 16  # 8 rollouts per question, once
    for key in ("calls", "prompt_tokens", "completion_tokens"):
        assert sweep[key] == g8[key] > 0


def test_interrupted_eval_resumes_without_repeating_or_losing_work(tmp_path):
    golds = {f"Q{i}": str(i) for i in range(1, 5)}
    answers = {q: [g, "0"] for q, g in golds.items()}
    succeeded: Counter = Counter()

    def make_anchor(limit=None):
        lock, state = threading.Lock(), {"n": 0}

        def anchor(prompt):
            qid = re.search(r"\bQ\d+\b", prompt).group()
            with lock:
                state["n"] += 1
                if limit is not None and state["n"] > limit:
                    raise KeyboardInterrupt  # the user presses Ctrl-C while Q3 is being synthesized
                succeeded["anchor", qid] += 1
            return boxed(golds[qid])

        return anchor

    def make_policy():
        inner = by_question(answers)

        def policy(prompt):
            succeeded["policy", re.search(r"\bQ\d+\b", prompt).group()] += 1
            return inner(prompt)

        return policy

    methods, gs, items = ["single", "majority", "cat"], [1, 2], items_for(golds)
    programs, _ = programs_for(make_policy(), make_anchor(limit=5), cache=True, g=2)
    with pytest.raises(KeyboardInterrupt):
        run_eval(items, programs, gs, methods, tmp_path, progress=False)
    first_lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in first_lines] == ["Q1", "Q2"]
    with open(tmp_path / "results.jsonl", "a") as fh:  # and a crash tore the line of Q3 being written
        fh.write('{"id": "Q3", "question": "Q3 ...", "rollo')

    programs, lms = programs_for(make_policy(), make_anchor(), cache=True, g=2)
    run = run_eval(items, programs, gs, methods, tmp_path, progress=False)
    assert (run.resumed, run.evaluated) == (2, 2)
    new_prompts = [p for lm in lms.values() for p in lm.engine_script.prompts]
    assert not any(re.search(r"\bQ[12]\b", p) for p in new_prompts)  # finished questions: zero LM calls
    assert not any("Q3" in p for p in lms["policy"].engine_script.prompts)  # Q3's rollouts came from the cache
    assert run.records[2]["cache_hits"] == 2
    # No call was made twice: all successful calls of both runs are exactly one uninterrupted eval's calls.
    assert all(succeeded["policy", q] == 2 and succeeded["anchor", q] == 2 for q in golds), succeeded
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert lines[:2] == first_lines and len(lines) == 4
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(golds)
    assert [r["id"] for r in run.records] == list(golds)
    assert {r["method"]: r["correct"] for r in run.records[3]["results"] if r["g"] == 2}["cat"]


def test_an_eval_with_questions_in_flight_resumes_without_redoing_finished_ones(tmp_path):
    golds = {f"Q{i}": str(i) for i in range(1, 7)}
    calls: Counter = Counter()

    def anchor(prompt):
        qid = re.search(r"\bQ\d+\b", prompt).group()
        calls[qid] += 1
        if qid == "Q4" and crash:
            raise KeyboardInterrupt  # Ctrl-C while Q4 is being synthesized, other questions in flight
        return boxed(golds[qid])

    policy = by_question({q: [g, "0"] for q, g in golds.items()})
    methods, gs, items = ["single", "majority", "cat"], [2], items_for(golds)
    crash = True
    programs, _ = programs_for(policy, anchor, cache=True, g=2)
    with pytest.raises(KeyboardInterrupt):
        run_eval(items, programs, gs, methods, tmp_path, progress=False, num_threads=4)
    saved = [json.loads(line)["id"] for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert "Q4" not in saved and len(saved) == len(set(saved))
    assert {"Q1", "Q2", "Q3"} <= set(saved)  # in flight with Q4: they finished and were kept
    crash, before = False, dict(calls)
    programs, lms = programs_for(policy, anchor, cache=True, g=2)
    run = run_eval(items, programs, gs, methods, tmp_path, progress=False, num_threads=4)
    assert (run.resumed, run.evaluated) == (len(saved), len(golds) - len(saved))
    assert all(calls[q] == before.get(q, 0) for q in saved)  # a finished question makes no call again
    assert not any(re.search(rf"\b{q}\b", p) for q in saved for lm in lms.values() for p in lm.engine_script.prompts)
    assert [r["id"] for r in run.records] == list(golds)
    assert all(r["correct"] for record in run.records for r in record["results"] if r["method"] == "cat")


def test_eval_refuses_a_results_file_corrupted_before_its_last_line(tmp_path):
    golds = {"Q1": "2", "Q2": "4"}
    programs, lms = programs_for(by_question({q: [a] for q, a in golds.items()}), lambda p: boxed("2"), g=2)
    (tmp_path / "results.jsonl").write_text('{"id": "Q1", "oops\n{"id": "Q2"}\n')
    with pytest.raises(StoreCorruptError, match=r"results\.jsonl:1: unparsable"):
        run_eval(items_for(golds), programs, [2], ["single"], tmp_path, progress=False)
    assert not lms["policy"].engine_script.calls  # refused before any LM call


# ------------------------------------------------------------------------------------------------ HealthBench
RUBRIC = ({"criterion": "Advises rest.", "points": 5, "tags": []},
          {"criterion": "Mentions ice.", "points": 3, "tags": []},
          {"criterion": "Recommends an unproven supplement.", "points": -4, "tags": []})


def healthbench_judge(prompt: str) -> str:
    response = prompt.split("<response>")[1].split("</response>")[0].lower()
    criterion = prompt.split("<criterion>")[1].split("</criterion>")[0].lower()
    keyword = {"rest": "rest", "ice": "ice", "supplement": "supplement"}
    return "yes" if any(k in criterion and v in response for k, v in keyword.items()) else "no"


def test_healthbench_score_counts_negative_points_and_clips_the_mean():
    assert healthbench_score(RUBRIC, [True, True, False]) == 1.0
    assert healthbench_score(RUBRIC, [True, False, True]) == pytest.approx(1 / 8)
    assert healthbench_score(RUBRIC, [False, False, True]) == -0.5
    assert clipped_mean([-0.5, 0.25]) == 0.0 and clipped_mean([1.0, 1.0, None]) == 1.0
    judge = scripted_lm(healthbench_judge)
    pred = RubricGrader(lm=judge)(conversation="sprained ankle", response="Rest it and take a supplement.",
                                  rubrics=RUBRIC)
    assert pred.met == [True, False, True] and pred.score == pytest.approx(1 / 8)
    assert judge.engine_script.calls == 3  # one call per rubric item
    assert "[-4] Recommends an unproven supplement." in "".join(judge.engine_script.prompts)


def test_healthbench_eval_grades_responses_and_skips_majority(tmp_path):
    items = [Item("h1", "Q1: my ankle hurts", None, rubrics=RUBRIC), Item("h2", "Q2: my knee hurts", None,
                                                                            rubrics=RUBRIC)]
    policy = by_question({"Q1": ["Rest and ice it.", "Just walk."], "Q2": ["Take a supplement.", "Walk."]})
    programs, lms = programs_for(policy, lambda p: "Rest, ice, and a supplement.", judge=healthbench_judge,
                                 mode="rubric", g=2)
    run = run_eval(items, programs, [2], ["single", "majority", "cat"], tmp_path, progress=False)
    rows = {r["method"]: r for r in summarize(run.records)}
    assert set(rows) == {"single", "cat"}
    cat = run.records[0]["results"][1]
    assert cat["text"] == "Rest, ice, and a supplement." and cat["score"] == pytest.approx(0.5)
    assert rows["cat"]["accuracy"] == pytest.approx(0.5)
    single_scores = sorted(r["results"][0]["score"] for r in run.records)
    assert single_scores[0] in (-0.5, 0.0)  # the supplement-only answer scores below zero ...
    assert 0.0 <= rows["single"]["accuracy"] <= 1.0  # ... and the benchmark mean is clipped
    assert "disagree_rate" not in rows["cat"]
    assert lms["judge"].engine_script.calls == 2 * 2 * 3  # 2 questions x 2 distinct responses x 3 rubric items


# ------------------------------------------------------------------------------------------------ statistics
def test_standard_error_and_program_loading(tmp_path):
    mean, se = mean_stderr([1.0, 1.0, 0.0, 0.0])
    assert mean == 0.5 and se == pytest.approx(0.2887, abs=1e-4)
    from cat_dspy.modules import CaT

    cat = CaT(g=2)
    sig = cat.synthesize.synthesize.signature
    cat.synthesize.synthesize.signature = sig.with_instructions("MERGE THESE CAREFULLY.")
    cat.save(str(tmp_path / "program.json"))
    programs = build_programs(defaultdict(lambda: None), mode="verifiable", g=2, program=tmp_path / "program.json")
    assert programs.synthesize.synthesize.signature.instructions == "MERGE THESE CAREFULLY."
    assert programs.synthesize_q.synthesize.signature.instructions == "MERGE THESE CAREFULLY."
    assert "question" in programs.synthesize_q.synthesize.signature.input_fields


def test_flexible_extraction_grades_prose_answers(tmp_path):
    def run(extraction: str):
        rollouts = itertools.cycle(["3 + 4 = 7", "it is 8", "7 I think", "seven?"])
        lock = threading.Lock()

        def policy(prompt: str) -> str:
            with lock:
                return next(rollouts)

        lms = {"policy": scripted_lm(policy), "anchor": scripted_lm(lambda p: "They mostly say 3 + 4 = 7"),
               "judge": scripted_lm(lambda p: "no")}
        programs = build_programs(lms, mode="verifiable", g=4, extraction=extraction)
        assert programs.synthesize.extraction == programs.synthesize_q.extraction == extraction
        run = run_eval(items_for({"Q0": "7"}), programs, [4], ["majority", "cat"], tmp_path / extraction,
                       progress=False)
        return run.records[0]

    strict = run("strict")
    assert strict["rollout_correct"] == [False] * 4 and not any(r["correct"] for r in strict["results"])
    flexible = run("flexible")
    assert sorted(flexible["rollout_correct"]) == [False, False, True, True]
    assert [(r["method"], r["answer"], r["correct"]) for r in flexible["results"]] == [("majority", "7", True),
                                                                                       ("cat", "7", True)]


def test_summary_reports_the_mean_rollout_accuracy_per_g():
    def record(qid, correct):
        results = [{"method": "single", "g": g, "index": 0, "answer": "x", "correct": correct[0]} for g in (1, 4)]
        usage = [{"calls": 1, "prompt_tokens": 5, "completion_tokens": 5, "seconds": 0.1}] * 4
        return {"id": qid, "mode": "verifiable", "rollout_correct": correct, "results": results,
                "rollout_usage": usage, "rollout_seconds": 0.4}

    rows = summarize([record("a", [True, False, True, True]), record("b", [False, False, False, True])])
    by_g = {row["g"]: row for row in rows}
    assert by_g[1]["rollout_accuracy"] == pytest.approx(0.5) and by_g[1]["accuracy"] == pytest.approx(0.5)
    assert by_g[4]["rollout_accuracy"] == pytest.approx((0.75 + 0.25) / 2)
    assert by_g[4]["rollout_stderr"] == pytest.approx(mean_stderr([0.75, 0.25])[1])
