"""Backend faults at 30 %: the CaT reward and ``eval`` finish, retries stay bounded, and every request and every item
ends answered or explicitly failed, with counts that add up (``cat_dspy.testing.faults`` injects the faults)."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

import dspy
import pytest
from dspy.utils.exceptions import LMRateLimitError, LMServerError, LMTimeoutError, LMTransportError

from cat_dspy.datasets import Item
from cat_dspy.evaluation.report import failure_totals, summarize
from cat_dspy.evaluation.runner import build_programs, run_eval
from cat_dspy.modules import CaT
from cat_dspy.rewards import CaTReward
from cat_dspy.testing import scripted_lm
from cat_dspy.testing.faults import FaultyEngine, faulty_lm

pytestmark = pytest.mark.robustness

RATE = 0.3
RUBRIC = "<rubric>" + "".join(f"<criterion>Mentions point {i}.</criterion>" for i in range(1, 6)) + "</rubric>"


def _bounded(lm: dspy.LM, retries: int) -> None:
    """Retries are bounded per request, and no attempt happened outside a request."""
    f = lm.faults
    assert f.max_attempts <= 1 + retries
    assert f.attempts <= (1 + retries) * f.requests
    assert f.answered + f.failed_requests == f.requests
    assert f.answered == lm.engine_script.calls - sum(h[-1] == "error" for h in f.history.values())


# ------------------------------------------------------------------------------------------------ the wrapper
def test_wrapper_faults_retries_and_settings():
    errors = {"timeout": LMTimeoutError, "rate_limit": LMRateLimitError, "connection": LMTransportError,
              "server": LMServerError, "stall": LMTimeoutError}
    for kind, error in errors.items():  # each fault is one DSPy retries, exactly 1 + num_retries times
        lm = faulty_lm(scripted_lm(["ok"]), rate=1.0, kinds=(kind,), stall_s=0.01, num_retries=2)
        with pytest.raises(error):
            lm("hi")
        assert lm.faults.attempts == 3 and lm.faults.failed_requests == 1 and lm.faults.injected[kind] == 3
        assert lm.engine_script.calls == 0
    stalled = faulty_lm(scripted_lm(["ok"]), rate=1.0, kinds=("stall",), stall_s=0.2, num_retries=0)
    start = time.monotonic()
    with pytest.raises(LMTimeoutError):
        stalled("q")
    assert time.monotonic() - start >= 0.2  # a stall hangs, then times out
    clean = faulty_lm(scripted_lm(["ok"]), rate=0.0)
    assert [clean("q")[0] for _ in range(5)] == ["ok"] * 5
    assert clean.faults.stats()["faults"] == 0 and clean.faults.attempts == 5
    for bad in (lambda: FaultyEngine(None, rate=1.5), lambda: FaultyEngine(None, kinds=("meteor",)),
                lambda: faulty_lm(dspy.LM("openai/gpt-4o-mini"))):
        with pytest.raises(ValueError):
            bad()


def test_rate_is_respected_and_seeded():
    def run() -> dict:
        lm = faulty_lm(scripted_lm(["ok"]), rate=RATE, seed=7, num_retries=10)
        for i in range(200):
            assert lm(f"q{i}") == ["ok"]
        _bounded(lm, 10)
        return lm.faults.stats()

    first, second = run(), run()
    assert first == second  # sequential calls: the same faults every time
    assert 0.2 < first["faults"] / first["attempts"] < 0.4
    assert set(first["injected"]) == {"timeout", "rate_limit", "connection", "stall"}


def test_async_twin_shares_the_policy_and_counters():
    lm = faulty_lm(scripted_lm(["ok"]), rate=RATE, seed=3, num_retries=6)

    async def main() -> list:
        return await asyncio.gather(*(lm.acall(f"q{i}") for i in range(30)))

    assert asyncio.run(main()) == [["ok"]] * 30
    _bounded(lm, 6)
    assert lm.faults.requests == 30 and lm.faults.stats()["faults"] > 0


# ------------------------------------------------------------------------------------------------ CaT reward
def _policy_answer(prompt: str) -> str:
    m = re.search(r"Q(\d+)", prompt)
    return f"Q{m.group(1) if m else '?'} so \\boxed{{{int(m.group(1)) * 2 if m else 0}}}"


def test_cat_score_verifiable_under_faults():
    for retries in (0, 2):
        _verifiable_under_faults(retries)


def _verifiable_under_faults(retries: int) -> None:
    anchor = faulty_lm(scripted_lm(lambda p: "# UNIFIED RESPONSE " + _policy_answer(p)), rate=RATE, seed=retries,
                       stall_s=0.01, num_retries=retries)
    cat = CaT(g=4, policy=scripted_lm(["unused"]), anchor=anchor, equivalence="string")
    groups = 60
    valid = Counter()
    for q in range(groups):
        pred = cat.score([f"Q{q} \\boxed{{{2 * q}}}"] * 3 + ["\\boxed{-1}"])
        errors = [f for f in pred.failures if f.startswith("anchor_error")]
        assert pred.valid == (not errors)
        assert len(pred.rewards) == 4
        assert pred.rewards == ([1.0, 1.0, 1.0, 0.0] if pred.valid else [0.0] * 4)
        valid[pred.valid] += 1
        valid["anchor_errors"] += len(errors)
    assert valid[True] + valid[False] == groups
    assert valid["anchor_errors"] == anchor.faults.failed_requests == valid[False]
    assert anchor.faults.requests == groups
    _bounded(anchor, retries)
    if retries == 0:
        assert 0.15 * groups < valid[False] < 0.45 * groups  # ~30 % explicitly failed


def test_cat_score_rubric_under_faults():
    retries = 1
    anchor = faulty_lm(scripted_lm(lambda p: RUBRIC if "grading rubric" in p else "Rest, ice, compress."),
                       rate=RATE, seed=11, stall_s=0.01, num_retries=retries)
    judge = faulty_lm(scripted_lm(lambda p: "\n".join(f'<verdict id="{i}">yes</verdict>' for i in range(1, 6))),
                      rate=RATE, seed=12, stall_s=0.01, num_retries=retries)
    counts = Counter()
    for per_criterion in (False, True):
        cat = CaT(g=3, mode="rubric", policy=scripted_lm(["unused"]), anchor=anchor, judge=judge,
                  per_criterion=per_criterion)
        for q in range(20):
            pred = cat.score([f"Q{q} rest", f"Q{q} ice", f"Q{q} elevate"])
            kinds = Counter(f.split(":")[0] for f in pred.failures)
            assert pred.valid == (kinds["anchor_error"] + kinds["judge_error"] == 0)
            assert len(pred.rewards) == 3 and all(0.0 <= r <= 1.0 for r in pred.rewards)
            if pred.valid:
                assert pred.rewards == [1.0, 1.0, 1.0]  # no fault leaked into a valid group's rewards
            counts.update(kinds)
            counts["groups"] += 1
            counts["valid" if pred.valid else "invalid"] += 1
    assert counts["valid"] + counts["invalid"] == counts["groups"] == 40
    assert counts["invalid"] > 0
    assert counts["anchor_error"] == anchor.faults.failed_requests
    assert counts["judge_error"] == judge.faults.failed_requests
    _bounded(anchor, retries)
    _bounded(judge, retries)


def test_training_reward_under_faults():
    """The train-side reward (TRL's CaTReward): a group whose anchor failed gets None (TRL skips it), is counted in
    ``cat/invalid_groups``, and the rest are scored; many steps, never an exception."""
    retries, g, groups_per_step = 1, 4, 6
    anchor = faulty_lm(scripted_lm(lambda p: "# UNIFIED RESPONSE " + _policy_answer(p)), rate=RATE, seed=31,
                       stall_s=0.01, num_retries=retries)
    reward = CaTReward(anchor, g=g, equivalence="string", artifacts=False)
    invalid = none = anchor_errors = 0
    for step in range(8):
        prompts = [f"Q{step * 10 + k}: what is it?" for k in range(groups_per_step) for _ in range(g)]
        completions = [f"{p.split(':')[0]} so \\boxed{{{2 * int(p[1:p.index(':')])}}}" for p in prompts]
        rewards = reward(prompts=prompts, completions=completions)
        assert len(rewards) == len(prompts) and all(r in (None, 1.0) for r in rewards)
        none += rewards.count(None)
        invalid += reward.last_metrics["cat/invalid_groups"]
        anchor_errors += reward.last_metrics["cat/anchor_errors"]
    assert none == g * invalid == g * anchor.faults.failed_requests  # every failed group: explicitly skipped
    assert anchor_errors == anchor.faults.failed_requests  # ... and counted as a failed anchor call
    assert anchor.faults.requests == 8 * groups_per_step
    _bounded(anchor, retries)


# ------------------------------------------------------------------------------------------------ eval
def test_eval_finishes_under_faults_and_every_item_is_accounted_for(tmp_path):
    retries = 1
    policy = faulty_lm(scripted_lm(lambda p: "2" if "best response" in p else _policy_answer(p)), rate=RATE,
                       seed=21, stall_s=0.01, num_retries=retries)
    anchor = faulty_lm(scripted_lm(lambda p: "# UNIFIED RESPONSE " + _policy_answer(p)), rate=RATE, seed=22,
                       stall_s=0.01, num_retries=retries)
    lms = {"policy": policy, "anchor": anchor, "judge": scripted_lm(["no"])}
    items = [Item(f"q{i}", f"Q{i}: what is {i} + {i}?", str(2 * i)) for i in range(1, 13)]
    programs = build_programs(lms, mode="verifiable", g=2)
    methods = ["single", "majority", "self_bon", "cat"]
    result = run_eval(items, programs, [1, 2], methods, tmp_path / "run", equivalence="string", progress=False,
                      cache=False)

    assert [r["id"] for r in result.records] == [i.id for i in items] and result.evaluated == len(items)
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(items)  # one durable record per item, none lost, none twice
    rollout_failures = policy_errors = synthesis_failed = 0
    for record in result.records:
        assert len(record["results"]) == len(methods) * 2
        for res in record["results"]:
            assert isinstance(res["correct"], bool)  # every (method, G) ends graded...
            if res["method"] == "self_bon":
                policy_errors += res["fallback"] == "policy_error"
            if res["method"] == "cat":
                synthesis_failed += res["fallback"] == "synthesis_failed"  # ...or explicitly failed
                if not res["correct"]:  # wrong only when its anchor call failed, or every rollout it saw did
                    assert res["fallback"] == "synthesis_failed" or all(record["rollout_failures"][: res["g"]])
        failed = [f for f in record["rollout_failures"] if f]
        rollout_failures += len(failed)
        assert all(r == "" for r, f in zip(record["rollouts"], record["rollout_failures"], strict=True) if f)
    assert rollout_failures + policy_errors == policy.faults.failed_requests
    assert synthesis_failed == anchor.faults.failed_requests
    # The summary and MLflow see the same counts: totals once per call, and every row its own share.
    totals = failure_totals(result.records)
    assert totals["rollout_errors"] + totals["policy_errors"] == policy.faults.failed_requests
    assert totals["anchor_errors"] == anchor.faults.failed_requests
    rows = {(r["method"], r["g"]): r for r in summarize(result.records)}
    assert sum(r["anchor_errors"] for r in rows.values()) == anchor.faults.failed_requests
    assert sum(r["policy_errors"] for r in rows.values()) == policy_errors
    for (method, g), row in rows.items():
        used = 1 if method == "single" else g
        assert row["rollout_errors"] == sum(bool(f) for rec in result.records for f in rec["rollout_failures"][:used])
        assert row["failed_calls"] == row["rollout_errors"] + row["policy_errors"] + row["anchor_errors"]
    assert policy.faults.stats()["faults"] > 0 and anchor.faults.stats()["faults"] > 0
    _bounded(policy, retries)
    _bounded(anchor, retries)
