"""The llama.cpp runtime on the real embedded GGUF: batching, seeds, logprobs, stop strings, score, DSPy's cache."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest
from components import require_component
from dspy.clients.cache import Cache
from dspy.lm15 import Config, Message, Request

from cat_dspy.lm import llamacpp
from cat_dspy.lm.llamacpp import LlamaCppEngine
from cat_dspy.lm.models import engine_of, make_lm

require_component("llama_cpp")
pytestmark = pytest.mark.integration
QUESTION = "What is 2+2?"
OTHERS = ["Name a color.", "Write one sentence about the sea.", "What is 7 times 6?", "Say hello in French."]
TEXT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether? She sold 48 / 2 = 24 clips in May, so 48 + 24 = 72.")
SYNTHESIS = ("Here are several candidate solutions.\n" + "".join(f"Candidate {i}: {TEXT}\n" for i in range(8))
             + "Synthesize the best answer.")  # ~575 tokens, a synthesis-sized prompt
HEAD = ("Here are several candidate solutions.\n" + "".join(f"Candidate {i}: {TEXT}\n" for i in range(2))
        + "Synthesize the best answer.")  # ~150 tokens: a synthesis instruction that several prompts share


@pytest.fixture(scope="module")
def engine() -> LlamaCppEngine:
    engine = engine_of(make_lm("local", runtime="llamacpp"))
    assert isinstance(engine, LlamaCppEngine)
    return engine


@contextlib.contextmanager
def batch_of(engine: LlamaCppEngine, n: int) -> Iterator[None]:
    """The next batch closes at exactly n requests however slow the submitting thread is."""
    saved = engine.max_batch_size, engine.batch_window_s
    engine.max_batch_size, engine.batch_window_s = n, 30.0
    try:
        yield
    finally:
        engine.max_batch_size, engine.batch_window_s = saved


def request(text: str = QUESTION, **config) -> Request:
    return Request(model="local/test", messages=(Message.user(text),), config=Config(**{"max_tokens": 16, **config}))


def together(engine: LlamaCppEngine, requests: list[Request]) -> list:
    """The requests' responses, all collected into one batch."""
    with batch_of(engine, len(requests)):
        futures = [engine.submit(r) for r in requests]
        return [f.result() for f in futures]


def text(response) -> str:
    return response.message.parts[0].text


def test_a_seeded_request_gives_the_same_text_alone_and_in_a_mixed_batch(engine: LlamaCppEngine) -> None:
    seeded = request(temperature=0.9, seed=11, logprobs=0)
    alone = engine.complete(seeded)
    others = [request(q, temperature=t, seed=s, top_p=p, top_k=k, logprobs=0)
              for q, t, s, p, k in [(OTHERS[0], 1.0, 1, None, None), (OTHERS[1], 0.7, None, 0.9, None),
                                    (OTHERS[2], 1.2, 5, None, 40), (QUESTION, 1.0, 3, None, None),
                                    (QUESTION, 0.9, 12, None, None), (OTHERS[3], 0.8, 2, 0.95, 10),
                                    (OTHERS[0], 1.0, None, None, None)]]
    engine.reset_stats()
    batch = together(engine, [*others[:3], seeded, *others[3:]])
    assert engine.stats["generate_calls"] == 1 and engine.stats["rows"] == 8  # one batch, a row each
    assert text(batch[3]) == text(alone) and batch[3].usage == alone.usage
    assert batch[3].logprobs == alone.logprobs  # token ids, logprobs and top alternatives: bit-identical


def test_long_prompts_sampled_together_give_their_texts_alone(engine: LlamaCppEngine) -> None:
    """Prompts of 64+ tokens, the second written to the KV cache after the first (where llama.cpp's logits once
    depended on the cells' offset): each seeded row still gives the text it gives alone."""
    long = [request(TEXT + " Check the sum.", temperature=1.0, seed=3, max_tokens=12),
            request(TEXT + " Check the difference.", temperature=1.0, seed=3, max_tokens=12)]
    assert all(len(engine.load()[1](TEXT)["input_ids"]) >= 64 for _ in long)
    alone = [text(engine.complete(r)) for r in long]
    assert [text(r) for r in together(engine, [*long, long[0]])] == [*alone, alone[0]]


