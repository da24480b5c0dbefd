"""Fast tests of the local engine and ``make_lm`` on a tiny random Llama built here (no network, no real weights)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest
from dspy.clients.cache import Cache
from dspy.lm15 import Config, ContextLengthError, Message, Request, UnsupportedFeatureError

from cat_dspy.lm import hf
from cat_dspy.lm.hf import load_model
from cat_dspy.lm.local import AsyncLocalEngine, LocalEngine
from cat_dspy.lm.models import engine_of, local_model_id, make_lm

QUESTION = "What is 2+2?"


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama: Path) -> Path:
    return tiny_llama


@pytest.fixture(autouse=True)
def dspy_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh in-memory DSPy cache per test (a disk cache costs ~1 s to open; the integration test uses one)."""
    monkeypatch.setattr(dspy, "cache", Cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None))


@pytest.fixture
def engine(tiny_dir: Path):
    engine = LocalEngine(tiny_dir)
    yield engine
    engine.close()


@contextlib.contextmanager
def batch_of(engine: LocalEngine, n: int) -> Iterator[LocalEngine]:
    """Make the next batch close at exactly n requests however slow the threads are (a loaded CI machine)."""
    saved = engine.max_batch_size, engine.batch_window_s
    engine.max_batch_size, engine.batch_window_s = n, 30.0
    try:
        yield engine
    finally:
        engine.max_batch_size, engine.batch_window_s = saved


def request(text: str = QUESTION, **config) -> Request:
    return Request(model="local/tiny", messages=(Message.user(text),), config=Config(**config))


def concurrently(fn, n: int) -> list:
    """Run ``fn(i)`` in n threads released together; results (or exceptions) in order."""
    results, barrier = [None] * n, threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_complete_reports_usage_and_finish(engine: LocalEngine) -> None:
    model, tokenizer = engine.load()
    response = engine.complete(request(max_tokens=8))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    assert response.usage.input_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert response.finish_reason in ("stop", "length")
    assert (response.usage.output_tokens == 8) == (response.finish_reason == "length")
    assert response.logprobs is None and isinstance(response.text, str)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_concurrent_prompts_share_one_generate_and_match_solo_greedy(engine: LocalEngine) -> None:
    prompts = ["hi", "What is 2+2? Answer with a number only, please.", QUESTION, QUESTION]
    solo = [engine.complete(request(p, max_tokens=10)).text for p in prompts]
    engine.reset_stats()
    with batch_of(engine, 4):
        batched = concurrently(lambda i: engine.complete(request(prompts[i], max_tokens=10)).text, 4)
    assert batched == solo  # left padding does not change greedy outputs
    stats = engine.stats
    assert stats["generate_calls"] == 1 and stats["requests"] == 4
    assert stats["rows"] == 3  # the two identical greedy prompts were computed once


def test_rollouts_through_dspy_are_one_generate_call_and_cached(tiny_dir: Path) -> None:
    lm = make_lm(f"local:{tiny_dir}", max_tokens=12)
    engine = engine_of(lm)
    engine.reset_stats()

    def rollout(i: int) -> tuple[str, dict]:
        with dspy.track_usage() as tracker:
            text = lm.copy(rollout_id=i, temperature=0.8)(QUESTION)[0]
        return text, tracker.get_total_tokens()

    with batch_of(engine, 4):
        first = concurrently(rollout, 4)
    assert engine.stats["generate_calls"] == 1 and engine.stats["rows"] == 4
    assert len({text for text, _ in first}) == 4
    for _, usage in first:
        assert usage[lm.model]["prompt_tokens"] > 0 and 0 < usage[lm.model]["completion_tokens"] <= 12
    again = concurrently(rollout, 4)
    assert engine.stats["generate_calls"] == 1  # all four were DSPy cache hits
    assert [text for text, _ in again] == [text for text, _ in first]
    assert all(not usage for _, usage in again)  # cache hits record no usage


