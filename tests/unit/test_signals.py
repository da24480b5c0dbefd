"""The label-free signals: each one on a planted group, the token-statistics math, AUROC with ties, the report
re-derived from the per-rollout file, resume without recomputation, and the committed sweep's summary."""

from __future__ import annotations

import itertools
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from test_local_engine import tiny_dir  # noqa: F401  (the fixture: a 2-layer random Llama)

from cat_dspy.datasets import Item
from cat_dspy.evaluation.signal_report import auroc, rank_auroc, summarize_signals
from cat_dspy.evaluation.signal_runner import build_setup, probe_question, reasoning_of, run_signals
from cat_dspy.evaluation.signals import SIGNALS, Group, group_at, score_record, self_certainty
from cat_dspy.jsonl_store import JsonlStore
from cat_dspy.lm.llamacpp import log_softmax, vocab_stats
from cat_dspy.lm.prompt_logprobs import TokenStatsUnavailable, prompt_token_stats
from cat_dspy.testing.scripted import scripted_lm

COMMITTED = Path(__file__).resolve().parents[2] / "experiments" / "results" / "signals"


def planted() -> Group:
    """Rollout 2 is right (answer 7); every signal is planted to prefer a known rollout."""
    return Group(
        question="What is 3 + 4?",
        answers=["6", "6", "7", None],
        nlls=[0.9, 0.5, 0.2, 0.1],  # min_ppl: rollout 3 (lowest NLL) although it has no answer
        token_stats=[{"tokens": 3, "entropy": 2.0, "mean_logprob": -9.0},
                     {"tokens": 3, "entropy": 1.0, "mean_logprob": -12.0},
                     {"tokens": 3, "entropy": 0.5, "mean_logprob": -11.0},
                     None],
        references={"cat": "7", "cat_q": "6"},
        self_bon=1,
        mp_nlls=[1.0, 1.0, 0.3, None],
        soft_cat=[-1.0, 0.5, 2.0, None],
        correct=[False, False, True, False],
        vocab_size=100,
    )


@pytest.mark.parametrize(("name", "pick", "label", "rewards"), [
    ("cat", 2, "7", [0, 0, 1, 0]),
    ("cat_q", 0, "6", [1, 1, 0, 0]),
    ("majority", 0, "6", [1, 1, 0, 0]),
    ("self_bon", 1, "6", [1, 1, 0, 0]),
    ("min_ppl", 3, None, [0, 0, 0, 0]),
    ("self_certainty", 1, "6", [1, 1, 0, 0]),  # the most negative mean log-prob over V: the sharpest
    ("entropy", 2, "7", [0, 0, 1, 0]),
    ("mp", 2, "7", [0, 0, 1, 0]),
    ("soft_cat", 2, "7", [0, 0, 1, 0]),  # the label is the reference the answer was scored against
    ("gold", 2, "7", [0, 0, 1, 0]),
])
def test_each_signal_ranks_the_planted_group(name: str, pick: int, label: str | None, rewards: list[int]) -> None:
    result = SIGNALS[name].score(planted())
    assert result.unavailable is None
    assert (result.pick, result.label, result.rewards) == (pick, label, rewards)
    best = max(s for s in result.scores if s is not None)
    assert result.scores[pick] == best


def test_majority_scores_are_vote_shares_and_random_is_seeded() -> None:
    assert SIGNALS["majority"].score(planted()).scores == [0.5, 0.5, 0.25, 0.0]
    a, b = SIGNALS["random"].score(planted()), SIGNALS["random"].score(planted())
    assert a.scores == b.scores and len(set(a.scores)) == 4
    shifted = planted()
    shifted.seed = 1
    assert SIGNALS["random"].score(shifted).scores != a.scores


def test_missing_inputs_are_unavailable_with_a_reason_never_zero() -> None:
    group = planted()
    group.token_stats, group.references, group.unavailable = None, {"cat": None}, {
        "token_stats": "openai/x: no full-vocabulary token statistics"}
    for name in ("entropy", "self_certainty"):
        result = SIGNALS[name].score(group)
        assert result.scores is None and "no full-vocabulary" in result.unavailable
    assert SIGNALS["cat"].score(group).unavailable == "reference_without_answer"
    assert SIGNALS["cat_q"].score(group).unavailable == "not_probed"


def test_self_certainty_and_entropy_match_a_hand_computed_example() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()  # 0.6652, 0.2447, 0.0900
    entropy, mean = vocab_stats(log_softmax(logits))
    assert entropy[0] == pytest.approx(-(p * np.log(p)).sum(), abs=1e-6) == pytest.approx(0.8324, abs=1e-4)
    assert entropy[1] == pytest.approx(math.log(3), abs=1e-6)
    kl = float(sum((1 / 3) * math.log((1 / 3) / q) for q in p))  # KL(uniform || p), from its definition
    assert self_certainty(float(mean[0]), 3) == pytest.approx(kl, abs=1e-6) == pytest.approx(0.3090, abs=1e-4)
    assert self_certainty(float(mean[1]), 3) == pytest.approx(0.0, abs=1e-6)


def test_torch_engine_statistics_equal_numpy_on_its_own_logits(tiny_dir: Path) -> None:  # noqa: F811
    import torch

    from cat_dspy.lm.models import engine_of, make_lm

    engine = engine_of(make_lm(f"local:{tiny_dir}", cache=False))
    text = "Two plus two is four."
    scored = engine.score([text], stats=True)[0]
    model, tokenizer = engine.load()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double().numpy()
    entropy, mean = vocab_stats(log_softmax(logits))
    assert scored[0][2:] == (None, None, None) and len(scored) == len(ids)
    assert [t[3] for t in scored[1:]] == pytest.approx(entropy.tolist(), abs=1e-4)
    assert [t[4] for t in scored[1:]] == pytest.approx(mean.tolist(), abs=1e-4)
    assert engine.vocab_size() == logits.shape[1]
    assert [t[:3] for t in engine.score([text])[0]] == [t[:3] for t in scored]  # logprobs unchanged by stats


