"""Mutual predictability (``mp``) on a tiny random Llama: prompt log-probabilities on the local engine and over a
vLLM-format server, the answer-token NLL choice, its counted fallbacks and compute, and the refusal of backends
that cannot score text. Also CaT's disagreement with Self-BoN (scripted engines)."""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path

import dspy
import pytest
import torch
from test_local_engine import tiny_dir  # noqa: F401  (the fixture: a 2-layer random Llama)

from cat_dspy.datasets import Item
from cat_dspy.evaluation.evaluate import evaluate
from cat_dspy.evaluation.methods import MutualPredictability, apply_methods
from cat_dspy.evaluation.report import row_metrics, summarize
from cat_dspy.evaluation.runner import attributed_usage, build_programs, run_eval
from cat_dspy.lm.local import LocalEngine
from cat_dspy.lm.models import make_lm
from cat_dspy.lm.prompt_logprobs import PromptLogprobsUnavailable, prompt_logprobs
from cat_dspy.lm.usage import track_role
from cat_dspy.testing import scripted_lm

ROLLOUTS = ["We add them: 2 + 2 = 4. The answer is 4.", "I think it is 5. The answer is 5.",
            "Two and two make 4, so 4.", "Natalia sold 48 clips. The answer is 72."]
ANSWERS = ["4", "5", "4", "72"]


@pytest.fixture
def tiny_lm(tiny_dir: Path):  # noqa: F811
    lm = make_lm(f"local:{tiny_dir}", cache=False, batch_window_s=0.01)
    yield lm
    lm.engine.close()


def direct_logprobs(engine: LocalEngine, text: str) -> list[tuple[int, int, float | None]]:
    """Each token's span and log p(token | prefix), from one unbatched forward pass of the model."""
    model, tokenizer = engine.load()
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    values = [None] + [logp[k - 1, t].item() for k, t in enumerate(enc["input_ids"]) if k]
    return [(a, b, v) for (a, b), v in zip(enc["offset_mapping"], values, strict=True)]


def answer_nll(tokens, start: int, end: int) -> float:
    values = [-v for a, b, v in tokens if a < end and b > start and v is not None]
    return sum(values) / len(values)


def test_local_score_equals_unbatched_forward_passes(tiny_lm) -> None:
    engine = tiny_lm.engine
    texts = ["What is 2+2? The answer is 4.", "hi", "Natalia sold clips to 48 of her friends. #### 72"]
    before = engine.stats
    scored = engine.score(texts, max_batch_tokens=64)  # two forward passes: right padding must not leak
    for text, tokens in zip(texts, scored, strict=True):
        direct = direct_logprobs(engine, text)
        assert [(a, b) for a, b, _ in tokens] == [(a, b) for a, b, _ in direct]
        assert tokens[0][2] is None and "".join(text[a:b] for a, b, _ in tokens) == text
        assert [v for *_, v in tokens[1:]] == pytest.approx([v for *_, v in direct[1:]], abs=1e-4)
    after = engine.stats
    assert after["requests"] - before["requests"] == 3
    assert after["prompt_tokens"] - before["prompt_tokens"] == sum(map(len, scored))
    assert after["generate_calls"] == before["generate_calls"]


def test_mp_picks_the_rollout_whose_answer_tokens_the_others_predict_best(tiny_lm) -> None:
    mp = MutualPredictability(lm=tiny_lm)
    prompts, spans, whole = mp.prompts("What is 2+2?", ROLLOUTS, ANSWERS)
    assert whole == 0
    for i, (prompt, (a, b)) in enumerate(zip(prompts, spans, strict=True)):
        assert prompt.endswith(ROLLOUTS[i]) and prompt[a:b] == ANSWERS[i]
        assert all(other in prompt for other in ROLLOUTS)  # the G-1 others, then the rollout itself
    expected = [answer_nll(direct_logprobs(tiny_lm.engine, p), a, b) for p, (a, b) in zip(prompts, spans, strict=True)]
    usage: dict = {}
    with track_role(usage, "policy"):
        pred = mp(question="What is 2+2?", rollouts=ROLLOUTS, answers=ANSWERS)
    assert pred.nlls == pytest.approx(expected, abs=1e-4)
    assert pred.index == min(range(4), key=expected.__getitem__) and pred.fallback is None
    # Not the whole-rollout perplexity: scoring every token of each rollout ranks them differently here.
    whole_nll = [answer_nll(direct_logprobs(tiny_lm.engine, p), p.rindex(r), len(p))
                 for p, r in zip(prompts, ROLLOUTS, strict=True)]
    assert whole_nll != pytest.approx(expected)
    # Its compute is counted: G scored prompts, their tokens.
    tokenizer = tiny_lm.engine.load()[1]
    assert usage["policy"]["calls"] == 4
    assert usage["policy"]["prompt_tokens"] == sum(len(tokenizer(p)["input_ids"]) for p in prompts)


