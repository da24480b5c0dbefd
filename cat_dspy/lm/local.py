"""The torch runtime of the local engine: a transformers causal LM, one ``model.generate`` per batch.

:class:`LocalEngine` is a :class:`~cat_dspy.lm.batching.BatchedEngine` (the request queue, dynamic batching,
finishing and responses every runtime shares). A batch's prompts are left-padded into one ``generate``; each row's
temperature, top_k and top_p are transformers' warpers on that row (:class:`_RowWarpers`), and each sampled row
draws its token from a torch generator of its own (:class:`_Sampler`, vLLM's exponential race); :class:`_Recorder`
keeps the log-probabilities. On CUDA the KV cache is static and decoding compiled. :meth:`LocalEngine.score`
scores given texts in padded batches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from dspy import lm15

from cat_dspy.lm.batching import _TOKENIZER_LOCK, AsyncBatchedEngine, BatchedEngine, shared
from cat_dspy.lm.hf import default_model_dir, default_model_path, load_model, resolve_device, resolve_dtype


class _Recorder:
    """The last logits processor: log-softmax of the processed scores, gathered at the token then chosen."""

    def __init__(self, top: int) -> None:
        self.top, self.pending, self.chosen, self.alts = top, None, [], []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.flush(input_ids)
        self.pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def flush(self, input_ids: torch.Tensor) -> None:
        if self.pending is not None:
            self.chosen.append(self.pending.gather(1, input_ids[:, -1:]).squeeze(1))
            if self.top:
                self.alts.append(self.pending.topk(self.top, dim=-1))
            self.pending = None

    def per_row(self) -> list[list[tuple[float, list[tuple[float, int]]]]]:
        """Per row, per step: the chosen token's log-probability and the top ``(logprob, token_id)`` pairs."""
        chosen = torch.stack(self.chosen, 1).float().cpu().tolist()
        if not self.top:
            return [[(lp, []) for lp in row] for row in chosen]
        values = torch.stack([a.values for a in self.alts], 1).float().cpu().tolist()
        ids = torch.stack([a.indices for a in self.alts], 1).cpu().tolist()
        return [
            [(lp, list(zip(v, i, strict=True))) for lp, v, i in zip(*row, strict=True)]
            for row in zip(chosen, values, ids, strict=True)
        ]


class _RowWarpers:
    """Each row's temperature, top_k and top_p (transformers' warpers, in that order) on that row's scores only."""

    def __init__(self, settings: list[tuple]) -> None:
        import transformers as hf

        self.groups = []
        for setting in dict.fromkeys(settings):
            temperature, top_p, top_k = setting
            warpers = [hf.TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
            warpers += [hf.TopKLogitsWarper(top_k)] if top_k else []
            warpers += [hf.TopPLogitsWarper(top_p)] if top_p is not None else []
            if warpers:
                self.groups.append(([r for r, s in enumerate(settings) if s == setting], warpers))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for rows, warpers in self.groups:
            index = torch.tensor(rows, device=scores.device)
            part = scores[index]
            for warper in warpers:
                part = warper(input_ids[index], part)
            scores[index] = part
        return scores


class _Sampler:
    """The last logits processor of a sampled batch: each row draws its next token from its own generator.

    vLLM's exponential race (``argmax p / q``, ``q ~ Exp(1)`` drawn from the row's generator) is an exact sample
    from ``p``; the scores become ``-inf`` except at the drawn token, which greedy decoding then takes. Every row
    draws one vocabulary-sized vector per step, so its tokens depend on its seed and its own logits only.
    """

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float(), dim=-1)
        vocab = probs.shape[1]
        uniform = torch.stack(  # -log(u) ~ Exp(1); torch.rand is ~3x faster than exponential_ on CPU
            [torch.rand(vocab, generator=generator, device=probs.device) for generator in self.generators]
        )
        chosen = (probs / uniform.log_().neg_()).argmax(dim=-1, keepdim=True)
        return torch.full_like(scores, -float("inf")).scatter_(1, chosen, 0.0)