def test_logprobs_count_the_completion_tokens(engine: LocalEngine, tiny_dir: Path) -> None:
    response = engine.complete(request(max_tokens=10, logprobs=3))
    assert len(response.logprobs) == response.usage.output_tokens
    for token in response.logprobs:
        assert token.logprob <= 0 and len(token.top) == 3
        assert token.top[0].logprob == pytest.approx(token.logprob)  # greedy picks the top token
    lm = make_lm(f"local:{tiny_dir}", max_tokens=10, cache=False)
    output = lm(QUESTION, logprobs=True)[0]
    assert len(output["logprobs"]["content"]) == lm.history[-1]["usage"]["completion_tokens"]
    assert all(item["logprob"] <= 0 for item in output["logprobs"]["content"])


def test_logprobs_are_under_the_sampling_distribution(engine: LocalEngine) -> None:
    response = engine.complete(request(max_tokens=8, temperature=1.0, top_k=1, logprobs=0))
    assert [t.logprob for t in response.logprobs] == [0.0] * response.usage.output_tokens


def test_seeded_sampling_is_reproducible(engine: LocalEngine) -> None:
    def sample(seed: int) -> str:
        return engine.complete(request(max_tokens=12, temperature=1.0, seed=seed)).text

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_a_seeded_request_gives_the_same_text_whatever_shares_its_batch(engine: LocalEngine) -> None:
    settings = {"hi": {"temperature": 0.7, "top_k": 5}, "#### 72": {"temperature": 1.3, "top_p": 0.9}}

    def sample(text: str, seed: int | None, **config) -> str:
        config = {"temperature": 1.0, **settings.get(text, {}), **config}
        return engine.complete(request(text, max_tokens=12, seed=seed, **config)).text

    alone = [sample(QUESTION, 7), sample(QUESTION, 7, logprobs=2)]
    others = [("hi", 1), ("Natalia sold clips to 48 of her friends.", 2), (QUESTION, 8), (QUESTION, None),
              ("#### 72", 3)]  # other sampling settings share the generate call, each row sampled as its own
    for with_logprobs in (False, True):
        extra = {"logprobs": 2} if with_logprobs else {}
        jobs = [(QUESTION, 7), *others] if with_logprobs else [*others, (QUESTION, 7)]  # another row position
        engine.reset_stats()
        with batch_of(engine, len(jobs)):
            batched = concurrently(lambda i, jobs=jobs, extra=extra: sample(*jobs[i], **extra), len(jobs))
        assert engine.stats["generate_calls"] == 1 and engine.stats["rows"] == len(jobs)
        assert batched[jobs.index((QUESTION, 7))] == alone[with_logprobs]
        assert batched[jobs.index((QUESTION, 8))] == sample(QUESTION, 8, **extra)  # its own seed, also batch-free
        assert batched[jobs.index(("hi", 1))] == sample("hi", 1, **extra)  # its own temperature and top_k
    assert alone[0] == alone[1]  # recording logprobs does not change the sample
    assert sample(QUESTION, 7) != sample(QUESTION, 8) or sample(QUESTION, 9) != sample(QUESTION, 7)


def test_stop_strings_cut_text_usage_and_logprobs(engine: LocalEngine) -> None:
    _, tokenizer = engine.load()
    ids = tokenizer("The answer is 4. The answer is 5.", add_special_tokens=False)["input_ids"]
    text, kept, finish = engine._finish(ids, 64, ("is",))
    assert (text, finish) == ("The answer ", "stop")
    assert "is" in tokenizer.decode(ids[:kept]) and "is" not in tokenizer.decode(ids[: kept - 1])
    eos = tokenizer.eos_token_id
    assert engine._finish([*ids[:3], eos, eos], 5, ()) == (tokenizer.decode(ids[:3]), 3, "stop")
    assert engine._finish(ids[:5], 5, ())[1:] == (5, "length")
    full = engine.complete(request(max_tokens=16, logprobs=0))
    stop = next(full.text[k : k + 2] for k in range(2, len(full.text)) if full.text[k : k + 2].isalnum())
    cut = engine.complete(request(max_tokens=16, logprobs=0, stop=[stop]))
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"
    assert len(cut.logprobs) == cut.usage.output_tokens <= full.usage.output_tokens


