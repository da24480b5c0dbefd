"""The llama.cpp runtime's pure parts (numpy sampling against transformers' warpers) and the runtime selection of
``make_lm`` (no model is loaded here: engines load on first use)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from components import require_component

from cat_dspy.lm import models
from cat_dspy.lm.llamacpp import log_softmax, sample, warp
from cat_dspy.lm.local import LocalEngine
from cat_dspy.lm.models import engine_of, local_model_id, local_runtime, make_lm

SETTINGS = [(0.7, None, None), (1.0, None, 5), (1.3, 0.9, None), (0.8, 0.5, 20), (1.0, 0.95, 1)]


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), SETTINGS)
def test_warp_is_transformers_warpers_in_the_torch_engines_order(temperature, top_p, top_k) -> None:
    import transformers as hf

    logits = np.random.default_rng(0).normal(size=(6, 1000)).astype(np.float32) * 3
    logits[1, :400] = logits[1, 400:800]  # ties at the k-th value are kept by both
    expected = torch.from_numpy(logits.copy())
    for warper in [hf.TemperatureLogitsWarper(temperature), *([hf.TopKLogitsWarper(top_k)] if top_k else []),
                   *([hf.TopPLogitsWarper(top_p)] if top_p else [])]:
        expected = warper(None, expected)
    got = warp(logits, temperature, top_p, top_k)
    assert np.array_equal(np.isinf(got), np.isinf(expected.numpy()))
    assert np.allclose(got[np.isfinite(got)], expected.numpy()[np.isfinite(got)], atol=1e-5)
    assert (np.isfinite(got).sum(axis=1) < 1000).all() == bool(top_k or top_p)  # something was cut


def test_top_p_past_the_candidates_falls_back_to_the_whole_vocabulary() -> None:
    import transformers as hf

    logits = np.zeros((2, 2000), dtype=np.float32)  # flat: the 256 best hold 13% of the mass
    logits[1, :5] = 20.0
    expected = hf.TopPLogitsWarper(0.9)(None, torch.from_numpy(logits.copy())).numpy()
    got = warp(logits, None, 0.9, None)
    assert np.isfinite(got[0]).sum() == np.isfinite(expected[0]).sum() == 1800
    assert np.isfinite(got[1]).sum() == np.isfinite(expected[1]).sum() == 5


def test_inverse_cdf_sampling_gives_each_token_its_probability() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 1003)).astype(np.float32) * 2  # not a multiple of the block
    logits[0, rng.choice(1003, 300, replace=False)] = -np.inf
    probs = np.exp(log_softmax(logits.astype(np.float64)))[0]
    n = 20_000
    uniforms = (np.arange(n) + 0.5) / n  # an even grid: token j gets n * p_j of them, up to rounding
    tokens = sample(np.repeat(logits, n, axis=0), uniforms)
    counts = np.bincount(tokens, minlength=1003)
    assert counts[probs == 0].sum() == 0
    assert np.abs(counts - n * probs).max() <= 2


def test_log_softmax_is_torchs() -> None:
    logits = np.random.default_rng(2).normal(size=(3, 50)).astype(np.float32)
    logits[0, :10] = -np.inf
    expected = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert np.allclose(log_softmax(logits), expected, atol=1e-5)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(models.RUNTIME_ENV, raising=False)


def test_the_runtime_of_local_models(no_cuda, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "llamacpp_available", lambda: True)
    gguf, folder = tmp_path / "m.Q8_0.gguf", tmp_path / "ckpt"
    gguf.write_bytes(b"GGUF")
    folder.mkdir()
    assert local_runtime("local") == "llamacpp"  # the CPU default
    assert local_runtime("local", device="cpu") == "llamacpp"
    assert local_runtime("local", "torch") == local_runtime("local", device="cuda") == "torch"
    assert local_runtime("local", dtype="bfloat16") == "torch"  # a dtype is a torch option
    assert local_runtime(f"local:{gguf}") == "llamacpp" and local_runtime(f"local:{folder}") == "torch"
    monkeypatch.setenv(models.RUNTIME_ENV, "torch")
    assert local_runtime("local") == "torch" and local_runtime("local", "llamacpp") == "llamacpp"
    assert local_runtime(f"local:{gguf}") == "llamacpp"  # the variable is for "local" only
    monkeypatch.setenv(models.RUNTIME_ENV, "vllm")
    with pytest.raises(ValueError, match="CAT_DSPY_RUNTIME='vllm'"):
        local_runtime("local")
    with pytest.raises(ValueError, match="torch runtime"):
        local_runtime(f"local:{folder}", "llamacpp")
    with pytest.raises(ValueError, match="llamacpp runtime"):
        local_runtime(f"local:{gguf}", "torch")
    with pytest.raises(ValueError, match="device='cuda'"):
        local_runtime("local", "llamacpp", device="cuda")


def test_without_llama_cpp_local_falls_back_to_torch(no_cuda, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "llamacpp_available", lambda: False)
    assert local_runtime("local") == "torch"
    with pytest.raises(ImportError, match="llama-cpp-python"):
        local_runtime("local", "llamacpp")
    lm = make_lm("local", cache=False)
    assert isinstance(engine_of(lm), LocalEngine) and lm.model == "local/smollm2-135m-instruct"


def test_each_runtime_has_its_own_engine_model_id_and_state(no_cuda) -> None:
    require_component("llama_cpp")
    from cat_dspy.lm.llamacpp import LlamaCppEngine

    fast, slow = make_lm("local"), make_lm("local", runtime="torch")
    assert isinstance(engine_of(fast), LlamaCppEngine) and isinstance(engine_of(slow), LocalEngine)
    assert fast.model == local_model_id(None, "llamacpp") == "local/smollm2-135m-instruct-q4_1-llamacpp"
    assert slow.model == local_model_id(None) == "local/smollm2-135m-instruct"
    assert engine_of(make_lm("local", runtime="llamacpp", temperature=0.7)) is engine_of(fast)  # one per runtime
    for lm in (fast, slow):
        state = engine_of(lm).dump_state()
        assert state["runtime"] == engine_of(lm).runtime and type(engine_of(lm)).load_state(state) is engine_of(lm)
        assert type(lm._async_engine_spec).load_state(state).engine is engine_of(lm)  # the async twin, same engine


def test_llama_cpp_threads_follow_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from cat_dspy.lm.llamacpp import default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    for unset in ("", "many"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert default_threads() == len(os.sched_getaffinity(0))
