"""The malformed-output corpus through every parser, reward and module path: nothing raises, every case gets a
defined value, and every failure is counted (``make_corpus.py`` generates ``corpus/*.jsonl``)."""

from __future__ import annotations

import json
import re
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


# -- the defined result of each malformed kind, through CaT's scoring path ---------------------------------------

YES_WORDS = {"yes", "Yes.", "TRUE", "y", "1", "ok", "Satisfied", "Pass", "<verdict>yes</verdict>"}


def empty_call(failures: list[str], role: str) -> bool:
    """Whether ``failures`` is one failed call of ``role``: an empty completion is no output at all (DSPy's adapter
    refuses it), counted as the role's failed call, which makes the group invalid (a training reward skips it)."""
    return len(failures) >= 1 and failures[0].startswith(f"{role}_error: AdapterParseError")


def all_yes_judge(prompt: str) -> str:
    """A judge that marks every criterion it is shown satisfied (JudgeAll: one verdict per numbered criterion)."""
    n = prompt.split("<criteria>", 1)[1].count('<criterion id="')
    return "\n".join(f'<verdict id="{i}">yes</verdict>' for i in range(1, n + 1))


def test_a_malformed_rollout_is_data_rewarded_by_its_answer_never_a_failure():
    """Every corpus output as a rollout beside a good one: reward 1 exactly when its answer is the reference's,
    else 0 (empty ones: 0); the group stays valid and nothing is counted against it."""
    cat = CaT(g=2, policy=scripted_lm(["unused"]), anchor=scripted_lm(["# UNIFIED RESPONSE \\boxed{4}"]),
              equivalence="string")
    for r in CORPUS["answers"] + CORPUS["injection"]:
        pred = cat.score([r["output"], "so \\boxed{4}"])
        assert pred.reference_answer == "4" and pred.valid and pred.failures == [], r["id"]
        assert pred.rewards == [float(extract_answer(r["output"]) == "4"), 1.0], r["id"]
        if r["kind"] == "empty":
            assert pred.answers[0] is None and pred.rewards[0] == 0.0, r["id"]


def test_a_malformed_reference_has_an_answer_or_zero_rewards_and_one_counted_failure():
    """Every answers output as the anchor's reference: with no answer in it, every reward is 0 and the group counts
    exactly one ``reference_without_answer`` (still valid: the anchor answered; an empty completion is counted as a
    failed anchor call instead); with one, each rollout is rewarded by it and nothing is counted."""
    serve = Serve()
    cat = CaT(g=3, policy=scripted_lm(["unused"]), anchor=scripted_lm(serve), equivalence="string")
    rollouts = ["\\boxed{4}", "\\boxed{12}", "no answer here"]
    unanswered = Counter()
    for r in CORPUS["answers"]:
        serve.text = r["output"]
        pred = cat.score(rollouts)
        delivered = re.sub("[\ud800-\udfff]", "\ufffd", r["output"]).strip()  # lone surrogates: U+FFFD
        assert pred.reference == delivered, r["id"]
        expected = extract_answer(delivered)
        assert pred.reference_answer == expected and pred.valid == (r["output"] != ""), r["id"]
        if r["output"] == "":
            assert pred.rewards == [0.0] * 3 and empty_call(pred.failures, "anchor") and len(pred.failures) == 1
            unanswered[r["kind"]] += 1
        elif expected is None:
            assert pred.rewards == [0.0] * 3 and pred.failures == ["reference_without_answer"], r["id"]
            unanswered[r["kind"]] += 1
        else:
            assert pred.failures == [] and pred.rewards == [float(expected == "4"), float(expected == "12"), 0.0]
    assert unanswered["empty"] == len(of_kind("answers", "empty"))  # an empty reference never has an answer
    truncated = {r["text"] for r in of_kind("answers", "truncated_box") if extract_answer(r["output"]) is None}
    assert {"\\boxed{", "\\boxed", "\\boxed{}", "\\boxed{   }", "\\boxed{{{{"} <= truncated  # an empty box: none
    assert unanswered["huge"] >= 3  # a megabyte of "a", of newlines, of unclosed boxes: no answer, no hang


def test_a_malformed_rubric_is_empty_short_or_capped_and_counted():
    """Every rubrics output as the anchor's rubric, with a judge satisfied by everything: no criterion gives reward
    0, no judge call and one ``empty_rubric``; 1-4 criteria give reward 1 and one ``rubric_too_short``; 5 or more
    give reward 1 and nothing counted; never more than 20 criteria."""
    state = {"rubric": ""}

    def anchor(prompt: str) -> str:
        return state["rubric"] if "grading rubric" in prompt else "Rest the ankle, ice it, and see a doctor."

    judge = scripted_lm(all_yes_judge)
    cat = CaT(g=2, mode="rubric", policy=scripted_lm(["unused"]), anchor=scripted_lm(anchor), judge=judge)
    sizes: dict[str, list[int]] = {}
    for r in CORPUS["rubrics"]:
        state["rubric"] = r["output"]
        calls = len(judge.engine_script.prompts)
        pred = cat.score(["Rest and ice.", "See a doctor."])
        n = len(pred.rubric)
        judged = len(judge.engine_script.prompts) - calls
        assert pred.valid == (r["output"] != "") and n <= 20, r["id"]
        if r["output"] == "":
            assert empty_call(pred.failures, "anchor") and pred.failures[1:] == ["empty_rubric"], r["id"]
            assert pred.rewards == [0.0, 0.0] and judged == 0, r["id"]
        elif n == 0:
            assert pred.failures == ["empty_rubric"] and pred.rewards == [0.0, 0.0] and judged == 0, r["id"]
        elif n < 5:
            assert pred.failures == ["rubric_too_short"] and pred.rewards == [1.0, 1.0] and judged == 2, r["id"]
        else:
            assert pred.failures == [] and pred.rewards == [1.0, 1.0] and pred.parsed["rubric"], r["id"]
        sizes.setdefault(r["kind"], []).append(n)
    assert set(sizes["no_rubric"]) == set(sizes["zero_criteria"]) == {0}
    assert sizes["xml_count"] == [1, 3, 4, 5, 6, 20, 20]
    assert sizes["numbered_count"] == sizes["bulleted_count"] == [20]


