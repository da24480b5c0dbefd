"""The malformed-output corpus through every parser, reward and module path: nothing raises, every case gets a
defined value, and every failure is counted (``make_corpus.py`` generates ``corpus/*.jsonl``)."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from cat_dspy.modules import CaT, Judge, ProposeRubric, Synthesize
from cat_dspy.scoring.equivalence import EQUIVALENCE_FALLBACKS, equivalence_stats, equivalent
from cat_dspy.scoring.extraction import extract_answer
from cat_dspy.scoring.parsing import parse_criteria, parse_verdict, parse_verdicts
from cat_dspy.scoring.rewards import rubric_reward, verifiable_reward
from cat_dspy.testing import scripted_lm

from . import make_corpus

pytestmark = pytest.mark.robustness

CORPUS = {name: make_corpus.load(name) for name in make_corpus.FILES}
EVERYTHING = [r for records in CORPUS.values() for r in records]
CRITERIA = [f"The response mentions point {i}." for i in range(1, 6)]
OUTCOMES = ("none_input string_match string_mismatch numeric_match numeric_mismatch symbolic_match symbolic_mismatch"
            .split() + list(EQUIVALENCE_FALLBACKS))


def of_kind(name: str, *kinds: str) -> list[dict]:
    return [r for r in CORPUS[name] if r["kind"] in kinds]


def test_corpus_is_large_varied_and_current(tmp_path):
    assert len(EVERYTHING) >= 200
    kinds = Counter(r["kind"] for r in EVERYTHING)
    for kind in ("empty", "truncated_box", "braces", "several_boxes", "huge", "non_utf8", "odd_unicode", "broken_xml",
                 "broken_json", "zero_criteria", "wrong_length", "hidden_in_prose", "adapter_markers"):
        assert kinds[kind] > 0, kind
    assert len({r["id"] for r in EVERYTHING}) == len(EVERYTHING)
    assert max(len(r["output"]) for r in EVERYTHING) >= 1_000_000  # huge outputs, expanded at load time
    make_corpus.write(tmp_path)  # the committed files are what the generator writes
    for name in make_corpus.FILES:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (make_corpus.CORPUS_DIR / f"{name}.jsonl").read_bytes()


def test_extract_answer_and_verifiable_reward_on_everything():
    outcomes = Counter()
    for r in EVERYTHING:
        answer = extract_answer(r["output"])
        assert answer is None or (isinstance(answer, str) and answer.strip()), r["id"]
        outcomes["answer" if answer is not None else "no_answer"] += 1
        assert verifiable_reward(answer, "42", mode="string") in (0.0, 1.0)
    assert sum(outcomes.values()) == len(EVERYTHING)
    # No answer is ever read from an empty output; a box the model never closed yields what it holds up to the end.
    for r in of_kind("answers", "empty"):
        assert extract_answer(r["output"]) is None, r["id"]
    truncated = {r["text"]: extract_answer(r["output"]) for r in of_kind("answers", "truncated_box")}
    assert all(a is None or r.rstrip().endswith(a) for r, a in truncated.items()), truncated
    assert truncated["\\boxed{12"] == "12" and truncated["The answer is \\boxed{4"] == "4"
    assert truncated["\\boxed{"] is truncated["\\boxed{{{{"] is truncated["\\boxed{}"] is None
    assert outcomes["no_answer"] >= len(of_kind("answers", "empty")) + sum(a is None for a in truncated.values())
    several = next(r for r in CORPUS["answers"] if r["text"] == "\\boxed{1} then \\boxed{2}")
    assert extract_answer(several["output"]) == "2"  # the last box wins


def test_symbolic_equivalence_counts_every_outcome():
    # Distinct answers; the hostile_math kind has its own timing test (test_hostile_math.py).
    answers = list(dict.fromkeys(extract_answer(r["output"]) for r in CORPUS["answers"] if r["kind"] != "hostile_math"))
    before = equivalence_stats()
    with ThreadPoolExecutor(max_workers=4) as pool:  # from worker threads, as a batched reward runs it
        verdicts = list(pool.map(lambda a: equivalent("42", a, timeout=1.0), answers))
    after = equivalence_stats()
    delta = {k: after[k] - before[k] for k in after}
    assert all(isinstance(v, bool) for v in verdicts)
    assert delta["calls"] == len(answers)
    assert sum(delta[k] for k in OUTCOMES) == delta["calls"]  # each call lands in exactly one outcome
    assert delta["none_input"] == 1  # None, once
    assert delta["too_long_fallback"] >= 1  # a 100 kB answer skips math-verify, and is counted


def test_parse_criteria_on_everything():
    unparsed = 0
    for r in EVERYTHING:
        criteria, parsed = parse_criteria(r["output"], max_criteria=50)
        assert isinstance(criteria, list) and isinstance(parsed, bool), r["id"]
        assert parsed == bool(criteria), r["id"]
        assert len(criteria) <= 50 and all(isinstance(c, str) and c.strip() for c in criteria), r["id"]
        assert len({c.casefold() for c in criteria}) == len(criteria), r["id"]
        unparsed += not parsed
    for r in of_kind("rubrics", "no_rubric", "zero_criteria"):
        assert parse_criteria(r["output"]) == ([], False), r["id"]
    counts = [len(parse_criteria(r["output"], max_criteria=50)[0]) for r in of_kind("rubrics", "xml_count")]
    assert counts == [1, 3, 4, 5, 6, 50, 50]
    assert len(parse_criteria(of_kind("rubrics", "numbered_count")[0]["output"])[0]) == 20  # capped at max_criteria
    assert unparsed >= len(of_kind("rubrics", "no_rubric", "zero_criteria"))


def test_parse_verdicts_on_everything():
    unread_total = 0
    for r in EVERYTHING:
        assert parse_verdict(r["output"]) in (True, False, None), r["id"]
        for n in (5,) if r["kind"] == "huge" else (0, 1, 5, 50):  # huge outputs once: they cost 0.1 s a parse
            verdicts, unread = parse_verdicts(r["output"], n)
            assert len(verdicts) == n and all(isinstance(v, bool) for v in verdicts), r["id"]
            assert 0 <= unread <= n and sum(verdicts) <= n - unread, r["id"]
            assert 0.0 <= rubric_reward(verdicts) <= 1.0
            unread_total += unread
    for r in of_kind("verdicts", "empty"):
        assert parse_verdict(r["output"]) is None and parse_verdicts(r["output"], 5) == ([False] * 5, 5)
    # k verdicts for 5 criteria: the missing ones are unread, extra ones ignored
    assert [parse_verdicts(r["output"], 5)[1] for r in of_kind("verdicts", "wrong_length")] == [5, 4, 3, 1, 0, 0, 0]
    assert unread_total >= 56 * len(of_kind("verdicts", "empty", "ambiguous"))


class Serve:
    """A script answering every call with ``self.text`` (set per corpus record)."""

    def __init__(self) -> None:
        self.text = ""

    def __call__(self, prompt: str) -> str:
        return self.text


def test_anchor_modules_on_every_output():
    """Synthesize (both modes) and ProposeRubric, their anchor answering with every corpus output."""
    for mode in ("reasoning", "freeform"):
        serve = Serve()
        synth = Synthesize(mode=mode, lm=scripted_lm(serve))
        reasons = Counter()
        for r in EVERYTHING:
            serve.text = r["output"]
            pred = synth(rollouts=["a \\boxed{1}", "b \\boxed{2}"])
            assert isinstance(pred.reference, str) and isinstance(pred.parsed, bool), r["id"]
            assert pred.answer is None or isinstance(pred.answer, str)
            reasons["error" if pred.error else "parsed" if pred.parsed else "unparsed"] += 1
        assert sum(reasons.values()) == len(EVERYTHING)
        assert reasons["unparsed"] + reasons["error"] >= len(of_kind("answers", "empty")), mode
    serve = Serve()
    propose = ProposeRubric(lm=scripted_lm(serve))
    reasons = Counter()
    for r in EVERYTHING:
        serve.text = r["output"]
        pred = propose(reference="Rest, ice, compress, elevate.")
        assert isinstance(pred.criteria, list) and len(pred.criteria) <= propose.max_criteria, r["id"]
        assert not pred.parsed or len(pred.criteria) >= propose.min_criteria
        reasons["error" if pred.error else "parsed" if pred.parsed else "too_few" if pred.criteria else "none"] += 1
    assert sum(reasons.values()) == len(EVERYTHING)
    assert reasons["none"] >= len(of_kind("rubrics", "no_rubric", "zero_criteria"))
    assert reasons["parsed"] > 0 and reasons["too_few"] > 0


def test_judge_on_every_output():
    for per_criterion in (False, True):
        serve = Serve()
        judge = Judge(per_criterion=per_criterion, lm=scripted_lm(serve))
        unread = errors = 0
        records = [r for r in EVERYTHING if not (per_criterion and r["kind"] == "huge")]
        for r in records:
            serve.text = r["output"]
            pred = judge(response="Rest the ankle and see a doctor.", criteria=CRITERIA)
            assert len(pred.verdicts) == len(CRITERIA) and all(isinstance(v, bool) for v in pred.verdicts), r["id"]
            assert 0 <= pred.unread <= len(CRITERIA)
            unread += pred.unread
            errors += len(pred.errors)
        assert unread >= len(CRITERIA) * len(of_kind("verdicts", "empty", "ambiguous"))
        assert errors <= unread  # a failed call is an unread verdict too, never a silent False


def _group(records: list[dict], g: int) -> list[list[str]]:
    texts = [r["output"] for r in records]
    return [texts[i : i + g] for i in range(0, len(texts), g)]


def test_cat_score_verifiable_counts_failures():
    references = [r["output"] for r in CORPUS["answers"]]
    groups = _group(CORPUS["answers"] + CORPUS["injection"], 4)
    serve = Serve()
    cat = CaT(g=4, policy=scripted_lm(["unused"]), anchor=scripted_lm(serve), equivalence="string")
    reasons = Counter()
    for i, rollouts in enumerate(groups):
        serve.text = references[i % len(references)]
        pred = cat.score(rollouts)
        assert len(pred.rewards) == len(rollouts) and all(r in (0.0, 1.0) for r in pred.rewards)
        assert isinstance(pred.failures, list) and isinstance(pred.valid, bool)
        if pred.reference_answer is None:
            assert "reference_without_answer" in pred.failures or not pred.valid
            assert pred.rewards == [0.0] * len(rollouts)
        reasons.update(f.split(":")[0] for f in pred.failures)
        reasons["groups"] += 1
    assert reasons["groups"] == len(groups)
    assert reasons["reference_without_answer"] > 0


def test_cat_score_rubric_counts_failures():
    rubrics = [r["output"] for r in CORPUS["rubrics"]]
    verdicts = [r["output"] for r in CORPUS["verdicts"]]
    state = {"rubric": "", "verdicts": ""}

    def anchor(prompt: str) -> str:
        return state["rubric"] if "grading rubric" in prompt else "Rest the ankle, ice it, and see a doctor."

    cat = CaT(g=3, mode="rubric", policy=scripted_lm(["unused"]), anchor=scripted_lm(anchor),
              judge=scripted_lm(lambda prompt: state["verdicts"]))
    reasons = Counter()
    groups = _group(CORPUS["injection"] + CORPUS["answers"][:60], 3)
    for i, rollouts in enumerate(groups):
        state["rubric"], state["verdicts"] = rubrics[i % len(rubrics)], verdicts[i % len(verdicts)]
        pred = cat.score(rollouts)
        assert len(pred.rewards) == len(rollouts) and all(0.0 <= r <= 1.0 for r in pred.rewards)
        assert len(pred.verdicts) == len(rollouts)
        n = len(pred.rubric)
        assert all(len(v) == n for v in pred.verdicts)
        if not pred.rubric:
            assert "empty_rubric" in pred.failures and pred.rewards == [0.0] * len(rollouts)
        else:
            unread = pred.parsed["unread_verdicts"]
            assert pred.failures.count("unread_verdicts") == sum(u > 0 for u in unread)
        reasons.update(f.split(":")[0] for f in pred.failures)
        reasons["groups"] += 1
    assert reasons["groups"] == len(groups)
    assert reasons["empty_rubric"] > 0 and reasons["unread_verdicts"] > 0 and reasons["rubric_too_short"] > 0
    json.dumps(dict(reasons))  # the counters are plain data
