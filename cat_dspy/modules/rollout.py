"""Rollout: the current policy samples G responses to one question."""

from __future__ import annotations

from typing import Any

import dspy

from cat_dspy.modules.base import RoleModule
from cat_dspy.signatures import Solve


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
    """Sample ``n`` rollouts o_1..o_G ~ π_t(·|q) from the policy LM.

    The G samples are G calls with distinct ``rollout_id`` at temperature > 0, issued concurrently: DSPy's cache,
    history and usage accounting stay intact, and the embedded local engine coalesces the concurrent calls into a
    single batched ``generate`` (API backends receive concurrent requests). Failed samples come back as empty
    strings with their error recorded, so a group is never silently shorter than G.

    Args:
        n: Rollouts per question (G).
        signature: The policy's prompt: :class:`~cat_dspy.signatures.Solve` (math) or ``Respond`` (freeform).
        temperature: Sampling temperature of the rollouts.
        logprobs: Also return each rollout's token log-probabilities (the min-perplexity baseline needs them).
        lm: The policy LM.
        first_rollout_id: Rollout ids are ``first_rollout_id .. first_rollout_id + n - 1``; a larger ``n`` later
            reuses the first ones from DSPy's cache.

    Examples:
        >>> from dspy.utils import DummyLM
        >>> lm = DummyLM([{"response": f"so \\\\boxed{{{i}}}"} for i in range(3)])
        >>> pred = Rollout(n=3, lm=lm)(question="1+1?")
        >>> len(pred.rollouts), pred.failures
        (3, [None, None, None])
    """

    def __init__(
        self,
        n: int = 8,
        signature: type[dspy.Signature] = Solve,
        temperature: float = 1.0,
        logprobs: bool = False,
        lm: dspy.BaseLM | None = None,
        first_rollout_id: int = 0,
        adapter: dspy.Adapter | None = None,
    ):
        super().__init__(lm=lm, adapter=adapter)
        if n < 1:
            raise ValueError(f"Rollout needs n >= 1, got {n}")
        if temperature <= 0 and n > 1:
            raise ValueError("Rollout with n > 1 needs temperature > 0, or all G samples would be identical")
        self.n = n
        self.temperature = temperature
        self.logprobs = logprobs
        self.first_rollout_id = first_rollout_id
        self.generate = dspy.Predict(signature)

    def forward(self, question: str, n: int | None = None) -> dspy.Prediction:
        """Sample the rollouts.

        Returns:
            A prediction with ``rollouts`` (list[str], empty string for a failed sample), ``logprobs``
            (per-rollout token log-probabilities or None), ``failures`` (per-rollout error or None) and ``usage``
            (per-rollout LM calls and tokens; zero calls for a DSPy cache hit).
        """
        count = n or self.n
        output = self.generate.signature.output_fields
        name = next(iter(output))

        def sample(i: int) -> tuple[str, list[float] | None, str | None, dict[str, int]]:
            config: dict[str, Any] = {"rollout_id": self.first_rollout_id + i, "temperature": self.temperature}
            if self.logprobs:
                config["logprobs"] = True
            with dspy.track_usage() as tracker:  # rolls up into the caller's tracker too
                pred, error = self.call(self.generate, config=config, question=question)
            entries = [e for es in tracker.usage_data.values() for e in es]
            tokens = {
                "calls": len(entries),
                "prompt_tokens": sum(int(e.get("prompt_tokens") or 0) for e in entries),
                "completion_tokens": sum(int(e.get("completion_tokens") or 0) for e in entries),
            }
            if pred is None:
                return "", None, error, tokens
            return getattr(pred, name) or "", _token_logprobs(pred), None, tokens

        results = self.map(sample, list(range(count)))
        return dspy.Prediction(
            rollouts=[r[0] for r in results],
            logprobs=[r[1] for r in results] if self.logprobs else None,
            failures=[r[2] for r in results],
            usage=[r[3] for r in results],
        )
