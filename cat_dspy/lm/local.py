"""The embedded local backend: a model in this process behind DSPy 3.4's engine protocol, with dynamic batching.

:class:`BatchedEngine` is what every local runtime shares. DSPy hands an engine one candidate per call, so G
rollouts arrive as G concurrent calls. ``submit`` applies the HF tokenizer's chat template and queues the request;
one worker thread collects requests until ``max_batch_size`` or until none arrived for ``batch_window_s``, groups
them by (greedy or sampled, max_tokens, stop) and decodes each group as one batch: one row per sampled request
(temperature, top_p, top_k, logprobs and seed are per row, so a policy's rollouts and an anchor's syntheses share a
batch), identical greedy prompts computed once. The runtime fills in loading, the context limit, the end tokens, the
batched decode (:meth:`BatchedEngine._run`) and :meth:`BatchedEngine.score`:

- :class:`LocalEngine` (here): a transformers causal LM, one ``model.generate`` per batch (prompts left-padded).
- :class:`cat_dspy.lm.llamacpp.LlamaCppEngine`: a GGUF run by llama.cpp in process, all rows in one
  ``llama_decode`` per step (the default on CPU; see :mod:`cat_dspy.lm.models`).

Temperature 0/None is greedy; else temperature, top_k, top_p apply in that order (checkpoint sampling defaults are
ignored). ``Config.logprobs`` gives each generated token's log-probability under the distribution actually sampled
from (after those warpers; the raw model distribution when greedy). Each sampled request draws its tokens from a
generator of its own (as vLLM does), seeded from ``Config.seed`` and its prompt (:meth:`BatchedEngine._seed`; an
unseeded request gets a random seed), so a seeded request gives the same text whatever else shares its batch:
results do not depend on concurrency, up to float rounding of differently shaped batches. Usage and logprobs cover
generated tokens without padding or EOS, up to the token that completed a stop string when one cut the text.
``score`` gives the log-probability of each token of given texts (mutual predictability).

Over 500 lines on purpose: the request queue, the batching, the per-row sampling and the scoring share the one
model, its lock and its statistics; split apart they would each need the engine's internals.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import hashlib
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from dspy import lm15
from dspy.clients.engines.base import validate_request

from cat_dspy.lm.hf import default_model_dir, default_model_path, load_model, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

_DROPPED = ("response_format", "reasoning", "frequency_penalty", "presence_penalty", "tool_choice", "probabilities")
_STATS = ("generate_calls", "requests", "rows", "prompt_tokens", "completion_tokens", "generate_seconds")
_TOKENIZER_LOCK = threading.Lock()  # a fast tokenizer used from several threads raises "Already borrowed"
_ENGINES: dict[tuple[str, ...], BatchedEngine] = {}
_ENGINES_LOCK = threading.Lock()


@dataclass
class _Job:
    ids: list[int]
    key: tuple  # (greedy, max_tokens, stop): one generate call per key
    sampling: tuple  # (temperature, top_p, top_k): per row, so requests of different settings share a batch
    logprobs: int | None
    seed: int | None
    model: str
    adaptations: tuple
    future: concurrent.futures.Future


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


def _own_copy(exc: BaseException) -> BaseException:
    try:  # one copy per caller, so concurrent raisers do not share a traceback
        return copy.copy(exc)
    except Exception:
        return exc


def _text(parts: Any, where: str) -> str:
    if isinstance(parts, str):
        return parts
    if any(not isinstance(p, (lm15.TextPart, lm15.ThinkingPart)) for p in parts):
        raise lm15.UnsupportedFeatureError(f"local engine: {where} holds non-text parts", feature=where)
    return "\n".join(p.text for p in parts if isinstance(p, lm15.TextPart))


class BatchedEngine:
    """What every local runtime shares: the request queue, dynamic batching, finishing and building responses.

    A runtime subclass implements :meth:`_load` (returns ``(model, tokenizer)``; the tokenizer is a transformers
    one, whose chat template and token ids both runtimes use), :meth:`_context_limit`, :meth:`_end_ids`,
    :meth:`_run` (decode one batch of rows) and :meth:`score`.

    Args:
        model_path: The model file or directory; None means the default SmolLM2-135M-Instruct.
        max_batch_size: Most requests collected into one batch.
        batch_window_s: A batch closes when no request has arrived for this long.
    """

    runtime = ""  # "torch" or "llamacpp": part of the shared-engine key and of dump_state

    def __init__(
        self, model_path: str | os.PathLike | None = None, *, max_batch_size: int = 32, batch_window_s: float = 0.02
    ) -> None:
        self.model_path = Path(model_path).expanduser().resolve() if model_path else None
        self.max_batch_size, self.batch_window_s = max_batch_size, batch_window_s
        self._model = self._tokenizer = self._worker = None
        self._queue: queue.Queue = queue.Queue()
        self._lock, self._load_lock, self._stats_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._pid = os.getpid()
        self.reset_stats()

    @property
    def stats(self) -> dict[str, float]:
        """A snapshot of generate_calls, requests, rows, prompt_tokens, completion_tokens, generate_seconds.

        ``rows`` and the token counts are computed sequences (identical greedy prompts count once), unpadded.
        """
        with self._stats_lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        """Zero the counters behind :attr:`stats`."""
        with self._stats_lock:
            self._stats = {**dict.fromkeys(_STATS, 0), "generate_seconds": 0.0}

    def load(self) -> tuple[Any, Any]:
        """Load the model now (converting the default model if needed); returns ``(model, tokenizer)``."""
        with self._load_lock:
            if self._model is None:
                self._model, self._tokenizer = self._load()
            return self._model, self._tokenizer

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under this model's tokenizer, without special tokens (how CaT's length limit counts
        a completion).
        """
        _, tokenizer = self.load()
        with _TOKENIZER_LOCK:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def score(self, texts: list[str]) -> list[list[tuple[int, int, float | None]]]:
        """Prompt log-probabilities: each token of each text with its character span and log p(token | prefix).

        The texts are scored as plain text (no chat template, no special tokens added) under the model's raw
        distribution; the first token of a text has no prefix, so its log-probability is None. Counted in
        :attr:`stats` as requests, rows and prompt tokens (not as generate calls).

        Returns:
            Per text, ``(start, end, logprob)`` for each token, ``start``/``end`` being character offsets.

        Raises:
            lm15.ContextLengthError: A text is longer than the model's context.
        """
        raise NotImplementedError

    def submit(self, request: lm15.Request) -> concurrent.futures.Future:
        """Validate and tokenize ``request`` here, then queue it; the future resolves to its Response."""
        validate_request(request)
        _, tokenizer = self.load()
        config = request.config
        if request.tools:
            raise lm15.UnsupportedFeatureError("local engine: tools are not supported", feature="tools")
        adaptations = tuple(
            lm15.Adaptation(f"config.{name}", "dropped", "the local engine does not implement it")
            for name in _DROPPED
            if getattr(config, name) is not None
        )
        messages = [] if request.system is None else [{"role": "system", "content": _text(request.system, "system")}]
        for i, message in enumerate(request.messages):
            if message.role == "tool":
                raise lm15.UnsupportedFeatureError("local engine: tool messages", feature=f"messages[{i}]")
            role = "system" if message.role == "developer" else message.role
            messages.append({"role": role, "content": _text(message.parts, f"messages[{i}]")})
        with _TOKENIZER_LOCK:
            if tokenizer.chat_template:
                prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            else:
                prompt = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_tokens = config.max_tokens or 256
        limit = self._context_limit()
        if limit is not None and len(ids) + max_tokens > limit:
            raise lm15.ContextLengthError(f"{len(ids)} prompt + {max_tokens} new tokens exceed {limit}")
        greedy = not config.temperature
        top_p = config.top_p if config.top_p is not None and config.top_p < 1 else None
        sampling = (None, None, None) if greedy else (config.temperature, top_p, config.top_k or None)
        key = (greedy, max_tokens, config.stop)
        job = _Job(ids, key, sampling, config.logprobs, config.seed, request.model, adaptations,
                   concurrent.futures.Future())
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the worker thread did not survive
                self._queue, self._worker, self._pid = queue.Queue(), None, os.getpid()
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="cat-dspy-local-engine", daemon=True)
                self._worker.start()
            self._queue.put(job)
        return job.future

    def complete(self, request: lm15.Request) -> lm15.Response:
        """One completion for ``request``, batched with concurrent calls."""
        return self.submit(request).result()

    def stream(self, request: lm15.Request):
        """The events of the completed response (no incremental decoding)."""
        return lm15.response_to_events(self.complete(request))

    def close(self) -> None:
        """Stop the worker once the queued requests are served; a later call starts a new one."""
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                self._queue.put(None)
                self._worker.join()
            self._worker = None

    def dump_state(self) -> dict[str, Any]:
        """JSON-safe settings (no secrets); a None ``model_path`` stands for the default model."""
        return {
            "model_path": None if self.model_path is None else str(self.model_path),
            "runtime": self.runtime,
            **self._settings(),
            "max_batch_size": self.max_batch_size,
            "batch_window_s": self.batch_window_s,
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> BatchedEngine:
        """The shared engine for a :meth:`dump_state` record."""
        return shared_engine(**state)

    def _scored(self, encoded: list, logprobs: list[list[float | None]]) -> list[list[tuple[int, int, float | None]]]:
        """Count a :meth:`score` call in :attr:`stats` and pair each log-probability with its character span."""
        with self._stats_lock:
            self._stats["requests"] += len(encoded)
            self._stats["rows"] += len(encoded)
            self._stats["prompt_tokens"] += sum(len(e["input_ids"]) for e in encoded)
        return [
            [(int(a), int(b), lp) for (a, b), lp in zip(e["offset_mapping"], row, strict=True)]
            for e, row in zip(encoded, logprobs, strict=True)
        ]

    def _settings(self) -> dict[str, Any]:
        """The runtime's own constructor settings, for :meth:`dump_state`."""
        return {}

    def _load(self) -> tuple[Any, Any]:
        """``(model, tokenizer)``, loaded now."""
        raise NotImplementedError

    def _context_limit(self) -> int | None:
        """Most prompt + new tokens one request may take (None: no limit known)."""
        raise NotImplementedError

    def _end_ids(self) -> set[int]:
        """Token ids that end a completion (EOS, end of turn, padding)."""
        raise NotImplementedError

    def _run(
        self, inputs: list[list[int]], greedy: bool, max_tokens: int, stop: tuple[str, ...], settings: list[tuple],
        seeds: list[int] | None, top: int | None,
    ) -> tuple[list[list[int]], list | None]:
        """Decode one batch: each row's generated ids and, when ``top`` is not None, per row and step the chosen
        token's log-probability and the ``top`` best ``(logprob, token_id)`` pairs.

        Args:
            inputs: Prompt ids per row.
            greedy: Greedy rows (``settings`` and ``seeds`` are then unused).
            max_tokens: Most new tokens per row.
            stop: A row may stop once its text holds one of these.
            settings: Per row ``(temperature, top_p, top_k)``.
            seeds: Per row the seed of its sampling generator (:meth:`_seed`); None when greedy.
            top: Top log-probabilities per step to record, or None to record none.
        """
        raise NotImplementedError

    def _random_seed(self) -> int:
        """The seed of an unseeded request."""
        return random.getrandbits(62)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            if batch[0] is None:
                return
            while len(batch) < self.max_batch_size:
                try:
                    job = self._queue.get(timeout=self.batch_window_s)
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            groups: dict[tuple, list[_Job]] = {}
            for job in batch:
                if job.future.set_running_or_notify_cancel():
                    groups.setdefault(job.key, []).append(job)
            for jobs in groups.values():
                try:
                    for job, response in zip(jobs, self._generate(jobs), strict=True):
                        job.future.set_result(response)
                except BaseException as exc:
                    logger.exception("local generate failed for %d request(s)", len(jobs))
                    for job in jobs:
                        job.future.set_exception(_own_copy(exc))

    def _generate(self, jobs: list[_Job]) -> list[lm15.Response]:
        greedy, max_tokens, stop = jobs[0].key
        tops = [job.logprobs for job in jobs if job.logprobs is not None]
        order = sorted(range(len(jobs)), key=lambda i: (jobs[i].ids, jobs[i].seed is None, jobs[i].seed or 0, i))
        if greedy:  # identical greedy prompts run once
            prompts = list(dict.fromkeys(tuple(jobs[i].ids) for i in order))
            rows = {i: prompts.index(tuple(jobs[i].ids)) for i in order}
            inputs = [list(p) for p in prompts]
            settings, seeds = [(None, None, None)] * len(inputs), None
        else:  # one row per request, each with its own generator
            rows, inputs = {i: r for r, i in enumerate(order)}, [jobs[i].ids for i in order]
            settings = [jobs[i].sampling for i in order]
            seeds = [self._seed(jobs[i].seed, jobs[i].ids) for i in order]
        start = time.perf_counter()
        generated, scored = self._run(inputs, greedy, max_tokens, stop, settings, seeds,
                                      min(max(tops), 20) if tops else None)
        elapsed = time.perf_counter() - start
        with _TOKENIZER_LOCK:
            finished = [self._finish(ids, max_tokens, stop) for ids in generated]
            responses = [
                self._response(job, *finished[rows[i]], generated[rows[i]],
                               scored[rows[i]] if scored is not None and job.logprobs is not None else None)
                for i, job in enumerate(jobs)
            ]
        deltas = (1, len(jobs), len(generated), sum(map(len, inputs)), sum(f[1] for f in finished), elapsed)
        with self._stats_lock:
            for name, value in zip(_STATS, deltas, strict=True):
                self._stats[name] += value
        logger.debug("generate: %d request(s), %d row(s), %.2f s", len(jobs), len(generated), elapsed)
        return responses

    def _seed(self, seed: int | None, ids: list[int]) -> int:
        """The sampling seed of one request: derived from its seed and its prompt, else :meth:`_random_seed`.

        The prompt enters the seed so that one ``--seed`` over many questions does not give every question the same
        stream of random draws (which would correlate their samples); the same seed and prompt still give the same
        text in any batch.
        """
        if seed is None:
            return self._random_seed()
        digest = hashlib.blake2b(repr((seed, ids)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")

    def _finish(self, ids: list[int], max_tokens: int, stop: tuple[str, ...]) -> tuple[str, int, str]:
        """``(text, kept token count, finish_reason)`` for one generated row."""
        ends = self._end_ids()
        n = next((k for k, t in enumerate(ids) if t in ends), len(ids))
        finish = "stop" if n < len(ids) or n < max_tokens else "length"
        decode = self._tokenizer.decode
        text = decode(ids[:n], skip_special_tokens=True)
        if cuts := [text.find(s) for s in stop if s in text]:
            n = next(k for k in range(1, n + 1) if any(s in decode(ids[:k], skip_special_tokens=True) for s in stop))
            return text[: min(cuts)], n, "stop"
        return text, n, finish

    def _response(
        self, job: _Job, text: str, n: int, finish: str, ids: list[int], scored: list | None
    ) -> lm15.Response:
        logprobs = None
        if scored is not None:
            decode = self._tokenizer.decode
            logprobs = tuple(
                lm15.TokenLogprob(
                    token=decode([t]),
                    logprob=lp,
                    token_id=t,
                    top=tuple(lm15.TopLogprob(token=decode([a]), logprob=v, token_id=a) for v, a in top[:job.logprobs]),
                )
                for t, (lp, top) in zip(ids[:n], scored[:n], strict=True)
            )
        return lm15.Response(
            id=None,
            model=job.model,
            message=lm15.Message.assistant([lm15.TextPart(text)]),
            finish_reason=finish,
            usage=lm15.Usage(input_tokens=len(job.ids), output_tokens=n),
            logprobs=logprobs,
            adaptations=job.adaptations,
        )


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

    def score(self, texts: list[str], *, max_batch_tokens: int = 4096) -> list[list[tuple[int, int, float | None]]]:
        """Prompt log-probabilities (see :meth:`BatchedEngine.score`): the texts are right-padded into batches of
        at most ``max_batch_tokens`` padded tokens, one forward pass each (the logits of a batch are that size
        times the vocabulary).
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
        return self._scored(encoded, logprobs)

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


class AsyncLocalEngine:
    """The async twin of a :class:`BatchedEngine`, sharing its model and batcher.

    ``complete`` tokenizes in a worker thread, then awaits the batch future without holding a thread (the
    default executor has only ``cpu_count + 4`` threads), so any number of coroutines coalesce into one batch.
    """

    def __init__(self, engine: BatchedEngine) -> None:
        self.engine = engine

    async def complete(self, request: lm15.Request) -> lm15.Response:
        """One completion for ``request``."""
        return await asyncio.wrap_future(await asyncio.to_thread(self.engine.submit, request))

    async def stream(self, request: lm15.Request):
        """The events of the completed response."""
        for event in lm15.response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """Stop the shared engine's worker (it restarts on the next call)."""
        await asyncio.to_thread(self.engine.close)

    def dump_state(self) -> dict[str, Any]:
        """The sync engine's state."""
        return self.engine.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncLocalEngine:
        """An async twin of the shared engine for ``state``."""
        return cls(shared_engine(**state))


def shared_engine(
    model_path: str | os.PathLike | None = None,
    *,
    runtime: str = "torch",
    device: str | None = None,
    dtype: str | None = None,
    **knobs: Any,
) -> BatchedEngine:
    """The process-wide engine for (runtime, path, device, dtype); a None path is the default model.

    ``runtime="torch"`` gives a :class:`LocalEngine` (a checkpoint directory), ``runtime="llamacpp"`` a
    :class:`cat_dspy.lm.llamacpp.LlamaCppEngine` (a GGUF file; CPU only, so ``device`` must be None or "cpu" and
    ``dtype`` None). Non-None ``max_batch_size`` / ``batch_window_s`` in ``knobs`` also update an existing engine.

    Raises:
        ValueError: An unknown runtime, or a device/dtype the llama.cpp runtime does not take.
    """
    knobs = {name: value for name, value in knobs.items() if value is not None}
    if runtime == "llamacpp":
        from cat_dspy.lm.llamacpp import LlamaCppEngine, gguf_path

        if dtype is not None or str(device or "cpu") != "cpu":
            raise ValueError(f"the llama.cpp runtime runs on the CPU in its GGUF's types: device={device!r}, "
                             f"dtype={dtype!r} are torch options (use runtime='torch')")
        n_ctx = knobs.pop("n_ctx", None)
        key: tuple[str, ...] = (runtime, str(gguf_path(model_path)), str(n_ctx))
        make = lambda: LlamaCppEngine(model_path, n_ctx=n_ctx, **knobs)  # noqa: E731
    elif runtime == "torch":
        dev = resolve_device(device)
        path = Path(model_path).expanduser().resolve() if model_path else default_model_dir()
        key = (str(path), str(dev), str(resolve_dtype(dtype, dev)))
        make = lambda: LocalEngine(model_path, device=device, dtype=dtype, **knobs)  # noqa: E731
    else:
        raise ValueError(f"unknown local runtime {runtime!r}: 'torch' or 'llamacpp'")
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = make()
        for name, value in knobs.items():
            setattr(_ENGINES[key], name, value)
        return _ENGINES[key]
