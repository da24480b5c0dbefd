"""Prompt log-probabilities: how likely an LM finds given text, token by token (mutual predictability scores with it).

Backends:

* the embedded/local engine (``score`` of :class:`cat_dspy.lm.local.LocalEngine`, batched forward passes, or of
  :class:`cat_dspy.lm.llamacpp.LlamaCppEngine`, every position's logits of each text);
* OpenAI-compatible servers that return prompt log-probabilities, i.e. vLLM (``hosted_vllm/<model>``, or
  ``openai/<model>`` with ``api_base``): one ``/v1/completions`` request per text, sent concurrently, with
  ``echo: true, logprobs: 1, max_tokens: 1`` and vLLM's ``prompt_logprobs: 0`` extra field;
* nothing else. A server that answers without ``prompt_logprobs`` is refused with
  :class:`PromptLogprobsUnavailable`, naming it: llama-cpp-python's server (``cat-dspy serve --backend llamacpp``)
  ignores the field, and the log-probabilities it returns with ``echo`` are not the prompt's (checked with
  llama_cpp 0.3.36: token *i* is paired with the distribution that follows it, e.g. log p = −16.1 where the model
  gives −0.05). Chat-only providers (OpenAI, Anthropic, Ollama, ...) return no prompt log-probabilities either.

Each scored text is one call of the LM in DSPy's usage tracker (its prompt tokens; a server's one generated token as
completion tokens), so :func:`cat_dspy.lm.usage.track_role` counts this work like any other call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import dspy

TokenScores = list[tuple[int, int, float | None]]
"""One text's tokens: ``(start, end, logprob)``, character offsets into the text; the first token's logprob is None."""
_KEY_VARS = {"hosted_vllm": "HOSTED_VLLM_API_KEY", "openai": "OPENAI_API_KEY"}


class PromptLogprobsUnavailable(ValueError):
    """The LM's backend cannot score given text (no prompt log-probabilities); the message names the backend."""


class TokenStatsUnavailable(PromptLogprobsUnavailable):
    """The LM's backend cannot give full-vocabulary statistics of each position (entropy, mean log-probability):
    only the in-process engines see every logit; a server returns the top-k log-probabilities at most."""


def backend_name(lm: Any) -> str:
    """The LM's model and server, for messages.

    Examples:
        >>> import dspy
        >>> backend_name(dspy.LM("openai/m", api_base="http://h:8080/v1"))
        'openai/m at http://h:8080/v1'
    """
    from cat_dspy.lm.models import api_base_of

    base = api_base_of(lm)
    return f"{getattr(lm, 'model', lm)}" + (f" at {base}" if base else "")


def check_prompt_logprobs(lm: Any) -> None:
    """Raise :class:`PromptLogprobsUnavailable` when ``lm`` certainly cannot score text (before any work is done).

    A server LM passes here; whether the server really returns prompt log-probabilities is known at its first
    answer.

    Examples:
        >>> import dspy
        >>> check_prompt_logprobs(dspy.LM("hosted_vllm/m", api_base="http://h:8000/v1"))
        >>> check_prompt_logprobs(dspy.LM("anthropic/claude-x"))
        Traceback (most recent call last):
        ...
        cat_dspy.lm.prompt_logprobs.PromptLogprobsUnavailable: anthropic/claude-x: no prompt log-probabilities ...
    """
    from cat_dspy.lm.models import api_base_of, engine_of

    if engine_of(lm) is not None:
        return
    provider = str(getattr(lm, "model", "")).partition("/")[0]
    if provider == "hosted_vllm" or (provider == "openai" and api_base_of(lm)):
        return
    raise PromptLogprobsUnavailable(
        f"{backend_name(lm)}: no prompt log-probabilities (scoring given text needs the local engine or a vLLM "
        "server: `hosted_vllm/<model>` or `openai/<model>` with api_base)")


