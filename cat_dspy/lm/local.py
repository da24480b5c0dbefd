"""The embedded local backend: a transformers causal LM behind DSPy 3.4's engine protocol.

DSPy hands an engine one candidate per call, so G rollouts arrive as G concurrent ``complete`` calls.
:class:`LocalEngine` coalesces them: one worker thread collects requests until ``max_batch_size`` or until none
arrived for ``batch_window_s``, groups them by generation settings and runs one ``model.generate`` per group.
Temperature 0/None is greedy; otherwise temperature, top_k, top_p are applied in that order (the checkpoint's
own sampling defaults are ignored). ``Config.logprobs`` returns each generated token's log-probability under
the distribution actually sampled from (after those warpers; the raw model distribution when greedy). Seeds:
torch's RNG is seeded from the sorted seeds of the generate group, so sampled outputs are reproducible for the
same batch composition (DSPy's cache makes reruns exact). Usage and logprobs cover the generated tokens
without padding or EOS, up to the token that completed a stop string when one cut the text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import hashlib
import logging
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from dspy import lm15
from dspy.clients.engines.base import validate_request

from cat_dspy.lm.models import default_model_dir, default_model_path

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
_DROPPED = ("response_format", "reasoning", "frequency_penalty", "presence_penalty", "tool_choice", "probabilities")
_MODELS: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_ENGINES: dict[tuple[str, str, str], LocalEngine] = {}
_MODELS_LOCK, _ENGINES_LOCK = threading.Lock(), threading.Lock()
_TOKENIZER_LOCK = threading.Lock()  # a fast tokenizer used from several threads raises "Already borrowed"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None means CUDA when available, else CPU."""
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` as a torch.dtype; None means bf16 on CUDA and fp32 elsewhere."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return dtype if isinstance(dtype, torch.dtype) else _DTYPES[str(dtype).removeprefix("torch.")]


def load_model(path: str | os.PathLike, *, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a local checkpoint directory, loaded once per (path, device, dtype).

    The model is in eval mode with ``requires_grad_(False)`` and a generation config holding only the special
    token ids (sampling comes from each request); the tokenizer pads on the left.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    dev = resolve_device(device)
    key = (str(Path(path).expanduser().resolve()), str(dev), str(resolve_dtype(dtype, dev)))
    with _MODELS_LOCK:
        if key not in _MODELS:
            start = time.perf_counter()
            tokenizer = AutoTokenizer.from_pretrained(key[0], local_files_only=True)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained(key[0], dtype=resolve_dtype(dtype, dev), local_files_only=True)
            model.to(dev).eval().requires_grad_(False)
            config = model.generation_config
            eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
            model.generation_config = GenerationConfig(
                bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
            _MODELS[key] = (model, tokenizer)
            logger.info("loaded %s on %s/%s in %.2f s", key[0], key[1], key[2], time.perf_counter() - start)
        return _MODELS[key]


def shared_engine(model_path: str | os.PathLike | None = None, *, device: str | None = None,
                  dtype: str | None = None, **knobs: Any) -> LocalEngine:
    """The process-wide :class:`LocalEngine` for (path, device, dtype); a None path is the default model.

    Non-None ``max_batch_size`` / ``batch_window_s`` in ``knobs`` also update an existing engine.
    """
    dev = resolve_device(device)
    path = Path(model_path).expanduser().resolve() if model_path else default_model_dir()
    key = (str(path), str(dev), str(resolve_dtype(dtype, dev)))
    knobs = {name: value for name, value in knobs.items() if value is not None}
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = LocalEngine(model_path, device=device, dtype=dtype, **knobs)
        for name, value in knobs.items():
            setattr(_ENGINES[key], name, value)
        return _ENGINES[key]


@dataclass
class _Job:
    ids: list[int]
    key: tuple  # (greedy, temperature, top_p, top_k, max_tokens, logprobs, stop): one generate call per key
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


class LocalEngine:
    """A DSPy engine running a local transformers checkpoint with dynamic batching.

    Args:
        model_path: A local checkpoint directory; None means the default SmolLM2-135M-Instruct.
        device: Torch device; None means CUDA when available (bf16, static KV cache with compiled decoding,
            the first call per shape compiles), else CPU (fp32; torch's thread count is left alone).
        dtype: Weight dtype override ("float32", "bfloat16", "float16" or a torch.dtype).
        max_batch_size: Most requests collected into one batch.
        batch_window_s: A batch closes when no request has arrived for this long.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *, device: str | None = None,
                 dtype: str | None = None, max_batch_size: int = 32, batch_window_s: float = 0.02) -> None:
        self.model_path = Path(model_path).expanduser().resolve() if model_path else None
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._settings = {"device": None if device is None else str(device),
                          "dtype": None if dtype is None else str(dtype).removeprefix("torch.")}
        self.max_batch_size, self.batch_window_s = max_batch_size, batch_window_s
        self._model = self._tokenizer = self._worker = None
        self._queue: queue.Queue = queue.Queue()
        self._lock, self._load_lock, self._stats_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._pid = os.getpid()
        self.reset_stats()

    @property
    def stats(self) -> dict[str, float]:
        """A snapshot of generate_calls, requests, rows, prompt_tokens, completion_tokens, generate_seconds."""
        with self._stats_lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        """Zero the counters behind :attr:`stats`."""
        with self._stats_lock:
            self._stats = {**dict.fromkeys(("generate_calls", "requests", "rows", "prompt_tokens",
                                            "completion_tokens"), 0), "generate_seconds": 0.0}

    def load(self) -> tuple[Any, Any]:
        """Load the weights now (converting the default model if needed); returns ``(model, tokenizer)``."""
        with self._load_lock:
            if self._model is None:
                path = self.model_path or default_model_path()
                self._model, self._tokenizer = load_model(path, device=self.device, dtype=self.dtype)
            return self._model, self._tokenizer

    def submit(self, request: lm15.Request) -> concurrent.futures.Future:
        """Validate and tokenize ``request`` here, then queue it; the future resolves to its Response."""
        validate_request(request)
        model, tokenizer = self.load()
        config = request.config
        if request.tools:
            raise lm15.UnsupportedFeatureError("local engine: tools are not supported", feature="tools")
        adaptations = tuple(lm15.Adaptation(f"config.{name}", "dropped", "the local engine does not implement it")
                            for name in _DROPPED if getattr(config, name) is not None)
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
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and len(ids) + max_tokens > limit:
            raise lm15.ContextLengthError(f"{len(ids)} prompt + {max_tokens} new tokens exceed {limit}")
        greedy = not config.temperature
        top_p = None if greedy or config.top_p is None or config.top_p >= 1 else config.top_p
        key = (greedy, None if greedy else config.temperature, top_p, None if greedy else config.top_k or None,
               max_tokens, config.logprobs, config.stop)
        job = _Job(ids, key, config.seed, request.model, adaptations, concurrent.futures.Future())
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
        return {"model_path": None if self.model_path is None else str(self.model_path), **self._settings,
                "max_batch_size": self.max_batch_size, "batch_window_s": self.batch_window_s}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LocalEngine:
        """The shared engine for a :meth:`dump_state` record."""
        return shared_engine(**state)

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
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        model, tokenizer = self._model, self._tokenizer
        greedy, temperature, top_p, top_k, max_tokens, top_logprobs, stop = jobs[0].key
        order = sorted(range(len(jobs)), key=lambda i: (jobs[i].ids, jobs[i].seed is None, jobs[i].seed or 0, i))
        counts = Counter(tuple(jobs[i].ids) for i in order)
        prompts, rows, seen = list(counts), {}, Counter()
        if greedy or len(set(counts.values())) == 1:  # identical greedy prompts run once; else num_return_sequences
            per = 1 if greedy else next(iter(counts.values()))
            for i in order:
                ids = tuple(jobs[i].ids)
                rows[i] = prompts.index(ids) * per + (0 if greedy else seen[ids])
                seen[ids] += 1
            inputs = [list(p) for p in prompts]
        else:
            per, rows, inputs = 1, {i: r for r, i in enumerate(order)}, [jobs[i].ids for i in order]
        pad, width = tokenizer.pad_token_id, max(map(len, inputs))
        if self.device.type == "cuda":
            width = -(-width // 64) * 64  # fewer shapes for the compiled static-cache decode
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in inputs], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in inputs], device=self.device)
        processors = LogitsProcessorList()
        if not greedy:
            processors += [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
            processors += [TopKLogitsWarper(top_k)] if top_k else []
            processors += [TopPLogitsWarper(top_p)] if top_p is not None else []
        recorder = _Recorder(min(top_logprobs, 20)) if top_logprobs is not None else None
        processors += [recorder] if recorder is not None else []
        kwargs: dict[str, Any] = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}  # our warpers, none of generate's
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
        if self.device.type == "cuda":
            kwargs["cache_implementation"] = "static"
        seeds = sorted(job.seed for job in jobs if job.seed is not None)
        start = time.perf_counter()
        with torch.inference_mode(), torch.random.fork_rng(
                devices=[self.device.index or 0] if self.device.type == "cuda" else [], enabled=bool(seeds)):
            if seeds:
                torch.manual_seed(int.from_bytes(hashlib.sha256(repr(seeds).encode()).digest()[:7], "little"))
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_tokens,
                                 num_return_sequences=per, logits_processor=processors, pad_token_id=pad, **kwargs)
            if recorder is not None:
                recorder.flush(out)
        elapsed = time.perf_counter() - start
        generated = out[:, width:].tolist()
        chosen = torch.stack(recorder.chosen, 1).float().cpu().tolist() if recorder else None
        alts = None
        if recorder is not None and recorder.top:
            alts = (torch.stack([a.values for a in recorder.alts], 1).float().cpu().tolist(),
                    torch.stack([a.indices for a in recorder.alts], 1).cpu().tolist())
        with _TOKENIZER_LOCK:
            finished = [self._finish(ids, max_tokens, stop) for ids in generated]
            responses = [self._response(job, *finished[rows[i]], generated[rows[i]],
                                        chosen and chosen[rows[i]], alts and (alts[0][rows[i]], alts[1][rows[i]]))
                         for i, job in enumerate(jobs)]
        with self._stats_lock:
            for name, value in (("generate_calls", 1), ("requests", len(jobs)), ("rows", len(generated)),
                                ("prompt_tokens", sum(map(len, inputs)) * per),
                                ("completion_tokens", sum(n for _, n, _ in finished)), ("generate_seconds", elapsed)):
                self._stats[name] += value
        logger.debug("generate: %d request(s), %d row(s), %.2f s", len(jobs), len(generated), elapsed)
        return responses

    def _finish(self, ids: list[int], max_tokens: int, stop: tuple[str, ...]) -> tuple[str, int, str]:
        """``(text, kept token count, finish_reason)`` for one generated row."""
        eos = self._model.generation_config.eos_token_id
        ends = {*(eos if isinstance(eos, list) else [eos]), self._tokenizer.pad_token_id} - {None}
        n = next((k for k, t in enumerate(ids) if t in ends), len(ids))
        finish = "stop" if n < len(ids) or n < max_tokens else "length"
        decode = self._tokenizer.decode
        text = decode(ids[:n], skip_special_tokens=True)
        if cuts := [text.find(s) for s in stop if s in text]:
            n = next(k for k in range(1, n + 1) if any(s in decode(ids[:k], skip_special_tokens=True) for s in stop))
            return text[: min(cuts)], n, "stop"
        return text, n, finish

    def _response(self, job: _Job, text: str, n: int, finish: str, ids: list[int], chosen: list[float] | None,
                  alts: tuple[list, list] | None) -> lm15.Response:
        logprobs = None
        if chosen is not None:
            decode = self._tokenizer.decode
            tops = [tuple(lm15.TopLogprob(token=decode([t]), logprob=v, token_id=t)
                          for v, t in zip(alts[0][k], alts[1][k], strict=True)) if alts else () for k in range(n)]
            logprobs = tuple(lm15.TokenLogprob(token=decode([t]), logprob=lp, token_id=t, top=top)
                             for t, lp, top in zip(ids[:n], chosen[:n], tops, strict=True))
        return lm15.Response(id=None, model=job.model, message=lm15.Message.assistant([lm15.TextPart(text)]),
                             finish_reason=finish, usage=lm15.Usage(input_tokens=len(job.ids), output_tokens=n),
                             logprobs=logprobs, adaptations=job.adaptations)


class AsyncLocalEngine:
    """The async twin of :class:`LocalEngine`, sharing its model and batcher.

    ``complete`` tokenizes in a worker thread, then awaits the batch future without holding a thread (the
    default executor has only ``cpu_count + 4`` threads), so any number of coroutines coalesce into one batch.
    """

    def __init__(self, engine: LocalEngine) -> None:
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
