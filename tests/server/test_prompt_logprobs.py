"""``mp`` against a real llama.cpp server (llama-cpp-python): refused with the server named, because the
log-probabilities it returns with ``echo`` are not the prompt's (the reason is checked here too, so a fixed
llama-cpp-python shows up as a failing test)."""

from __future__ import annotations

import dspy
import httpx
import pytest

from cat_dspy.evaluation.methods import MutualPredictability
from cat_dspy.lm.models import make_lm
from cat_dspy.lm.prompt_logprobs import PromptLogprobsUnavailable

pytestmark = pytest.mark.server

TEXT = "Question: What is 2 + 3?\nAnswer: The answer is 5."


def test_mp_over_llama_cpp_server_is_refused_naming_the_server(server_url: str) -> None:
    lm = dspy.LM("openai/smollm2", api_base=server_url, api_key="unused")
    with pytest.raises(PromptLogprobsUnavailable, match=f"openai/smollm2 at {server_url} returned no prompt_logprobs"):
        MutualPredictability(lm=lm)(question="2+3?", rollouts=["It is 5.", "It is 6."], answers=["5", "6"])


def test_llama_cpp_echo_logprobs_are_not_the_prompts(server_url: str) -> None:
    """The same model in process gives log p(' ' | '... 2 +') ≈ −0.05; the server's echo says ≈ −16."""
    body = {"model": "smollm2", "prompt": TEXT, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0.0}
    served = httpx.post(f"{server_url}/completions", json=body, timeout=120).json()["choices"][0]["logprobs"]
    local = make_lm("local").engine.score([TEXT])[0]
    ours = {TEXT[a:b] + f"@{a}": v for a, b, v in local if v is not None}
    theirs = {t + f"@{o}": v for t, o, v in zip(served["tokens"], served["text_offset"], served["token_logprobs"],
                                                  strict=True) if v is not None and o < len(TEXT)}
    shared = sorted(set(ours) & set(theirs))
    assert len(shared) >= 10
    gaps = [abs(ours[k] - theirs[k]) for k in shared]
    assert max(gaps) > 5.0  # far beyond quantization noise (the GGUF is the same model)
