"""The real embedded SmolLM2-135M-Instruct through ``make_lm("local")`` (converts the GGUF once if needed)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import dspy
import pytest
from dspy.clients.cache import Cache

from cat_dspy import cli
from cat_dspy.lm.models import engine_of, local_model_id, make_lm

pytestmark = pytest.mark.integration
QUESTION = "What is 2+2?"


@pytest.fixture(autouse=True)
def dspy_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dspy, "cache", Cache(True, True, str(tmp_path / "dspy-cache")))


def test_embedded_model_batches_rollouts_and_reports_usage() -> None:
    lm = make_lm("local", max_tokens=32)
    engine = engine_of(lm)
    assert engine is not None and lm.model == local_model_id(None, engine.runtime)  # the default CPU runtime
    greedy = lm(QUESTION)[0]
    assert "4" in greedy or "four" in greedy.lower()
    engine.reset_stats()
    texts, usage, barrier = [None] * 4, [None] * 4, threading.Barrier(4)

    def rollout(i: int) -> None:
        barrier.wait()
        with dspy.track_usage() as tracker:
            texts[i] = lm.copy(rollout_id=i, temperature=0.8)(QUESTION)[0]
        usage[i] = tracker.get_total_tokens()

    for repeat in range(2):
        saved = engine.max_batch_size, engine.batch_window_s
        engine.max_batch_size, engine.batch_window_s = 4, 30.0  # one batch of four however slow the threads
        threads = [threading.Thread(target=rollout, args=(i,)) for i in range(4)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            engine.max_batch_size, engine.batch_window_s = saved
        assert engine.stats["generate_calls"] == 1  # one batch, then four DSPy cache hits
        assert len(set(texts)) == 4
        if repeat == 0:
            assert all(0 < u[lm.model]["completion_tokens"] <= 32 for u in usage)
            assert engine.stats["completion_tokens"] == sum(u[lm.model]["completion_tokens"] for u in usage)
        else:
            assert all(not u for u in usage)


def test_embedded_model_logprobs() -> None:
    lm = make_lm("local", max_tokens=16, cache=False)
    output = lm(QUESTION, logprobs=True, temperature=0.7)[0]
    tokens = output["logprobs"]["content"]
    assert len(tokens) == lm.history[-1]["usage"]["completion_tokens"] > 0
    assert all(token["logprob"] <= 0 for token in tokens)
    assert "".join(token["token"] for token in tokens).startswith(output["text"][:8])


def test_solve_length_limit_counts_the_embedded_models_tokens(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import json

    from cat_dspy.modules import CaT
    from cat_dspy.testing import scripted_lm

    policy = make_lm("local", max_tokens=24)
    engine = engine_of(policy)
    # SmolLM2's own tokenizer: two words, far more tokens.
    long, short = "Pneumonoultramicroscopicsilicovolcanoconiosis \\boxed{4}", "\\boxed{4}"
    _, tokenizer = engine.load()
    counts = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (short, long)]
    assert counts == [engine.count_tokens(short), engine.count_tokens(long)]
    assert len(long.split()) <= counts[0] < counts[1]
    anchor = scripted_lm(["# UNIFIED RESPONSE \\boxed{4}"])
    pred = CaT(g=2, policy=policy, anchor=anchor, length_limit=counts[0]).score([short, long])
    assert pred.rewards == [1.0, -1.0] and pred.parsed["length_unit"] == "tokens"

    # End to end: `solve --length-limit` penalizes exactly the rollouts over the limit in the policy's tokens.
    limit = 21  # 24-token rollouts run ~16-20 words: over the limit in tokens, mostly under it in words
    roles = {"policy": policy, "anchor": anchor, "judge": anchor}
    monkeypatch.setattr("cat_dspy.cli.solve.build_roles", lambda args: roles)
    assert cli.main(["solve", QUESTION, "--g", "3", "--length-limit", str(limit), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["parsed"]["length_unit"] == "tokens"
    over = [engine.count_tokens(r) > limit for r in result["rollouts"]]
    assert [r == -1.0 for r in result["rewards"]] == over and result["parsed"]["length_penalized"] == sum(over)
    print(f"tokens/words of the rollouts: {[(engine.count_tokens(r), len(r.split())) for r in result['rollouts']]}")


DEMO_OUTCOME = ("2 of 4 rollouts agree with the reference answer 12 (reward 1); the others answered 11, 5 (reward 0). "
                "The reference is the rollouts' majority answer.")
"""What `make demo` shows with the Makefile's seed, on this machine's floating point (the README quotes it)."""


def test_make_demo_shows_cat_at_work(capsys) -> None:
    """`make demo`'s command (the Makefile's QUESTION and DEMO_ARGS) on the embedded model: rollouts, the reference,
    the rewards, and one line saying what CaT did: exactly the seeded group the README describes."""
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    question = re.search(r"^QUESTION \?= (.+)$", makefile, re.M).group(1)
    demo_args = re.search(r"^DEMO_ARGS \?= (.+)$", makefile, re.M).group(1).split()
    assert cli.main(["solve", question, *demo_args]) == 0
    out = capsys.readouterr().out
    assert "rollout 4" in out and "reference (anchor synthesis)" in out
    table = re.findall(r"│ (\d)\s+│ (\S+)\s+│ ([\d.]+)\s+│", out)  # rollout, answer, reward
    assert table == [("1", "12", "1.00"), ("2", "11", "0.00"), ("3", "12", "1.00"), ("4", "5", "0.00")], out
    assert "reference answer: 12   valid: True   failures: none" in out
    assert DEMO_OUTCOME in " ".join(out.split()), out
    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    assert DEMO_OUTCOME in readme, "the README's demo paragraph no longer says what `make demo` shows"


def test_solve_rubric_mode_end_to_end_reconciles_criteria_verdicts_and_failures(monkeypatch, capsys) -> None:
    """Rubric mode on the embedded model, every role real: the anchor proposes a rubric from its synthesis, the judge
    answers one call per (rollout, criterion), and what `solve --json` reports adds up with what the judge said.

    A question and seed where this 135M anchor writes a (short) rubric and the judge answers readably at least once;
    whatever it wrote, the counts must agree."""
    import json

    from cat_dspy.adapters import _RESERVED, quote
    from cat_dspy.cli import solve as solve_cli
    from cat_dspy.modules.judge import own_answer
    from cat_dspy.scoring.parsing import parse_verdict

    built: dict = {}
    real_build = solve_cli.build_roles
    monkeypatch.setattr(solve_cli, "build_roles", lambda args: built.update(real_build(args)) or built)
    g = 2
    argv = ["solve", "Give three tips for sleeping well.", "--mode", "rubric", "--per-criterion", "--g", str(g),
            "--max-tokens", "32", "--anchor-max-tokens", "64", "--judge-max-tokens", "16", "--seed", "3", "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rubric, verdicts, rewards, failures, parsed = (result[k] for k in ("rubric", "verdicts", "rewards", "failures",
                                                                       "parsed"))
    assert result["valid"] and result["failed_calls"] == {"rollout": 0, "anchor": 0, "judge": 0}
    assert rubric, "the anchor proposed no criterion: the judge and reward stages never ran"
    assert parsed["rubric"] == (len(rubric) >= 5)  # parsed: at least min_criteria criteria
    assert ("rubric_too_short" in failures) == (len(rubric) < 5) and "empty_rubric" not in failures
    assert len(verdicts) == len(rewards) == g and all(len(v) == len(rubric) for v in verdicts)
    assert rewards == [sum(v) / len(rubric) for v in verdicts]  # the unweighted fraction satisfied
    unread = parsed["unread_verdicts"]
    assert failures.count("unread_verdicts") == sum(u > 0 for u in unread)
    assert result["usage"]["anchor"]["calls"] == 2 and result["usage"]["judge"]["calls"] == g * len(rubric)

    # The judge's own answers, call by call: each (rollout, criterion) once, read as the report says.
    read: dict[tuple[int, int], bool | None] = {}
    for entry in built["judge"].history:
        prompt = "\n".join(m["content"] for m in entry["messages"])
        [i] = [i for i, r in enumerate(result["rollouts"]) if quote(r, _RESERVED) in prompt]
        [k] = [k for k, c in enumerate(rubric) if c in prompt]
        raw = entry["outputs"][0]
        read[i, k] = parse_verdict(own_answer(raw if isinstance(raw, str) else raw["text"], result["rollouts"][i]))
    assert sorted(read) == [(i, k) for i in range(g) for k in range(len(rubric))]
    assert [[bool(read[i, k]) for k in range(len(rubric))] for i in range(g)] == verdicts
    assert [sum(read[i, k] is None for k in range(len(rubric))) for i in range(g)] == unread
    assert any(v is not None for v in read.values()), "no verdict of the judge could be read"