def test_a_synthesis_sized_prompt_gives_bit_identical_texts_and_logprobs_alone_and_batched() -> None:
    """The eval case that once differed (min_ppl reads the logprobs): a ~575-token prompt, two seeded rows of it
    (one prefill, copied) among prompts of other lengths, against each row decoded alone; 2 threads (llama.cpp's
    flash attention, once on, split its work by thread)."""
    engine = LlamaCppEngine(n_threads=2)
    rows = [request(SYNTHESIS, temperature=1.0, seed=3, logprobs=2, max_tokens=8),
            request(SYNTHESIS, temperature=1.0, seed=4, logprobs=2, max_tokens=8)]
    others = [request(OTHERS[0], temperature=1.0, seed=1), request(TEXT + " Check it.", temperature=0.8, seed=2),
              request(QUESTION), request(TEXT * 2 + " Summarize.", temperature=1.0, seed=5)]
    try:
        assert len(engine.load()[1](SYNTHESIS)["input_ids"]) > 512  # more than one ubatch
        alone = [engine.complete(r) for r in rows]
        batch = together(engine, [others[0], others[1], rows[0], others[2], others[3], rows[1]])
        for ours, theirs in zip([batch[2], batch[5]], alone, strict=True):
            assert text(ours) == text(theirs) and ours.logprobs == theirs.logprobs
    finally:
        engine.close()


def test_prompts_sharing_a_head_prefill_it_once_and_give_their_texts_alone(engine: LlamaCppEngine) -> None:
    """Synthesis-like prompts (one long instruction, different rollouts after it): the head is prefilled once and
    copied, and each seeded row's text and logprobs are bit-identical to the row decoded alone."""
    prompts = [request(HEAD + f" Candidate {k} says {k * 7}.", temperature=1.0, seed=k, max_tokens=12,
                       logprobs=1) for k in range(3)] + [request(OTHERS[1], temperature=1.0, seed=5, max_tokens=12)]
    alone = [engine.complete(r) for r in prompts]
    engine.reset_stats()
    batch = together(engine, [prompts[2], prompts[3], prompts[0], prompts[1]])
    for ours, theirs in zip([batch[2], batch[3], batch[0], batch[1]], alone, strict=True):
        assert text(ours) == text(theirs) and ours.logprobs == theirs.logprobs
    head = len(engine.load()[1](HEAD)["input_ids"])  # the three synthesis prompts share at least this much
    stats = engine.stats
    assert stats["shared_prefix_tokens"] >= 2 * (head - 8)
    assert stats["prefill_tokens"] + stats["shared_prefix_tokens"] == sum(r.usage.input_tokens for r in alone)


def test_g_rollouts_of_one_prompt_differ_and_greedy_is_greedy(engine: LlamaCppEngine) -> None:
    rollouts = together(engine, [request(temperature=1.0, seed=s, max_tokens=24) for s in range(4)])
    assert len({text(r) for r in rollouts}) >= 3
    greedy = [text(r) for r in together(engine, [request(), request(OTHERS[2]), request()])]
    assert greedy[0] == greedy[2] == text(engine.complete(request())) and greedy[1] != greedy[0]
    assert "4" in greedy[0]


def test_phase_stats_count_each_distinct_prompt_once_and_every_decode_step(engine: LlamaCppEngine) -> None:
    """G rows of one prompt are prefilled once; every step decodes the rows still live; both phases are timed
    inside generate, and score's prefill is counted too."""
    engine.reset_stats()
    responses = together(engine, [request(temperature=1.0, seed=s, max_tokens=8) for s in range(3)]
                         + [request(OTHERS[2], temperature=1.0, seed=9, max_tokens=8)])
    stats = engine.stats
    prompts = [responses[0].usage.input_tokens, responses[3].usage.input_tokens]
    assert stats["prefill_tokens"] == sum(prompts) < stats["prompt_tokens"]  # the shared prompt once, not 3 times
    generated = [r.usage.output_tokens + (r.finish_reason == "stop") for r in responses]  # EOS is decoded, not kept
    assert stats["decode_rows"] == sum(generated) - len(responses)  # the first token comes from the prefill
    assert stats["decode_steps"] == max(generated) - 1
    assert 0 < stats["prefill_seconds"] + stats["decode_seconds"] <= stats["generate_seconds"]
    engine.score(["one two three"])
    assert engine.stats["prefill_tokens"] == sum(prompts) + len(engine.load()[1]("one two three")["input_ids"]) - 1


