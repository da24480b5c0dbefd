"""Hostile math: answers that make symbolic equivalence explode are cut off by the time limit, from worker threads
and from ``async def`` rewards on an event loop; the reward falls back to string comparison and is counted."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cat_dspy.rewards import CaTReward
from cat_dspy.scoring.equivalence import EQUIVALENCE_FALLBACKS, equivalence_stats, equivalent
from cat_dspy.scoring.rewards import verifiable_reward
from cat_dspy.testing import scripted_lm

pytestmark = pytest.mark.robustness

LIMIT = 0.5
# Slack over the limit for killing the worker and a busy 2-core CI box; far below the minutes these take uncut.
SLACK = 10.0
EXPLOSIVE = [  # each of these runs for minutes (or exhausts memory) in sympy without a limit
    "1000000!",
    "10^{10^{10^{10}}}",
    "(" * 400 + "x+1" + ")" * 400,
    "\\frac{1}{" * 61 + "2" + "}" * 61,  # odd depth: the value is 1/2, never 2, whether or not sympy finishes
]
HOSTILE = [*EXPLOSIVE, "9^9^9^9", "2^{2^{2^{2^{2^{2}}}}}"]
FALLBACKS = EQUIVALENCE_FALLBACKS  # timeout, busy, start, crash, error, too long: each call lands in one outcome
OUTCOMES = ("none_input", "string_match", "string_mismatch", "numeric_match", "numeric_mismatch", "symbolic_match",
            "symbolic_mismatch", *FALLBACKS)


def _delta(before: dict[str, int]) -> dict[str, int]:
    after = equivalence_stats()
    return {k: after[k] - before[k] for k in after}


def _timed(a: str, b: str) -> tuple[bool, float]:
    start = time.monotonic()
    verdict = equivalent(a, b, timeout=LIMIT)
    return verdict, time.monotonic() - start


@pytest.fixture(scope="module", autouse=True)
def _warm_workers():
    """Start the symbolic workers once, so the timings below measure the limit, not an interpreter start."""
    equivalent("x+1", "1+x")
    yield


def test_hostile_answers_are_cut_off_in_worker_threads_and_counted():
    before = equivalence_stats()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda a: _timed(a, "2"), HOSTILE))
    delta = _delta(before)
    for answer, (verdict, seconds) in zip(HOSTILE, results, strict=True):
        assert verdict is equivalent(answer, "2", mode="string") is False, answer  # the string comparison's answer
        assert seconds < LIMIT + SLACK, (answer[:40], seconds)
    assert delta["calls"] == len(HOSTILE)
    assert sum(delta[k] for k in OUTCOMES) == delta["calls"]
    assert delta["timeout_fallback"] >= 2, delta  # the explosive ones hit the limit, and are counted
    before = equivalence_stats()
    assert equivalent(EXPLOSIVE[0], " " + EXPLOSIVE[0] + " ", timeout=LIMIT) is True  # string-equal: never symbolic
    assert equivalent("x+1", "1+x", timeout=LIMIT)  # the pool recovered: killed workers restart
    assert _delta(before)["string_match"] == 1


def test_async_reward_on_an_event_loop_in_a_worker_thread():
    """TRL runs ``async def`` reward functions on an event loop in a background thread: no signals, no main thread."""

    async def reward(completions: list[str], reference: str) -> list[float]:
        return [verifiable_reward(c, reference) for c in completions]

    async def main() -> tuple[list[list[float]], int]:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        # Blocking work goes to threads, so the loop (and the heartbeat) keeps running while the limit acts.
        rewards = await asyncio.gather(asyncio.to_thread(asyncio.run, reward([EXPLOSIVE[0], "2"], "2")),
                                       reward([EXPLOSIVE[2]], "2"))
        beat.cancel()
        return list(rewards), ticks

    out: dict[str, object] = {}
    before = equivalence_stats()
    start = time.monotonic()
    thread = threading.Thread(target=lambda: out.update(result=asyncio.run(main())))
    thread.start()
    thread.join(timeout=3 * (LIMIT + SLACK))
    assert not thread.is_alive(), "an async reward hung on a hostile answer"
    rewards, ticks = out["result"]
    assert rewards == [[0.0, 1.0], [0.0]]
    assert time.monotonic() - start < 3 * (LIMIT + SLACK)
    delta = _delta(before)
    assert delta["timeout_fallback"] >= 1 and sum(delta[k] for k in OUTCOMES) == delta["calls"]
    assert ticks >= 1


def test_cat_reward_with_hostile_completions_from_an_async_caller():
    """TRL's CaT reward (CaT.score underneath) on a group with an explosive completion: defined rewards, counted."""
    reward = CaTReward(scripted_lm(["# UNIFIED RESPONSE $\\boxed{2}$"]), g=3)

    async def score() -> list[float | None]:
        completions = [f"\\boxed{{{EXPLOSIVE[1]}}}", "\\boxed{2}", "no answer"]
        return await asyncio.to_thread(reward, prompts=["q"] * 3, completions=completions)

    before = equivalence_stats()
    start = time.monotonic()
    assert asyncio.run(score()) == [0.0, 1.0, 0.0]
    assert time.monotonic() - start < LIMIT + SLACK
    delta = _delta(before)
    assert sum(delta[k] for k in OUTCOMES) == delta["calls"] >= 3 and delta["timeout_fallback"] >= 1