def test_each_caller_gets_its_own_error(engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = engine.load()
    generate = model.generate

    def flaky(*args, **kwargs):
        if kwargs["max_new_tokens"] == 5:
            raise RuntimeError("boom")
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", flaky)
    with batch_of(engine, 4):
        results = concurrently(lambda i: engine.complete(request(max_tokens=5 + i % 2)), 4)
    assert [type(r).__name__ for r in results] == ["RuntimeError", "Response", "RuntimeError", "Response"]
    assert results[0] is not results[2]
    with pytest.raises(UnsupportedFeatureError):
        engine.complete(Request(model="m", messages=(Message.tool("call-1", "42"),)))
    with pytest.raises(ContextLengthError):
        engine.complete(request(max_tokens=10_000))
    with pytest.raises(ValueError, match="extensions"):
        engine.complete(request(extensions={"n": 2}))


def test_async_engine_batches_coroutines(engine: LocalEngine, tiny_dir: Path) -> None:
    async_engine = AsyncLocalEngine(engine)

    async def main() -> tuple[list, list]:
        responses = await asyncio.gather(
            *(async_engine.complete(request(max_tokens=6, temperature=0.9)) for _ in range(10))
        )
        engine.batch_window_s = 0.02  # the stream below is a batch of one
        events = [event async for event in async_engine.stream(request(max_tokens=4))]
        return responses, events

    with batch_of(engine, 10):
        responses, events = asyncio.run(main())
    assert engine.stats["generate_calls"] == 2 and engine.stats["requests"] == 11
    assert len(responses) == 10 and events[0].type == "start" and events[-1].type == "end"
    lm = make_lm(f"local:{tiny_dir}", max_tokens=6)
    shared = engine_of(lm)
    shared.reset_stats()

    async def rollouts() -> list:
        return await asyncio.gather(*(lm.copy(rollout_id=i, temperature=0.9).acall(QUESTION) for i in range(6)))

    with batch_of(shared, 6):
        assert len(asyncio.run(rollouts())) == 6 and shared.stats["generate_calls"] == 1


def test_roles_share_one_engine_and_state_round_trips(tiny_dir: Path, tmp_path: Path) -> None:
    policy = make_lm(f"local:{tiny_dir}", temperature=0.8, max_tokens=8)
    judge = make_lm(f"local:{tiny_dir}", temperature=0.0, max_tokens=4)
    assert engine_of(policy) is engine_of(judge) and policy.model == judge.model == local_model_id(tiny_dir)
    assert load_model(tiny_dir) is load_model(str(tiny_dir))
    state = policy.dump_state()
    assert json.loads(json.dumps(state))["engine"]["state"]["model_path"] == str(tiny_dir.resolve())
    restored = dspy.LM.load_state(state, allow_custom_lm_class=True)
    assert engine_of(restored) is engine_of(policy)
    program = dspy.Predict("question -> answer")
    program.set_lm(policy)
    program.save(tmp_path / "program.json")
    loaded = dspy.Predict("question -> answer")
    loaded.load(tmp_path / "program.json", allow_unsafe_lm_state=True)
    assert engine_of(loaded.lm) is engine_of(policy)
    engine_of(policy).close()
    assert policy(QUESTION)  # the worker restarts after close()


def test_sampling_settings_reach_the_engine(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    submit = LocalEngine.submit
    monkeypatch.setattr(LocalEngine, "submit", lambda self, req: seen.append(req.config) or submit(self, req))
    lm = make_lm(f"local:{tiny_dir}", temperature=0.7, max_tokens=5, top_p=0.9, top_k=5, seed=3, stop=["##"])
    lm.copy(rollout_id=1)(QUESTION)
    config = seen[-1]
    assert (config.temperature, config.max_tokens, config.top_p, config.top_k, config.seed, config.stop) == (
        0.7,
        5,
        0.9,
        5,
        3,
        ("##",),
    )
    assert not config.extensions  # rollout_id stays with DSPy


def test_make_lm_for_api_models_and_refusals(tiny_dir: Path) -> None:
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    lm = make_lm(
        "hosted_vllm/Qwen/Qwen2.5-1.5B-Instruct",
        api_base="http://127.0.0.1:9/v1",
        temperature=1.0,
        max_tokens=64,
        top_k=20,
    )
    assert lm.engine == "litellm" and lm.kwargs["api_base"] == "http://127.0.0.1:9/v1" and lm.kwargs["top_k"] == 20
    assert engine_of(lm) is None
    with pytest.raises(ValueError, match="environment"):
        make_lm("openai/gpt-4o-mini", api_key="sk-test")
    with pytest.raises(ValueError, match="api_base"):
        make_lm(f"local:{tiny_dir}", api_base="http://127.0.0.1:9/v1")
    with pytest.raises(FileNotFoundError):
        make_lm(f"local:{tiny_dir / 'missing'}")
    assert local_model_id(None) == "local/smollm2-135m-instruct"
    assert make_lm(f"local:{tiny_dir}", model_id="local/tiny").model == "local/tiny"


def test_default_model_converts_once_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAT_DSPY_CACHE", str(tmp_path))
    monkeypatch.setattr(hf, "embedded_gguf", lambda: tmp_path / "model.gguf")
    calls = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        if len(calls) == 1:
            raise OSError("disk full")
        for name in hf._SAVED:
            (out / name).write_text("{}")

    monkeypatch.setattr(hf, "_convert", fake_convert)
    with pytest.raises(OSError):
        hf.default_model_path()
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == ["smollm2-135m-instruct.lock"]
    paths = concurrently(lambda i: hf.default_model_path(), 3)
    assert paths == [target] * 3 and len(calls) == 2
    assert sorted(p.name for p in target.iterdir()) == sorted(hf._SAVED)


def test_length_limit_counts_the_local_policys_tokens_not_words(tiny_dir: Path, caplog) -> None:
    from cat_dspy.modules import CaT
    from cat_dspy.testing import scripted_lm

    policy = make_lm(f"local:{tiny_dir}")
    _, tokenizer = engine_of(policy).load()
    short, long = "\\boxed{4}", "xylophones \\boxed{4}"
    tokens = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in (short, long)]
    limit = tokens[0]
    assert len(long.split()) <= limit < tokens[1]  # within the limit in words, over it in tokens
    assert [engine_of(policy).count_tokens(text) for text in (short, long)] == tokens

    anchor = scripted_lm(["# UNIFIED RESPONSE \\boxed{4}"])
    with caplog.at_level("WARNING", logger="cat_dspy.modules.cat"):
        pred = CaT(g=2, policy=policy, anchor=anchor, length_limit=limit).score([short, long])
    assert pred.rewards == [1.0, -1.0] and pred.parsed["length_penalized"] == 1
    assert pred.parsed["length_unit"] == "tokens" and not caplog.text
    # The same rollouts with an API-like policy (no tokenizer known): counted in words, so neither is over.
    words = CaT(g=2, policy=scripted_lm(["x"]), anchor=anchor, length_limit=limit).score([short, long])
    assert words.rewards == [1.0, 1.0] and words.parsed["length_unit"] == "words"
    # Given token counts (TRL's completion ids) win over any counter.
    given = CaT(g=2, policy=policy, anchor=anchor, length_limit=limit).score([short, long], rollout_tokens=[99, 1])
    assert given.rewards == [-1.0, 1.0] and given.parsed["length_unit"] == "tokens"


def test_eval_results_are_the_same_with_one_or_four_questions_in_flight(tiny_dir: Path, tmp_path: Path) -> None:
    from cat_dspy.datasets import Item
    from cat_dspy.evaluation.runner import build_programs, run_eval

    items = [Item(id=f"q{k}", question=f"What is {k} + {k}?", answer=str(2 * k)) for k in range(4)]
    methods = ["single", "majority", "min_ppl", "self_bon", "cat"]
    runs, calls, nlls, failures = {}, {}, {}, {}
    for in_flight in (1, 4):
        lms = {role: make_lm(f"local:{tiny_dir}", temperature=t, max_tokens=6, seed=11, cache=False)
               for role, t in (("policy", 1.0), ("anchor", 0.7), ("judge", 0.0))}
        engine = engine_of(lms["policy"])
        engine.reset_stats()
        engine.batch_window_s = 0.3  # the questions' calls meet in one batch even on a loaded machine
        try:
            programs = build_programs(lms, mode="verifiable", g=2, logprobs=True)
            run = run_eval(items, programs, [1, 2], methods, tmp_path / str(in_flight), num_threads=in_flight,
                           progress=False, cache=False)
        finally:
            engine.batch_window_s = 0.02
        calls[in_flight] = engine.stats["generate_calls"]
        runs[in_flight] = [(r["id"], r["rollouts"], [(x["method"], x["g"], x["text"], x["answer"], x["fallback"])
                                                     for x in r["results"]]) for r in run.records]
        nlls[in_flight] = [nll for r in run.records for nll in r["rollout_nll"]]
        failures[in_flight] = sum(x["fallback"] == "synthesis_failed" for r in run.records for x in r["results"])
    assert runs[4] == runs[1]
    assert nlls[4] == pytest.approx(nlls[1], rel=1e-5)  # float rounding of differently shaped batches only
    assert [r[0] for r in runs[4]] == ["q0", "q1", "q2", "q3"]  # item order, whatever finished first
    assert failures[1] == failures[4] == 0
    assert calls[4] < calls[1]  # the questions' rollouts and syntheses shared generate calls


def test_the_cat_reward_batches_all_groups_of_a_step_into_one_generate(tiny_dir: Path) -> None:
    from cat_dspy.rl.reward import CaTReward
    from cat_dspy.testing import scripted_lm

    prompts = [f"What is {k} + 1?" for k in range(4) for _ in range(2)]  # 4 groups of G=2
    completions = [f"\\boxed{{{k}}}" for k in range(8)]
    anchor = make_lm(f"local:{tiny_dir}", temperature=0.7, max_tokens=4, cache=False)
    engine = engine_of(anchor)
    engine.reset_stats()
    engine.batch_window_s = 0.3  # a scored-one-after-the-other reward would still make 4 calls
    try:
        rewards = CaTReward(anchor, g=2)(prompts=prompts, completions=completions)
        assert len(rewards) == 8 and engine.stats["generate_calls"] == 1 and engine.stats["requests"] == 4
        # Rubric mode: each group proposes its rubric (scripted anchor), then every group's judge calls share one
        # generate of the local judge (greedy: identical prompts are computed once).
        rubric = "<rubric>" + "".join(f"<criterion>criterion {i}</criterion>" for i in range(5)) + "</rubric>"
        judge = make_lm(f"local:{tiny_dir}", temperature=0.0, max_tokens=4, cache=False)
        reward = CaTReward(scripted_lm(lambda p: rubric if "criterion" in p else "Combined advice."), judge=judge,
                           mode="rubric", g=2)
        engine.reset_stats()
        reward(prompts=prompts, completions=completions)
        assert engine.stats["generate_calls"] == 1 and engine.stats["requests"] == 8
        assert reward.last_metrics["cat/judge_errors"] == 0
    finally:
        engine.batch_window_s = 0.02
