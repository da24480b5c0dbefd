"""What every in-process runtime shares: DSPy 3.4's engine protocol over a request queue with dynamic batching.

DSPy hands an engine one candidate per call, so G rollouts arrive as G concurrent calls. :meth:`BatchedEngine.submit`
applies the model's HF chat template, tokenizes, and queues the request; one worker thread collects requests until
``max_batch_size`` or until none arrived for ``batch_window_s``, groups them by (greedy or sampled, max_tokens, stop)
and decodes each group as one batch: one row per sampled request (temperature, top_p, top_k, logprobs and seed are
per row, so a policy's rollouts and an anchor's syntheses share a batch), identical greedy prompts computed once.
The runtime subclass fills in loading, the context limit, the end tokens, the batched decode
(:meth:`BatchedEngine._run`) and :meth:`BatchedEngine.score`:

- :class:`cat_dspy.lm.local.LocalEngine`: a transformers causal LM, one ``model.generate`` per batch (torch).
- :class:`cat_dspy.lm.llamacpp.LlamaCppEngine`: a GGUF run by llama.cpp in process, all rows in one
  ``llama_decode`` per step (the default on CPU; which runtime runs ``"local"``: :mod:`cat_dspy.lm.models`).

Temperature 0/None is greedy; else temperature, top_k, top_p apply in that order (checkpoint sampling defaults are
ignored). ``Config.logprobs`` gives each generated token's log-probability under the distribution actually sampled
from (after those warpers; the raw model distribution when greedy). Each sampled request draws its tokens from a
generator of its own (as vLLM does), seeded from ``Config.seed`` and its prompt (:meth:`BatchedEngine._seed`; an
unseeded request gets a random seed), so a seeded request gives the same text whatever else shares its batch:
results do not depend on concurrency, up to float rounding of differently shaped batches. Usage and logprobs cover
generated tokens without padding or EOS, up to the token that completed a stop string when one cut the text.
``score`` gives the log-probability of each token of given texts (mutual predictability). One engine per model and
runtime is shared by every LM made for it (:func:`shared`).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspy import lm15
from dspy.clients.engines.base import validate_request

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
    phase_stats: tuple[str, ...] = ()  # a runtime's own counters in :attr:`stats` (where its time goes)

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
        """A snapshot of generate_calls, requests, rows, prompt_tokens, completion_tokens, generate_seconds, and the
        runtime's :attr:`phase_stats`.

        ``rows`` and the token counts are computed sequences (identical greedy prompts count once), unpadded.
        """
        with self._stats_lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        """Zero the counters behind :attr:`stats`."""
        with self._stats_lock:
            self._stats = {**dict.fromkeys(_STATS, 0), "generate_seconds": 0.0, **dict.fromkeys(self.phase_stats, 0)}

    def _count(self, **deltas: float) -> None:
        """Add ``deltas`` to :attr:`stats`."""
        with self._stats_lock:
            for name, value in deltas.items():
                self._stats[name] += value

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

    def score(self, texts: list[str], *, stats: bool = False) -> list[list[tuple]]:
        """Prompt log-probabilities: each token of each text with its character span and log p(token | prefix).

        The texts are scored as plain text (no chat template, no special tokens added) under the model's raw
        distribution; the first token of a text has no prefix, so its log-probability is None. Counted in
        :attr:`stats` as requests, rows and prompt tokens (not as generate calls).

        Args:
            texts: The texts.
            stats: Also give, per token, two statistics of the whole next-token distribution p_t it was read
                from (:func:`cat_dspy.lm.llamacpp.vocab_stats`): its entropy −Σ_v p_t(v) log p_t(v) and its mean
                log-probability over the vocabulary (1/V) Σ_v log p_t(v) (self-certainty: −log V minus the latter).

        Returns:
            Per text, ``(start, end, logprob)`` for each token, ``start``/``end`` being character offsets;
            with ``stats``, ``(start, end, logprob, entropy, mean_logprob)`` (None, None, None for the first token).

        Raises:
            lm15.ContextLengthError: A text is longer than the model's context.
        """
        raise NotImplementedError

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The text a request of ``messages`` (``{"role", "content"}`` dicts) is generated from: the model's chat
        template with the generation prompt (or ``role: content`` lines without a template). A completion appended
        to it is what :meth:`score` reads that completion's token statistics from."""
        _, tokenizer = self.load()
        with _TOKENIZER_LOCK:
            if tokenizer.chat_template:
                return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

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
        prompt = self.chat_prompt(messages)
        with _TOKENIZER_LOCK:
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
        """The shared engine for a :meth:`dump_state` record (each runtime's own shared-engine function)."""
        raise NotImplementedError

    def _scored(self, encoded: list, logprobs: list[list[float | None]],
                extra: list[list[tuple[float | None, float | None]]] | None = None) -> list[list[tuple]]:
        """Count a :meth:`score` call in :attr:`stats` and pair each log-probability (and, when given, each token's
        ``(entropy, mean_logprob)``) with its character span."""
        self._count(requests=len(encoded), rows=len(encoded), prompt_tokens=sum(len(e["input_ids"]) for e in encoded))
        if extra is None:
            return [
                [(int(a), int(b), lp) for (a, b), lp in zip(e["offset_mapping"], row, strict=True)]
                for e, row in zip(encoded, logprobs, strict=True)
            ]
        return [
            [(int(a), int(b), lp, *st) for (a, b), lp, st in zip(e["offset_mapping"], row, more, strict=True)]
            for e, row, more in zip(encoded, logprobs, extra, strict=True)
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
        self._count(**dict(zip(_STATS, deltas, strict=True)))
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


class AsyncBatchedEngine:
    """The async twin of a :class:`BatchedEngine`, sharing its model and batcher (one subclass per runtime, naming
    its ``engine_class``, so that a saved program restores the right one).

    ``complete`` tokenizes in a worker thread, then awaits the batch future without holding a thread (the
    default executor has only ``cpu_count + 4`` threads), so any number of coroutines coalesce into one batch.
    """

    engine_class: type[BatchedEngine] = BatchedEngine

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
    def load_state(cls, state: dict[str, Any]) -> AsyncBatchedEngine:
        """An async twin of the shared engine for ``state``."""
        return cls(cls.engine_class.load_state(state))


def shared(key: tuple[str, ...], make: Callable[[], BatchedEngine], knobs: dict[str, Any]) -> BatchedEngine:
    """The process-wide engine for ``key``, made by ``make()`` the first time; non-None ``knobs``
    (``max_batch_size``, ``batch_window_s``) also update an existing engine."""
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = make()
        for name, value in knobs.items():
            if value is not None:
                setattr(_ENGINES[key], name, value)
        return _ENGINES[key]