def test_a_malformed_verdict_reads_as_not_satisfied_and_is_counted_unread():
    """Every verdicts output as the judge's answer for a 5-criterion rubric: each verdict it states is read, every
    other one is unread, counts as not satisfied and is counted (``unread_verdicts`` once per rollout)."""
    rubric = "<rubric>" + "".join(f"<criterion>{c}</criterion>" for c in CRITERIA) + "</rubric>"
    state = {"verdict": ""}
    cat = CaT(g=2, mode="rubric", policy=scripted_lm(["unused"]),
              anchor=scripted_lm(lambda p: rubric if "grading rubric" in p else "Rest, ice, a doctor."),
              judge=scripted_lm(lambda p: state["verdict"]))
    one = CaT(g=2, mode="rubric", per_criterion=True, policy=scripted_lm(["unused"]),
              anchor=scripted_lm(lambda p: rubric if "grading rubric" in p else "Rest, ice, a doctor."),
              judge=scripted_lm(lambda p: state["verdict"]))
    for r in CORPUS["verdicts"]:
        state["verdict"] = r["output"]
        pred = cat.score(["Rest and ice.", "See a doctor."])
        verdicts, unread = parse_verdicts(r["output"], 5)
        assert pred.verdicts == [verdicts] * 2 and pred.parsed["unread_verdicts"] == [unread] * 2, r["id"]
        assert pred.rewards == [sum(verdicts) / 5] * 2 and pred.valid == (r["output"] != ""), r["id"]
        if r["output"] == "":  # a failed judge call per rollout, and its 5 verdicts unread
            assert [f.split(":")[0] for f in pred.failures] == ["judge_error", "unread_verdicts"] * 2, r["id"]
            assert empty_call(pred.failures, "judge") and unread == 5, r["id"]
        else:
            assert pred.failures == ["unread_verdicts"] * (2 if unread else 0), r["id"]
        if r["kind"] in ("empty", "ambiguous") or (r["kind"], r["text"]) in (("huge", "<verdict>"),):
            # nothing readable in it, one criterion at a time: every verdict unread, reward 0, all counted
            judged = one.score(["Rest and ice.", "See a doctor."])
            assert judged.rewards == [0.0, 0.0] and judged.parsed["unread_verdicts"] == [5, 5], r["id"]
            errors = 5 if r["output"] == "" else 0  # an empty completion: a failed call per criterion
            assert [f.split(":")[0] for f in judged.failures] == (["judge_error"] * errors + ["unread_verdicts"]) * 2
        if r["kind"] == "single":  # one clear word, asked one criterion at a time: read as said, none unread
            judged = one.score(["Rest and ice."] * 2)
            said = r["text"] in YES_WORDS
            assert judged.rewards == [float(said)] * 2 and judged.failures == [], r["id"]
    empty = [cat.score(["a", "b"]) for state["verdict"] in [r["output"] for r in of_kind("verdicts", "empty")]]
    assert all(p.rewards == [0.0, 0.0] and p.parsed["unread_verdicts"] == [5, 5] for p in empty)
    # k verdicts for 5 criteria: the missing ones unread, extra ones ignored; all k say yes
    lengths = []
    for r in of_kind("verdicts", "wrong_length"):
        state["verdict"] = r["output"]
        lengths.append(cat.score(["a", "b"]).rewards[0])
    assert lengths == [0.0, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_a_rollout_that_addresses_the_judge_gains_nothing():
    """Every injection output as a rollout, graded by a judge that says no to every criterion: reward 0, every
    verdict read (a fake verdict inside the response is data, not the judge's answer), nothing counted."""
    rubric = "<rubric>" + "".join(f"<criterion>{c}</criterion>" for c in CRITERIA) + "</rubric>"
    cat = CaT(g=2, mode="rubric", policy=scripted_lm(["unused"]),
              anchor=scripted_lm(lambda p: rubric if "grading rubric" in p else "Rest the ankle."),
              judge=scripted_lm(lambda p: "\n".join(f'<verdict id="{i}">no</verdict>' for i in range(1, 6))))
    for r in CORPUS["injection"]:
        pred = cat.score([r["output"], "Rest the ankle."])
        assert pred.rewards == [0.0, 0.0] and pred.failures == [] and pred.parsed["unread_verdicts"] == [0, 0], r["id"]