def test_mp_order_of_the_others_is_seeded() -> None:
    rollouts = [f"rollout {k}" for k in range(6)]
    first = MutualPredictability(seed=0).prompts("q", rollouts)[0]
    assert first == MutualPredictability(seed=0).prompts("q", rollouts)[0]
    others = [MutualPredictability(seed=s).prompts("q", rollouts)[0] for s in range(1, 6)]
    assert any(p != first for p in others)
    order = [int(line.split()[-1]) for line in first[0].splitlines() if line.startswith("rollout")]
    assert sorted(order[:-1]) == [1, 2, 3, 4, 5] and order[-1] == 0


def test_mp_scores_the_whole_rollout_when_no_answer_is_found_and_counts_it(tiny_lm) -> None:
    mp = MutualPredictability(lm=tiny_lm)
    answers = ["4", None, "4", "\\frac{1}{2}"]  # no answer; an answer that the text does not contain
    prompts, spans, whole = mp.prompts("q", ROLLOUTS, answers)
    assert whole == 2 and prompts[1][slice(*spans[1])] == ROLLOUTS[1] and prompts[3][slice(*spans[3])] == ROLLOUTS[3]
    pred = mp(question="q", rollouts=ROLLOUTS, answers=answers)
    assert pred.whole_rollout == 2 and pred.fallback == "no_answer_span"
    free = mp(question="q", rollouts=ROLLOUTS, answers=None)  # free-text responses: scored whole, no fallback
    assert free.whole_rollout == 0 and free.fallback is None


