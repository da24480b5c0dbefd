"""The signals on the real embedded model (llama.cpp, tiny token limits): the engine's full-vocabulary statistics
equal numpy's on the same logits, and the signals score one real group."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cat_dspy.datasets import Item
from cat_dspy.evaluation.runner import dspy_cache_in
from cat_dspy.evaluation.signal_runner import build_setup, probe_question
from cat_dspy.evaluation.signals import self_certainty
from cat_dspy.lm.models import engine_of, make_lm

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.integration


def test_llamacpp_self_certainty_equals_numpy_on_the_same_logits() -> None:
    from cat_dspy.lm.llamacpp import _prefill

    lm = make_lm("local", cache=False, max_tokens=8)
    engine = engine_of(lm)
    if engine.runtime != "llamacpp":
        pytest.skip("the torch runtime is pinned")
    text = "Question: What is 2 + 3?\n\nAnswer: 2 + 3 = 5."
    scored = engine.score([text], stats=True)[0]
    _, tokenizer = engine.load()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with engine._ctx_lock:
        native = engine._native(1, 256)
        native.clear()
        logits = _prefill(native, ids[:-1], 0, all_logits=True).astype(np.float64)
        native.clear()
    lp = logits - (logits.max(1, keepdims=True) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                                                                                        keepdims=True)))
    v = logits.shape[1]
    assert v == engine.vocab_size() > 1000
    reference_sc = -np.log(v) - lp.mean(axis=1)
    reference_h = -(np.exp(lp) * lp).sum(axis=1)
    ours = [self_certainty(t[4], v) for t in scored[1:]]
    assert ours == pytest.approx(reference_sc.tolist(), rel=1e-4, abs=1e-4)
    assert [t[3] for t in scored[1:]] == pytest.approx(reference_h.tolist(), rel=1e-4, abs=1e-4)
    assert min(ours) > 0  # a trained model is never as flat as uniform


def test_signals_score_a_real_group(tmp_path: Path) -> None:
    lms = {role: make_lm("local", max_tokens=24, temperature=t, seed=0)
           for role, t in (("policy", 1.0), ("anchor", 0.7), ("judge", 0.0))}
    setup = build_setup(lms, [2, 4], ["majority", "self_certainty", "entropy", "min_ppl", "cat", "gold"],
                        max_tokens=24, dataset="smoke")
    with dspy_cache_in(tmp_path / "cache"):
        record = probe_question(Item("a", "What is 2 + 3?", "5"), setup)
    answers = record["rollout_answers"]
    majority = record["signals"]["majority"]["4"]
    counts = Counter(a for a in answers if a is not None)
    if counts:
        assert counts[majority["label"]] == max(counts.values())
    assert record["vocab_size"] == engine_of(lms["policy"]).vocab_size()
    assert all(st is None or st["tokens"] >= 1 for st in record["token_stats"])
    assert record["signals"]["self_certainty"]["4"]["unavailable"] is None
    assert record["signals"]["gold"]["4"]["rewards"] == [int(c) for c in record["rollout_correct"]]