def test_logprobs_are_those_of_the_sampled_distribution(engine: LlamaCppEngine) -> None:
    greedy, sampled = together(engine, [request(OTHERS[1], logprobs=3), request(OTHERS[1], temperature=0.8,
                                                                                 top_k=5, seed=4, logprobs=5)])
    for response in (greedy, sampled):
        tokens = response.logprobs
        assert len(tokens) == response.usage.output_tokens > 0
        assert all(math.isfinite(t.logprob) and t.logprob <= 0 for t in tokens)
        assert all(t.top[0].logprob >= t.logprob for t in tokens)
    assert all(t.top[0].token_id == t.token_id and t.top[0].logprob == t.logprob for t in greedy.logprobs)
    # top_k=5: the sampled distribution has 5 tokens, whose probabilities add up to 1
    assert all(len(t.top) == 5 and abs(sum(math.exp(a.logprob) for a in t.top) - 1) < 1e-3 for t in sampled.logprobs)
    assert all(t.token_id in {a.token_id for a in t.top} for t in sampled.logprobs)


def test_stop_strings_cut_text_usage_and_logprobs(engine: LlamaCppEngine) -> None:
    full = engine.complete(request(max_tokens=24))
    words = text(full).split()
    assert len(words) >= 4, text(full)
    stop = " " + words[2]
    cut = engine.complete(request(max_tokens=24, stop=(stop,), logprobs=0))
    assert text(cut) == text(full)[: text(full).index(stop)] and cut.finish_reason == "stop"
    assert 0 < cut.usage.output_tokens < full.usage.output_tokens == engine.count_tokens(text(full))  # EOS: not counted
    assert len(cut.logprobs) == cut.usage.output_tokens
    long = engine.complete(request(OTHERS[1], max_tokens=6))
    assert long.finish_reason == "length" and long.usage.output_tokens == 6


def test_a_batch_bigger_than_the_kv_budget_is_split_and_unchanged(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [request(q, temperature=0.9, seed=7, max_tokens=24) for q in [QUESTION, *OTHERS]] + [
        request(QUESTION, temperature=0.9, seed=8, max_tokens=24)]
    expected = [text(r) for r in together(engine, requests)]
    monkeypatch.setattr(llamacpp, "_MAX_CELLS", 512)  # ~60 prompt + 24 new tokens: 256-cell streams, 2 rows a part
    small = LlamaCppEngine()
    parts = []
    decode_part = small._decode_part
    small._decode_part = lambda native, inputs, rows, *rest: parts.append(rows) or decode_part(native, inputs, rows,
                                                                                              *rest)
    try:
        assert [text(r) for r in together(small, requests)] == expected
        assert len(parts) >= 2 and sorted(r for part in parts for r in part) == list(range(6))
    finally:
        small.close()


def test_score_matches_the_torch_engine(engine: LlamaCppEngine) -> None:
    scores = engine.score([TEXT, "Hi"])
    torch_scores = engine_of(make_lm("local", runtime="torch")).score([TEXT, "Hi"])
    for ours, theirs in zip(scores, torch_scores, strict=True):
        assert [s[:2] for s in ours] == [s[:2] for s in theirs]  # the same tokens and character spans
        assert ours[0][2] is None and all(lp is not None and lp <= 0 for _, _, lp in ours[1:])
    ours, theirs = [lp for *_, lp in scores[0][1:]], [lp for *_, lp in torch_scores[0][1:]]
    assert sum(abs(a - b) for a, b in zip(ours, theirs, strict=True)) / len(ours) < 0.25  # Q4_1 on both; rounding
    assert abs(sum(ours) - sum(theirs)) < 0.05 * abs(sum(theirs))
    assert TEXT[scores[0][-1][0] : scores[0][-1][1]] == "."


def test_dspy_cache_answers_without_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dspy, "cache", Cache(True, True, str(tmp_path / "dspy-cache")))
    lm = make_lm("local", runtime="llamacpp", max_tokens=12, temperature=0.8, seed=2)
    engine = engine_of(lm)
    first = lm(QUESTION)
    calls = engine.stats["generate_calls"]
    assert lm(QUESTION) == first and engine.stats["generate_calls"] == calls


def test_a_forked_child_opens_its_own_context(engine: LlamaCppEngine) -> None:
    parent = text(engine.complete(request()))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer the same greedy request, write it, leave without running pytest's exit
        try:
            os.write(write, text(engine.complete(request())).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    assert child == parent and engine._model.pid == os.getpid()