def test_mp_failure_of_the_backend_is_counted_not_raised(tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(texts, **kw):
        raise TimeoutError("scoring timed out")

    monkeypatch.setattr(tiny_lm.engine, "score", broken)
    results = apply_methods("q", ROLLOUTS, ANSWERS, None, [4], ["mp"], mutual=MutualPredictability(lm=tiny_lm))
    assert results[0].fallback == "policy_error" and "timed out" in results[0].extra["error"]
    record = {"mode": "verifiable", "rollout_correct": [True] * 4, "rollout_usage": [], "rollout_seconds": 0.0,
              "results": [{**results[0].to_dict(), "correct": True}]}
    row = summarize([record])[0]
    assert row["policy_errors"] == 1 and row["failed_calls"] == 1


def completions_reply(engine: LocalEngine, vllm: bool = True):
    """A ``/v1/completions`` reply (for the ``json_server`` fixture) as vLLM answers ``echo, logprobs,
    prompt_logprobs`` (scored by a LocalEngine), or as llama-cpp-python's server does (``prompt_logprobs`` ignored)."""

    def reply(body: dict) -> dict:
        choices = []
        for index, text in enumerate([body["prompt"]]):
            tokens = engine.score([text])[0]
            strings = [text[a:b] for a, b, _ in tokens] + ["!"]  # + the one generated token
            choice = {"index": index, "text": text + "!", "logprobs": {
                "tokens": strings, "token_logprobs": [v for *_, v in tokens] + [-1.0],
                "text_offset": [a for a, *_ in tokens] + [len(text)], "top_logprobs": None}}
            if vllm:
                choice["prompt_logprobs"] = [None] + [{"0": {"logprob": v}} for *_, v in tokens[1:]]
            choices.append(choice)
        return {"choices": choices}

    return reply


def test_server_prompt_logprobs_give_the_local_choice_and_count_tokens(tiny_lm, json_server) -> None:
    stub = json_server(completions_reply(tiny_lm.engine))
    server_lm = dspy.LM("openai/tiny", api_base=stub.url, api_key="unused")
    local = MutualPredictability(lm=tiny_lm)(question="q", rollouts=ROLLOUTS, answers=ANSWERS)
    usage: dict = {}
    with track_role(usage, "policy"):
        remote = MutualPredictability(lm=server_lm)(question="q", rollouts=ROLLOUTS, answers=ANSWERS)
    assert remote.index == local.index and remote.nlls == pytest.approx(local.nlls, abs=1e-5)
    assert len(stub.bodies) == 4  # one request per prompt (concurrent)
    assert all(b["echo"] is True and b["prompt_logprobs"] == 0 for b in stub.bodies)
    assert usage["policy"]["calls"] == 4 and usage["policy"]["completion_tokens"] == 4


def test_backends_without_prompt_logprobs_are_refused_naming_them(tiny_lm, tmp_path, json_server) -> None:
    stub = json_server(completions_reply(tiny_lm.engine, vllm=False))
    lm = dspy.LM("openai/tiny", api_base=stub.url, api_key="unused")
    with pytest.raises(PromptLogprobsUnavailable, match=f"openai/tiny at {stub.url}.*no prompt_logprobs"):
        MutualPredictability(lm=lm)(question="q", rollouts=ROLLOUTS[:2])
    with pytest.raises(PromptLogprobsUnavailable, match="anthropic/claude"):
        prompt_logprobs(dspy.LM("anthropic/claude-x"), ["text"])
    scripted = scripted_lm(lambda p: "x")
    lms = {"policy": scripted, "anchor": scripted, "judge": scripted}
    with pytest.raises(PromptLogprobsUnavailable):  # before any rollout is sampled
        evaluate([Item("a", "q", "1")], lms, tmp_path, g=[2], methods=["single", "mp"])
    assert scripted.engine_script.calls == 0


def test_eval_runs_mp_and_charges_its_calls(tiny_lm, tmp_path) -> None:
    lms = {"policy": tiny_lm, "anchor": tiny_lm, "judge": tiny_lm}
    programs = build_programs(lms, mode="verifiable", g=3, temperature=1.0)
    tiny_lm.kwargs["max_tokens"] = 6
    run = run_eval([Item("a", "What is 2+2?", "4")], programs, [3], ["single", "mp"], tmp_path, progress=False,
                   cache=False)
    record = run.records[0]
    mp = next(r for r in record["results"] if r["method"] == "mp")
    assert mp["usage"]["policy"]["calls"] == 3 and mp["usage"]["policy"]["prompt_tokens"] > 0
    assert len(mp["extra"]["nll"]) == 3 and mp["index"] in range(3)
    charged = attributed_usage(record, mp)["policy"]
    assert charged["calls"] == 3 + 3  # three rollouts and three scored prompts
    row = next(r for r in summarize(run.records) if r["method"] == "mp")
    assert row["fallbacks"] == sum(1 for r in record["results"] if r["method"] == "mp" and r["fallback"])
    assert math.isfinite(row_metrics(row)["policy.prompt_tokens"])


# ------------------------------------------------------------------------------------------ Self-BoN disagreement
def test_cat_disagreement_with_self_bon_and_accuracy_when_disagreeing(tmp_path) -> None:
    """Per question: the rollouts' answers, Self-BoN's choice and the anchor's answer; gold is 4."""
    script = {"Q1": (["5", "4"], "5", "4"),  # self-BoN 5, CaT 4: disagree, CaT right
              "Q2": (["4", "6"], "4", "4"),  # agree
              "Q3": (["4", "6"], "4", "7"),  # disagree, CaT wrong
              "Q4": (["3", "4"], "4", "4")}  # agree
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def policy(prompt: str) -> str:
        qid = next(q for q in script if q in prompt)
        if "best response" in prompt:  # pick by content: the rollouts' order depends on which call came first
            shown = re.findall(r"\\boxed\{(\d+)\}", prompt)
            return str(shown.index(script[qid][1]) + 1)
        with lock:
            k = counts[qid] = counts.get(qid, -1) + 1
        return f"{qid}: \\boxed{{{script[qid][0][k % 2]}}}"

    def anchor(prompt: str) -> str:
        return f"\\boxed{{{script[next(q for q in script if q in prompt)][2]}}}"

    lms = {"policy": scripted_lm(policy), "anchor": scripted_lm(anchor), "judge": scripted_lm(lambda p: "no")}
    programs = build_programs(lms, mode="verifiable", g=2)
    items = [Item(q, f"{q}: what is the number?", "4") for q in script]
    run = run_eval(items, programs, [2], ["majority", "self_bon", "cat"], tmp_path, progress=False)
    rows = {r["method"]: r for r in summarize(run.records)}
    assert rows["self_bon"]["accuracy"] == pytest.approx(0.75)
    cat = rows["cat"]
    assert cat["disagree_self_bon_rate"] == pytest.approx(0.5) and cat["n_disagree_self_bon"] == 2
    assert cat["accuracy_when_disagree_self_bon"] == pytest.approx(0.5)
    metrics = row_metrics(cat)
    assert metrics["disagree_self_bon_rate"] == pytest.approx(0.5)
    assert metrics["accuracy_when_disagree_self_bon"] == pytest.approx(0.5)
    # Without self_bon in the run the columns are absent, not zero.
    run2 = run_eval(items, programs, [2], ["majority", "cat"], tmp_path / "no-sbon", progress=False)
    assert "disagree_self_bon_rate" not in next(r for r in summarize(run2.records) if r["method"] == "cat")


def test_eval_command_refuses_mp_on_a_policy_that_cannot_score_text(tmp_path, monkeypatch, capsys) -> None:
    from cat_dspy import cli
    from cat_dspy.cli import common

    policy = scripted_lm(lambda p: "\\boxed{1}")
    monkeypatch.setattr(common, "build_roles", lambda args: {"policy": policy, "anchor": policy, "judge": policy})
    data = tmp_path / "qs.jsonl"
    data.write_text(json.dumps({"question": "1+0?", "answer": "1"}) + "\n")
    argv = ["eval", "--dataset", str(data), "--g", "2", "--methods", "single,mp", "--no-progress",
            "--run-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    assert f"mp: {policy.model}: no prompt log-probabilities" in capsys.readouterr().err
    assert policy.engine_script.calls == 0 and not (tmp_path / "run" / "results.jsonl").exists()


def test_compare_table_shows_the_self_bon_disagreement_columns() -> None:
    import io

    from cat_dspy.evaluation.compare import print_rows

    row = {"method": "cat", "g": 8, "accuracy": 0.5, "stderr": 0.1, "n": 10, "disagree_rate": 0.2,
           "accuracy_when_disagree": 0.5, "disagree_self_bon_rate": 0.125, "accuracy_when_disagree_self_bon": 0.75}
    out = io.StringIO()
    print_rows([row], file=out)
    text = out.getvalue()
    assert "disagree SBoN" in text and "0.125" in text and "0.750" in text