def token_spans(text: str, tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of a server's decoded ``tokens`` in ``text``.

    A token that is not found where expected (a special token such as ``<s>``, or a piece of a multi-byte
    character decoded as U+FFFD) gets an empty span; the next one is looked for a few characters on.

    Examples:
        >>> token_spans("Hi there", ["<s>", "Hi", " there"])
        [(0, 0), (0, 2), (2, 8)]
        >>> token_spans("a😀b", ["a", "\\ufffd", "\\ufffd", "b"])
        [(0, 1), (1, 1), (1, 1), (2, 3)]
    """
    spans, pos = [], 0
    for token in tokens:
        at = text.find(token, pos, pos + len(token) + 8) if token else -1
        if at < 0:
            spans.append((pos, pos))
            continue
        spans.append((at, at + len(token)))
        pos = at + len(token)
    return spans


def _record(lm: Any, prompt_tokens: Sequence[int], completion_tokens: Sequence[int]) -> None:
    tracker = dspy.settings.usage_tracker
    if tracker is not None:
        for p, c in zip(prompt_tokens, completion_tokens, strict=True):
            tracker.add_usage(str(getattr(lm, "model", "lm")), {"prompt_tokens": int(p), "completion_tokens": int(c)})


def prompt_logprobs(lm: Any, texts: Sequence[str]) -> list[TokenScores]:
    """Score ``texts`` under ``lm``: each token's character span and log-probability given the text before it.

    Args:
        lm: A ``dspy.LM`` on the local engine or on a vLLM server (see the module docstring).
        texts: The texts, scored as plain text (no chat template).

    Returns:
        Per text, its tokens as ``(start, end, logprob)``.

    Raises:
        PromptLogprobsUnavailable: The backend cannot score text (named in the message).
    """
    from cat_dspy.lm.models import engine_of

    texts = list(texts)
    check_prompt_logprobs(lm)
    if (engine := engine_of(lm)) is not None:
        scores = engine.score(texts)
        _record(lm, [len(s) for s in scores], [0] * len(scores))
        return scores
    return _server_logprobs(lm, texts)


def prompt_token_stats(lm: Any, texts: Sequence[str]) -> list[list[tuple]]:
    """Score ``texts`` under ``lm`` with each position's full-vocabulary statistics.

    Returns:
        Per text, ``(start, end, logprob, entropy, mean_logprob)`` per token (None, None, None for the first):
        ``entropy`` = −Σ_v p_t(v) log p_t(v) and ``mean_logprob`` = (1/V) Σ_v log p_t(v) of the raw next-token
        distribution p_t the token was read from (self-certainty is −log V − ``mean_logprob``).

    Raises:
        TokenStatsUnavailable: The backend is not an in-process engine (named in the message): an API model or a
            server gives no full-vocabulary statistics.

    Examples:
        >>> import dspy
        >>> prompt_token_stats(dspy.LM("hosted_vllm/m", api_base="http://h:8000/v1"), ["x"])
        Traceback (most recent call last):
        ...
        cat_dspy.lm.prompt_logprobs.TokenStatsUnavailable: hosted_vllm/m at http://h:8000/v1: no full-vocabulary ...
    """
    from cat_dspy.lm.models import engine_of

    engine = engine_of(lm)
    if engine is None or not hasattr(engine, "score"):
        raise TokenStatsUnavailable(
            f"{backend_name(lm)}: no full-vocabulary token statistics (entropy and self-certainty need every "
            "logit of each position: the local engine, `local` or `local:<path>`)")
    texts = list(texts)
    scores = engine.score(texts, stats=True)
    _record(lm, [len(s) for s in scores], [0] * len(scores))
    return scores


def _server_logprobs(lm: Any, texts: list[str]) -> list[TokenScores]:
    """One ``/v1/completions`` request per text, sent concurrently (vLLM batches them, and shares their common
    prefixes with its prefix cache; llama-cpp-python's server answers a list of prompts with an HTTP 500)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from cat_dspy.lm.models import api_base_of

    provider, _, model = str(lm.model).partition("/")
    base = api_base_of(lm) or os.environ.get("HOSTED_VLLM_API_BASE" if provider == "hosted_vllm" else "")
    if not base:
        raise PromptLogprobsUnavailable(f"{backend_name(lm)}: no server URL (give api_base)")
    key = os.environ.get(_KEY_VARS.get(provider, ""), "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = lm.kwargs.get("timeout") or 600.0

    def one(client: httpx.Client, text: str) -> tuple[TokenScores, int, int]:
        body = {"model": model, "prompt": text, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 0}
        response = client.post(base.rstrip("/") + "/completions", json=body, headers=headers, timeout=timeout)
        response.raise_for_status()
        choice = (response.json().get("choices") or [{}])[0]
        logprobs = choice.get("logprobs") or {}
        if choice.get("prompt_logprobs") is None or not logprobs.get("tokens"):
            raise PromptLogprobsUnavailable(
                f"{backend_name(lm)} returned no prompt_logprobs: it does not score prompts (vLLM does; "
                "llama-cpp-python's server ignores the field and its echo log-probabilities are shifted by one token)")
        n = len(choice["prompt_logprobs"])
        tokens, values = logprobs["tokens"][:n], logprobs["token_logprobs"][:n]
        spans = token_spans(text, tokens)
        scores = [(a, b, None if v is None else float(v)) for (a, b), v in zip(spans, values, strict=True)]
        return scores, n, len(logprobs["tokens"]) - n

    with httpx.Client() as client, ThreadPoolExecutor(max_workers=min(len(texts), 16) or 1) as pool:
        results = list(pool.map(lambda text: one(client, text), texts))
    _record(lm, [r[1] for r in results], [r[2] for r in results])
    return [r[0] for r in results]