class LocalEngine(BatchedEngine):
    """A DSPy engine running a local transformers checkpoint with dynamic batching.

    Args:
        model_path: A local checkpoint directory; None means the default SmolLM2-135M-Instruct.
        device: Torch device; None means CUDA when available (bf16, static KV cache with compiled decoding,
            the first call per shape compiles), else CPU (fp32; torch's thread count is left alone).
        dtype: Weight dtype override ("float32", "bfloat16", "float16" or a torch.dtype).
        max_batch_size: Most requests collected into one batch.
        batch_window_s: A batch closes when no request has arrived for this long.
    """

    runtime = "torch"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_size: int = 32,
        batch_window_s: float = 0.02,
    ) -> None:
        super().__init__(model_path, max_batch_size=max_batch_size, batch_window_s=batch_window_s)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._options = {
            "device": None if device is None else str(device),
            "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        }

    def score(self, texts: list[str], *, stats: bool = False, max_batch_tokens: int = 4096) -> list[list[tuple]]:
        """Prompt log-probabilities (see :meth:`BatchedEngine.score`): the texts are right-padded into batches of
        at most ``max_batch_tokens`` padded tokens, one forward pass each (the logits of a batch are that size
        times the vocabulary); with ``stats``, each position's entropy and mean log-probability over the vocabulary
        too, from the same log-softmax.
        """
        model, tokenizer = self.load()
        with _TOKENIZER_LOCK:
            encoded = [tokenizer(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts]
        ids = [e["input_ids"] for e in encoded]
        limit = self._context_limit()
        if limit is not None and (longest := max(map(len, ids), default=0)) > limit:
            raise lm15.ContextLengthError(f"a scored text has {longest} tokens, more than the model's {limit}")
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        logprobs: list[list[float | None]] = [[] for _ in ids]
        extra: list[list[tuple]] = [[] for _ in ids]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batches: list[list[int]] = []
        for i in order:  # ascending length: a batch's width is its last text's
            if batches and (len(batches[-1]) + 1) * len(ids[i]) <= max_batch_tokens:
                batches[-1].append(i)
            else:
                batches.append([i])
        with torch.inference_mode():
            for batch in batches:
                width = max(len(ids[i]) for i in batch)
                rows = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in batch], device=self.device)
                mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in batch],
                                    device=self.device)
                logits = model(input_ids=rows, attention_mask=mask).logits
                for k, i in enumerate(batch):
                    n = len(ids[i])
                    lp = torch.log_softmax(logits[k, : max(n - 1, 0)].float(), dim=-1)
                    chosen = lp.gather(1, rows[k, 1:n].unsqueeze(1)).squeeze(1).cpu().tolist()
                    logprobs[i] = ([None] if n else []) + chosen
                    if stats:
                        entropy = -torch.where(lp > -float("inf"), lp.exp() * lp, 0.0).sum(dim=-1)
                        extra[i] = ([(None, None)] if n else []) + list(
                            zip(entropy.cpu().tolist(), lp.mean(dim=-1).cpu().tolist(), strict=True))
        return self._scored(encoded, logprobs, extra if stats else None)

    def vocab_size(self) -> int:
        """V: the width of the logits :meth:`score` reads its statistics from."""
        model, _ = self.load()
        return int(model.get_output_embeddings().weight.shape[0])

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LocalEngine:
        """The shared engine for a :meth:`dump_state` record."""
        return shared_engine(**{k: v for k, v in state.items() if k != "runtime"})

    def _settings(self) -> dict[str, Any]:
        return dict(self._options)

    def _load(self) -> tuple[Any, Any]:
        return load_model(self.model_path or default_model_path(), device=self.device, dtype=self.dtype)

    def _context_limit(self) -> int | None:
        return getattr(self.load()[0].config, "max_position_embeddings", None)

    def _end_ids(self) -> set[int]:
        eos = self._model.generation_config.eos_token_id
        return {*(eos if isinstance(eos, list) else [eos]), self._tokenizer.pad_token_id} - {None}

    def _random_seed(self) -> int:
        return int(torch.randint(0, 2**62, ()).item())  # torch's global RNG, which transformers.set_seed seeds

    def _run(
        self, inputs: list[list[int]], greedy: bool, max_tokens: int, stop: tuple[str, ...], settings: list[tuple],
        seeds: list[int] | None, top: int | None,
    ) -> tuple[list[list[int]], list | None]:
        import transformers as hf

        model, tokenizer = self._model, self._tokenizer
        pad, width = tokenizer.pad_token_id, max(map(len, inputs))
        if self.device.type == "cuda":
            width = -(-width // 64) * 64  # fewer shapes for the compiled static-cache decode
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in inputs], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in inputs], device=self.device)
        processors = hf.LogitsProcessorList()
        if not greedy:
            processors.append(_RowWarpers(settings))
        recorder = _Recorder(top) if top is not None else None
        processors += [recorder] if recorder is not None else []
        if not greedy:
            processors.append(_Sampler([torch.Generator(self.device).manual_seed(s) for s in seeds]))
        criteria = hf.StoppingCriteriaList()
        if stop:  # built here, under the lock: it reads the tokenizer that callers are encoding with
            with _TOKENIZER_LOCK:
                criteria.append(hf.StopStringCriteria(tokenizer, list(stop)))
        kwargs: dict[str, Any] = {"do_sample": False}  # our warpers and sampler, none of generate's
        if self.device.type == "cuda":
            kwargs["cache_implementation"] = "static"
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                logits_processor=processors,
                stopping_criteria=criteria,
                pad_token_id=pad,
                **kwargs,
            )
            if recorder is not None:
                recorder.flush(out)
        return out[:, width:].tolist(), recorder.per_row() if recorder is not None else None


class AsyncLocalEngine(AsyncBatchedEngine):
    """The async twin of :class:`LocalEngine`, sharing its model and batcher."""

    engine_class = LocalEngine


def shared_engine(
    model_path: str | os.PathLike | None = None, *, device: str | None = None, dtype: str | None = None, **knobs: Any
) -> LocalEngine:
    """The process-wide :class:`LocalEngine` for (path, device, dtype); a None path is the default model.

    Non-None ``max_batch_size`` / ``batch_window_s`` in ``knobs`` also update an existing engine.
    """
    dev = resolve_device(device)
    path = Path(model_path).expanduser().resolve() if model_path else default_model_dir()
    key = ("torch", str(path), str(dev), str(resolve_dtype(dtype, dev)))
    return shared(key, lambda: LocalEngine(model_path, device=device, dtype=dtype, **knobs), knobs)
