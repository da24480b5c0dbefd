"""Faults on the HTTP path: a proxy in front of the real server answers 500, drops or stalls a seeded fraction of
requests, and always fails one poisoned question. Retries are bounded (DSPy's ``num_retries``), every item ends
scored or explicitly failed, and the run finishes."""

from __future__ import annotations

import time

import pytest

from cat_dspy.lm.models import make_lm
from cat_dspy.modules import CaT
from cat_dspy.modules.rollout import Rollout

pytestmark = [pytest.mark.server, pytest.mark.robustness]

MODEL = "openai/smollm2"
POISON = "POISON-7f3a"
RETRIES = 2
ERRORS = ("rollout_error", "anchor_error", "judge_error")


def _faulty_lm(url: str):
    # cache=False: a retry must reach the server again, never a cached reply.
    return make_lm(MODEL, api_base=url, max_tokens=12, temperature=0.7, num_retries=RETRIES, timeout=4, cache=False)


def _poisoned(request: dict) -> bool:
    return POISON in str(request["body"])


def test_faulty_server_every_item_scored_or_failed(proxy_factory) -> None:
    proxy = proxy_factory(error=0.2, drop=0.1, stall=0.1, stall_s=5.0, seed=11, poison=POISON)
    lm = _faulty_lm(proxy.url)
    cat = CaT(g=2, policy=lm, anchor=lm, judge=lm)
    cat.rollout.strategy = "concurrent"
    questions = ["What is 1+1?", "What is 2+5?", f"{POISON}: what is 9-4?"]
    start = time.perf_counter()
    scored, failed = [], []
    for question in questions:
        pred = cat(question=question)
        assert len(pred.rollouts) == len(pred.rewards) == 2  # a group is never silently shorter than G
        (failed if any(f.startswith(ERRORS) for f in pred.failures) else scored).append((question, pred))
    elapsed = time.perf_counter() - start

    assert len(scored) + len(failed) == len(questions)  # nothing lost
    poisoned = next(pred for q, pred in failed if POISON in q)  # the poisoned item is marked failed, not dropped
    assert sum(f.startswith("rollout_error") for f in poisoned.failures) == 2 and poisoned.rollouts == ["", ""]
    assert all("InternalServerError" in f or "500" in f for f in poisoned.failures if f.startswith("rollout_error"))
    # Bounded retries: each of the poisoned item's 2 rollout calls was tried exactly 1 + RETRIES times ...
    assert len(proxy.requests(_poisoned)) == 2 * (1 + RETRIES)
    # ... and no logical call (G rollouts + 1 synthesis per item) was tried more often than that.
    posts = proxy.requests(lambda r: r["path"].endswith("/chat/completions"))
    assert len(posts) <= len(questions) * (2 + 1) * (1 + RETRIES)
    outcomes = {o: sum(r["outcome"] == o for r in posts) for o in ("ok", "error", "drop", "stall")}
    assert outcomes["ok"] >= 1 and outcomes["error"] >= 2 * (1 + RETRIES)
    assert sum(outcomes.values()) == len(posts)
    for _, pred in scored:
        assert pred.reference is not None and all(r in (0.0, 1.0) for r in pred.rewards)
    assert elapsed < 120


def test_n_request_fault_fails_the_whole_group_after_bounded_retries(proxy_factory) -> None:
    proxy = proxy_factory(poison=POISON)
    rollout = Rollout(g=3, strategy="n", lm=_faulty_lm(proxy.url))
    pred = rollout(question=f"{POISON}: what is 2+2?")
    assert pred.strategy == "n" and pred.rollouts == ["", "", ""] and all(pred.failures)
    assert len(proxy.requests()) == 1 + RETRIES  # one n=3 request, retried RETRIES times
    assert all(r["body"].get("n") == 3 for r in proxy.requests())