def test_an_api_backend_has_no_token_statistics_and_says_so() -> None:
    with pytest.raises(TokenStatsUnavailable, match="scripted/test: no full-vocabulary"):
        prompt_token_stats(scripted_lm(["x"]), ["text"])


def test_auroc_counts_ties_half_and_agrees_with_the_rank_formula() -> None:
    scores, labels = [0.9, 0.5, 0.5, 0.5, 0.1, 0.1], [True, True, False, True, False, False]
    # positives 0.9, 0.5, 0.5 against negatives 0.5, 0.1, 0.1: 3 + (0.5 + 2) * 2 = 8 of 9 pairs
    assert rank_auroc(scores, labels) == pytest.approx(8 / 9)
    assert auroc(scores, labels) == pytest.approx(8 / 9)
    assert rank_auroc([1, 1, 1], [True, False, True]) == 0.5
    assert auroc([1.0, 2.0], [True, True]) is None


def test_reasoning_stops_where_the_rollout_states_its_answer() -> None:
    assert reasoning_of("3 + 4 = 7, so 7.", "7") == "3 + 4 = 7, so "
    assert reasoning_of("I do not know", None) == "I do not know"


def _scripted_roles() -> dict:
    answers = itertools.cycle(["3 + 4 = 7. The answer is 7.", "It is 6.", "The answer is 7.", "Maybe 8."])
    lock = threading.Lock()

    def policy(prompt: str) -> str:
        if "Pick the single best response" in prompt:
            return "2"
        with lock:
            return next(answers)

    return {"policy": scripted_lm(policy), "anchor": scripted_lm(lambda p: "So the final answer is \\boxed{7}."),
            "judge": scripted_lm(["unused"])}


def _items() -> list[Item]:
    return [Item(f"q{i}", f"What is {i} + 4?", "7") for i in range(3)]


def test_summary_re_derives_from_the_per_rollout_file_and_resume_recomputes_nothing(tmp_path: Path) -> None:
    lms = _scripted_roles()
    setup = build_setup(lms, [2, 4], list(SIGNALS), extraction="flexible", max_tokens=64, dataset="toy")
    done, todo = run_signals(_items(), setup, tmp_path, progress=False)
    assert len(todo) == 3
    records = [done[i.id] for i in _items()]
    for r in records:  # the pure signal scores re-derive from the stored probes (label grading aside)
        again = score_record(json.loads(json.dumps(r)), list(SIGNALS), [2, 4])
        stored = {n: {g: {k: v for k, v in res.items() if k != "label_correct"} for g, res in by.items()}
                  for n, by in r["signals"].items()}
        assert again == stored
        # a scripted LM scores no text: those signals are unavailable, with the backend named
        assert "no full-vocabulary" in r["signals"]["entropy"]["4"]["unavailable"]
        assert r["signals"]["mp"]["4"]["unavailable"] and r["signals"]["soft_cat"]["4"]["unavailable"]
        assert r["signals"]["cat"]["4"]["label"] == "7" and r["signals"]["cat"]["4"]["label_correct"] is True
    from_file = list(JsonlStore(tmp_path / "results.jsonl").load().values())
    summary = summarize_signals(records)
    assert summarize_signals(from_file) == summary
    row = {(g["g"], r["signal"]): r for g in summary["groups"] for r in g["rows"]}
    assert row[(4, "cat")]["accuracy"]["mean"] == 1.0 and row[(4, "gold")]["accuracy"]["mean"] == 1.0
    assert row[(4, "entropy")]["unavailable"] == 3 and row[(4, "entropy")]["auroc"] is None
    calls = (lms["policy"].engine_script.calls, lms["anchor"].engine_script.calls)
    done2, todo2 = run_signals(_items(), setup, tmp_path, progress=False)
    assert todo2 == [] and (lms["policy"].engine_script.calls, lms["anchor"].engine_script.calls) == calls
    assert [done2[i.id] for i in _items()] == from_file


def test_group_at_reads_the_first_g_rollouts() -> None:
    record = {"question": "q", "rollout_answers": ["1", "2", "3", "4"], "rollout_correct": [1, 0, 0, 0],
              "rollout_nll": [0.1, 0.2, 0.3, 0.4], "probes": {"cat": {"2": {"answer": "1", "error": None}}}}
    group = group_at(record, 2)
    assert group.answers == ["1", "2"] and group.references == {"cat": "1"} and group.nlls == [0.1, 0.2]


def test_probe_question_records_caps_and_compute(tmp_path: Path) -> None:
    setup = build_setup(_scripted_roles(), [2, 4], ["cat", "majority", "gold"], max_tokens=3, dataset="toy")
    record = probe_question(_items()[0], setup)
    assert len(record["rollout_capped"]) == 4 and any(record["rollout_capped"])  # scripted tokens = words
    assert record["compute"]["cat"]["calls"] == 2  # one synthesis at G=2, one at G=4
    assert record["disagreement"]["4"]["differs"] in (True, False)


@pytest.mark.skipif(not (COMMITTED / "summary.json").is_file(), reason="the sweep's results are not committed yet")
def test_the_committed_summary_re_derives_from_the_committed_records() -> None:
    records = [json.loads(line) for path in sorted(COMMITTED.glob("*/results.jsonl"))
               for line in path.read_text().splitlines() if line.strip()]
    committed = json.loads((COMMITTED / "summary.json").read_text())
    assert {"groups": committed["groups"]} == json.loads(json.dumps(summarize_signals(records)))
