"""Rollout: the current policy samples G responses to one question."""

from __future__ import annotations

from typing import Any

import dspy

from cat_dspy.deprecation import renamed
from cat_dspy.lm.usage import tracker_totals
from cat_dspy.modules.base import RoleModule
from cat_dspy.signatures import Solve

STRATEGIES = ("auto", "n", "concurrent")
Sample = tuple[str, list[float] | None, str | None, dict[str, int]]  # text, logprobs, error, usage
_NO_TOKENS = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}


def _token_logprobs(pred: Any) -> list[float] | None:
    """The chosen tokens' log-probabilities DSPy attached to a prediction, if any."""
    logprobs = getattr(pred, "logprobs", None) if pred is not None else None
    if not logprobs:
        return None
    content = logprobs.get("content") if isinstance(logprobs, dict) else getattr(logprobs, "content", None)
    if not content:
        return None
    return [float(t["logprob"] if isinstance(t, dict) else t.logprob) for t in content]


class Rollout(RoleModule):
    """Sample ``g`` rollouts o_1..o_G ~ π_t(·|q) from the policy LM.

    Two strategies give the G samples. ``"concurrent"``: G calls with distinct ``rollout_id`` at temperature > 0,
    issued concurrently; DSPy's cache, history and usage accounting stay intact, the embedded local engine
    coalesces the calls into a single batched ``generate``, and API backends receive G concurrent requests.
    ``"n"``: one request with ``n=G`` (DSPy's LiteLLM path sends ``n``; a vLLM server then prefills the prompt
    once for the G sequences); a server that returns fewer choices is topped up concurrently and remembered.
    ``"auto"`` picks ``"n"`` for LiteLLM-engine LMs on ``hosted_vllm/`` or ``openai/`` (vLLM, OpenAI) and
    ``"concurrent"`` otherwise (local engines, DSPy's native engine, Ollama, Anthropic, ...); see
    :func:`cat_dspy.lm.models.samples_with_n`. Failed samples come back as empty strings with their error
    recorded, so a group is never silently shorter than G.

    Args:
        g: Rollouts per question (G).
        signature: The policy's prompt: :class:`~cat_dspy.signatures.Solve` (math) or ``Respond`` (freeform).
        temperature: Sampling temperature of the rollouts.
        logprobs: Also return each rollout's token log-probabilities (the min-perplexity baseline needs them).
        lm: The policy LM.
        first_rollout_id: Rollout ids are ``first_rollout_id .. first_rollout_id + g - 1``; a larger ``g`` later
            reuses the first ones from DSPy's cache.
        adapter: How prompts are rendered and completions parsed (default: the free-text adapter).
        strategy: ``"auto"``, ``"n"`` (one request with ``n=G``) or ``"concurrent"`` (G requests).
        max_concurrency: At most this many concurrent requests per group (default: G).
        n: Deprecated spelling of ``g``.

    Examples:
        >>> from dspy.utils import DummyLM
        >>> lm = DummyLM([{"response": f"so \\\\boxed{{{i}}}"} for i in range(3)])
        >>> pred = Rollout(g=3, lm=lm)(question="1+1?")
        >>> len(pred.rollouts), pred.failures, pred.strategy
        (3, [None, None, None], 'concurrent')
    """

    def __init__(
        self,
        g: int = 8,
        signature: type[dspy.Signature] = Solve,
        temperature: float = 1.0,
        logprobs: bool = False,
        lm: dspy.BaseLM | None = None,
        first_rollout_id: int = 0,
        adapter: dspy.Adapter | None = None,
        strategy: str = "auto",
        max_concurrency: int | None = None,
        *,
        n: int | None = None,
    ):
        super().__init__(lm=lm, adapter=adapter)
        g = renamed("Rollout", "n", "g", n, g, default=8, stacklevel=4)  # DSPy's metaclass calls __init__
        if g < 1:
            raise ValueError(f"Rollout needs g >= 1, got {g}")
        if strategy not in STRATEGIES:
            raise ValueError(f"Rollout strategy must be one of {STRATEGIES}, got {strategy!r}")
        if temperature <= 0 and g > 1:
            raise ValueError("Rollout with g > 1 needs temperature > 0, or all G samples would be identical")
        self.g = g
        self.temperature = temperature
        self.logprobs = logprobs
        self.first_rollout_id = first_rollout_id
        self.strategy = strategy
        self.max_concurrency = max_concurrency
        self.generate = dspy.Predict(signature)

    def resolved_strategy(self, g: int | None = None) -> str:
        """``"n"`` or ``"concurrent"``: what :meth:`forward` will do for a group of ``g`` (default G)."""
        if (g or self.g) == 1 or self.strategy == "concurrent":
            return "concurrent"
        if self.strategy == "n":
            return "n"
        from cat_dspy.lm.models import samples_with_n

        return "n" if samples_with_n(self.lm or dspy.settings.lm) else "concurrent"

    def forward(self, question: str, g: int | None = None, *, n: int | None = None) -> dspy.Prediction:
        """Sample the rollouts: ``g`` of them (default: the module's G; ``n`` is its deprecated spelling).

        Returns:
            A prediction with ``rollouts`` (list[str], empty string for a failed sample), ``logprobs``
            (per-rollout token log-probabilities or None), ``failures`` (per-rollout error or None), ``usage``
            (per-rollout LM calls and tokens; zero calls for a DSPy cache hit; on the ``n`` path the one request
            is counted on the first rollout it returned) and ``strategy`` (``"n"`` or ``"concurrent"``; a group
            topped up after an ``n`` request that returned fewer choices reports ``"n"``).
        """
        count = renamed("Rollout.forward", "n", "g", n, g) or self.g
        strategy = self.resolved_strategy(count)
        results: list[Sample] = self._sample_n(question, count) if strategy == "n" else []
        if len(results) < count:
            results += self._sample_concurrent(question, range(len(results), count))
        return dspy.Prediction(
            rollouts=[r[0] for r in results],
            logprobs=[r[1] for r in results] if self.logprobs else None,
            failures=[r[2] for r in results],
            usage=[r[3] for r in results],
            strategy=strategy,
        )

    def _config(self, rollout_id: int) -> dict[str, Any]:
        """The call config of one rollout: its ``rollout_id``, the temperature, and a seed of its own.

        ``rollout_id`` only separates DSPy cache entries and is never sent, so a seeded LM gets
        ``seed + rollout id`` per rollout: G seeded HTTP requests would otherwise return G identical samples.
        """
        rollout_id += self.first_rollout_id
        config: dict[str, Any] = {"rollout_id": rollout_id, "temperature": self.temperature}
        seed = (getattr(self.lm or dspy.settings.lm, "kwargs", None) or {}).get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            config["seed"] = seed + rollout_id
        if self.logprobs:
            config["logprobs"] = True
        return config

    def _tracked_call(self, question: str, config: dict[str, Any]) -> tuple[Any, str | None, dict[str, int]]:
        with dspy.track_usage() as tracker:  # rolls up into the caller's tracker too
            pred, error = self.call(self.generate, config=config, question=question)
        return pred, error, tracker_totals(tracker)

    def _sample_concurrent(self, question: str, ids: range) -> list[Sample]:
        name = next(iter(self.generate.signature.output_fields))

        def sample(i: int) -> Sample:
            pred, error, tokens = self._tracked_call(question, self._config(i))
            if pred is None:
                return "", None, error, tokens
            return getattr(pred, name) or "", _token_logprobs(pred), None, tokens

        return self.map(sample, list(ids), num_threads=self.max_concurrency)

    def _sample_n(self, question: str, count: int) -> list[Sample]:
        """One request with ``n=count``; returns the samples it gave (fewer when the server ignored ``n``).

        A failed request fails the whole group (DSPy has retried it), except a parse failure of one of the
        choices (an empty completion), which falls back to concurrent sampling.
        """
        from cat_dspy.lm.models import note_ignores_n

        name = next(iter(self.generate.signature.output_fields))
        pred, error, tokens = self._tracked_call(question, {**self._config(0), "n": count})
        if pred is None:
            if error and error.startswith("AdapterParseError"):
                return []
            return [("", None, error, tokens)] + [("", None, error, dict(_NO_TOKENS)) for _ in range(count - 1)]
        completions = pred.completions
        got = min(len(completions), count)
        if got < count:
            note_ignores_n(self.lm or dspy.settings.lm)
        samples = []
        for i in range(got):
            choice = completions[i]
            text = getattr(choice, name, None) or ""
            samples.append((text, _token_logprobs(choice), None, tokens if i == 0 else dict(_NO_TOKENS)))
        return samples
