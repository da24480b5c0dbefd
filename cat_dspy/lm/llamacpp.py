"""The llama.cpp runtime of the local engine: a GGUF run in process by llama-cpp-python, sequences batched.

:class:`LlamaCppEngine` is a :class:`~cat_dspy.lm.batching.BatchedEngine` (same request queue, dynamic batching,
finishing and responses as the torch :class:`~cat_dspy.lm.local.LocalEngine`; prompts are built and tokenized by
the HF tokenizer of the GGUF, :func:`~cat_dspy.lm.hf.gguf_tokenizer`, so both runtimes see identical token ids).
It decodes a batch with llama.cpp's low-level API: one context with ``n_seq_max`` sequences, each in its own KV
stream (``kv_unified = False``) of the same size, grown to the batch's longest prompt + new tokens; each distinct
prompt of a batch is prefilled once, alone in its ``llama_decode`` calls of up to 512 tokens (:func:`_prefill`), and
its stream copied to the other rows of that prompt (``llama_memory_seq_cp`` between streams: G rollouts of one
question cost one prefill). Distinct prompts sharing a head (every synthesis prompt starts with the same
instruction) are prefilled in sorted order, each from a copy of the previous one's stream cut to their common prefix
(:data:`_MIN_SHARED` tokens or more), so a shared head is computed once per batch. Then one ``llama_decode`` per
step for every live row. A batch whose streams would exceed :data:`_MAX_CELLS` KV cells is decoded in parts.
Exactness: a sequence's stream always holds its tokens from cell 0, its prompt shares no ubatch with another prompt,
and flash attention is off (:data:`_FLASH_ATTN`), so its logits do not depend on the other sequences of the batch
(one-token steps of several sequences together match a sequence decoded alone exactly; a prompt prefilled in chunks,
or on a copied head, matches it prefilled at once). Sampling is done here, in numpy, per row (:func:`warp` then
:func:`sample`): each sampled row draws one uniform per step from its own generator, seeded as the torch engine
seeds its rows (:meth:`~cat_dspy.lm.batching.BatchedEngine._seed`), so a seeded request gives the same text and
logprobs whatever shares its batch. :meth:`LlamaCppEngine.score` reads the logits of every position. The context
uses ``$OMP_NUM_THREADS`` threads, else the CPUs this process may run on (:func:`default_threads`); a forked child
opens the GGUF again rather than use its parent's context.

``llama_cpp`` is imported only when an engine loads; without it, :func:`cat_dspy.lm.models.make_lm` falls back to
the torch engine.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from dspy import lm15

from cat_dspy.lm.batching import _TOKENIZER_LOCK, AsyncBatchedEngine, BatchedEngine, shared
from cat_dspy.lm.hf import embedded_gguf, gguf_tokenizer

_MAX_SEQ = 256  # llama.cpp's LLAMA_MAX_SEQ
_TOP_P_CANDIDATES = 256  # top-p looks at this many best tokens first (a full sort only when they hold < top_p)
_SCORE_CHUNK = 256  # tokens per llama_decode when scoring (all of them output logits: chunk x vocab floats)
_BACKEND_LOCK = threading.Lock()
_MIN_STREAM = 256  # KV cells of a sequence's stream: a power of two from this, enough for its prompt + new tokens
_MIN_SHARED = 32  # a common prefix worth a stream copy rather than its prefill
_MAX_CELLS = 1 << 16  # KV cells of all streams together (~1.5 GB on the embedded model); a bigger batch is split
# Flash attention off: llama.cpp's CPU flash attention (llama-cpp-python 0.3.36) gives a sequence different logits
# (max |difference| 0.2-9 on the embedded model) depending on the other sequences decoded with it and on the KV
# cells it runs over; the plain attention path, with each sequence in its own stream from cell 0, is exact.
_FLASH_ATTN = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED


def gguf_path(model_path: str | os.PathLike | None) -> Path:
    """The resolved GGUF file of ``model_path``; None is the embedded SmolLM2-135M-Instruct GGUF.

    Raises:
        FileNotFoundError: Not a ``.gguf`` file.
    """
    path = embedded_gguf() if model_path is None else Path(model_path).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise FileNotFoundError(f"the llama.cpp runtime needs a .gguf file, not {path}")
    return path.resolve()


def default_threads() -> int:
    """llama.cpp's threads: ``$OMP_NUM_THREADS`` when set (the one thread knob of torch too: on a shared machine,
    threads that wait for a busy core cost far more than they bring), else the CPUs this process may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return len(os.sched_getaffinity(0))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax (``-inf`` entries stay ``-inf``).

    Examples:
        >>> np.round(np.exp(log_softmax(np.array([[0.0, 0.0, -np.inf]]))), 3)
        array([[0.5, 0.5, 0. ]])
    """
    top = logits.max(axis=1, keepdims=True)
    return logits - (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))


def vocab_stats(log_probs: np.ndarray, block: int = _SCORE_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Per row of log-probabilities (a next-token distribution over the vocabulary): its entropy
    −Σ_v p(v) log p(v) and its mean log-probability (1/V) Σ_v log p(v), in blocks of ``block`` rows (one block's
    probabilities at a time). Self-certainty (KL(uniform || p)) is −log V minus the mean log-probability.

    Examples:
        >>> h, m = vocab_stats(log_softmax(np.array([[0.0, 0.0], [np.log(3.0), 0.0]])))
        >>> np.round(h, 4).tolist(), np.round(m, 4).tolist()  # ln 2; -(3/4 ln 3/4 + 1/4 ln 1/4)
        ([0.6931, 0.5623], [-0.6931, -0.837])
    """
    entropy = np.empty(len(log_probs), dtype=np.float64)
    mean = np.empty(len(log_probs), dtype=np.float64)
    for first in range(0, len(log_probs), block):
        lp = log_probs[first : first + block]
        p = np.exp(lp)
        with np.errstate(invalid="ignore"):  # 0 * -inf: a token the distribution excludes adds nothing
            entropy[first : first + block] = -np.where(p > 0, p * lp, 0.0).sum(axis=1, dtype=np.float64)
        mean[first : first + block] = lp.mean(axis=1, dtype=np.float64)
    return entropy, mean


def warp(logits: np.ndarray, temperature: float | None, top_p: float | None, top_k: int | None) -> np.ndarray:
    """Temperature, then top-k, then top-p on each row of ``logits`` (a new array; removed tokens are ``-inf``).

    The semantics of transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` (ties at the k-th value are
    kept) and ``TopPLogitsWarper`` (a token is kept when the tokens ranked above it hold less than ``top_p``; the
    best token always), as the torch engine applies them.

    Examples:
        >>> warp(np.array([[2.0, 1.0, 0.0, -1.0]]), 2.0, None, 2).tolist()
        [[1.0, 0.5, -inf, -inf]]
        >>> warp(np.array([[3.0, 2.0, 0.0, -5.0]]), 1.0, 0.9, None).tolist()
        [[3.0, 2.0, -inf, -inf]]
    """
    out = logits.astype(np.float32, copy=True)
    if temperature is not None and temperature != 1.0:
        out /= np.float32(temperature)
    vocab = out.shape[1]
    if top_k:
        k = min(int(top_k), vocab)
        kth = np.partition(out, vocab - k, axis=1)[:, vocab - k : vocab - k + 1]
        out[out < kth] = -np.inf
    if top_p is not None and top_p < 1.0:
        probs = np.exp(log_softmax(out))
        m = min(_TOP_P_CANDIDATES, vocab)
        best = np.argpartition(-out, m - 1, axis=1)[:, :m] if m < vocab else np.tile(np.arange(vocab), (len(out), 1))
        for r in range(len(out)):
            candidates = best[r] if probs[r, best[r]].sum() >= top_p else np.arange(vocab)
            ranked = candidates[np.argsort(-out[r, candidates], kind="stable")]
            q = probs[r, ranked]
            above = np.cumsum(q) - q  # the mass ranked above each token
            removed = ranked[above >= top_p]
            keep = np.zeros(vocab, dtype=bool)
            keep[ranked] = True
            keep[removed] = False
            keep[ranked[0]] = True
            out[r, ~keep] = -np.inf
    return out


def sample(processed: np.ndarray, uniforms: np.ndarray, block: int = 256) -> np.ndarray:
    """One token per row by inverse CDF: the first token whose cumulative probability exceeds the row's uniform.

    The cumulative sums run over blocks of ``block`` tokens first, then inside the one block holding the uniform
    (the same token as one cumulative sum over the vocabulary, ~6x cheaper).

    Examples:
        >>> sample(np.log(np.array([[0.2, 0.5, 0.3], [0.2, 0.5, 0.3]])), np.array([0.1, 0.71]), block=2).tolist()
        [0, 2]
        >>> sample(np.array([[0.0, -np.inf]]), np.array([0.999])).tolist()
        [0]
    """
    m, vocab = processed.shape
    probs = np.exp(processed - processed.max(axis=1, keepdims=True))
    n_blocks = -(-vocab // block)
    if n_blocks * block != vocab:
        probs = np.concatenate([probs, np.zeros((m, n_blocks * block - vocab), probs.dtype)], axis=1)
    cum_blocks = np.cumsum(probs.reshape(m, n_blocks, block).sum(axis=2, dtype=np.float64), axis=1)
    tokens = np.empty(m, dtype=np.int64)
    for r in range(m):
        target = uniforms[r] * cum_blocks[r, -1]
        k = min(int(np.searchsorted(cum_blocks[r], target, side="right")), n_blocks - 1)
        inner = (cum_blocks[r, k - 1] if k else 0.0) + np.cumsum(probs[r, k * block : (k + 1) * block],
                                                                  dtype=np.float64)
        token = k * block + min(int(np.searchsorted(inner, target, side="right")), block - 1)
        if probs[r, token] == 0:  # rounding at the very top: the last token with mass
            token = int(np.flatnonzero(probs[r])[-1])
        tokens[r] = token
    return tokens


class _Native:
    """One llama.cpp model, its context (``n_seq_max`` sequences, a KV stream of ``n_ctx_seq`` cells each) and a
    batch buffer."""

    def __init__(self, lc: Any, gguf: Path, n_seq_max: int, n_ctx_seq: int, n_threads: int | None) -> None:
        self.lc, self.pid, self.n_threads = lc, os.getpid(), n_threads or default_threads()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = lc.llama_model_n_ctx_train(self.model)
        self.eog = {t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self.vocab, t)}
        self.ctx = self.batch = None
        self.open_context(n_seq_max, n_ctx_seq)

    def open_context(self, n_seq_max: int, n_ctx_seq: int) -> None:
        """(Re)create the context (``n_seq_max`` streams of ``n_ctx_seq`` cells) and the batch buffer."""
        self.close_context()
        lc = self.lc
        params = lc.llama_context_default_params()
        self.n_batch = max(512, n_seq_max)
        params.n_ctx, params.n_seq_max = n_ctx_seq * n_seq_max, n_seq_max
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_threads = params.n_threads_batch = self.n_threads
        params.kv_unified = False  # a stream per sequence: its cells from 0 whatever else is decoded
        params.flash_attn_type = _FLASH_ATTN
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {n_seq_max} sequences x {n_ctx_seq} tokens")
        self.n_ctx_seq, self.n_seq_max = lc.llama_n_ctx(self.ctx) // n_seq_max, n_seq_max
        self.memory = lc.llama_get_memory(self.ctx)
        lc.llama_memory_clear(self.memory, True)  # zeroed once: masked cells never hold a NaN (see clear)
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)

    def close_context(self) -> None:
        if self.batch is not None:
            self.lc.llama_batch_free(self.batch)
        if self.ctx is not None:
            self.lc.llama_free(self.ctx)
        self.ctx = self.batch = None

    def close(self) -> None:
        self.close_context()
        self.lc.llama_model_free(self.model)

    def clear(self) -> None:
        """Forget every sequence; the cells keep their (finite) data, which masked out never enters a result."""
        self.lc.llama_memory_clear(self.memory, False)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of ``(token, position, sequence, wants_logits)`` entries (at most ``n_batch``)."""
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        if (rc := self.lc.llama_decode(self.ctx, b)) != 0:
            raise RuntimeError(f"llama_decode returned {rc} for {len(entries)} token(s) (1: no room in the KV cache)")

    def logits(self, rows: int) -> np.ndarray:
        """The logits of the last decode's ``rows`` outputs (a view: valid until the next decode)."""
        return np.ctypeslib.as_array(self.lc.llama_get_logits(self.ctx), shape=(rows, self.n_vocab))


class LlamaCppEngine(BatchedEngine):
    """A DSPy engine running a GGUF with llama.cpp in process, the rows of a batch decoded together.

    Args:
        model_path: A ``.gguf`` file; None means the embedded SmolLM2-135M-Instruct GGUF.
        n_ctx: The most prompt + new tokens of one request; None means the model's training context.
        max_batch_size: Most requests collected into one batch (the context's sequences).
        batch_window_s: A batch closes when no request has arrived for this long.
        n_threads: llama.cpp's threads; None means :func:`default_threads`. Read when the model loads.
    """

    runtime = "llamacpp"
    #: Where generation time goes: prompt tokens prefilled (each distinct prompt once, less the head it shares with
    #: another prompt of its batch; scored texts too) and the seconds inside those ``llama_decode`` calls; the
    #: prompt tokens taken from a shared head instead; decode steps (one ``llama_decode`` for all live rows), the rows
    #: they decoded, and their seconds. The rest of ``generate_seconds`` is sampling and bookkeeping.
    phase_stats = ("prefill_tokens", "prefill_seconds", "shared_prefix_tokens", "decode_steps", "decode_rows",
                   "decode_seconds")

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        n_ctx: int | None = None,
        max_batch_size: int = 32,
        batch_window_s: float = 0.02,
        n_threads: int | None = None,
    ) -> None:
        super().__init__(model_path, max_batch_size=max_batch_size, batch_window_s=batch_window_s)
        self.gguf = gguf_path(model_path)
        self.n_ctx, self.n_threads = n_ctx, n_threads
        self._ctx_lock = threading.Lock()  # one llama.cpp context: generate (worker) and score (callers) take turns

    def close(self) -> None:
        """Stop the worker and free the llama.cpp model and context; a later call loads them again."""
        super().close()
        with self._ctx_lock, self._load_lock:  # the order score and generate take them in
            if self._model is not None and self._model.pid == os.getpid():
                self._model.close()
            self._model = None

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LlamaCppEngine:
        """The shared engine for a :meth:`dump_state` record."""
        return shared_llamacpp_engine(**{k: v for k, v in state.items() if k != "runtime"})

    def _settings(self) -> dict[str, Any]:
        return {"n_ctx": self.n_ctx}

    def _load(self) -> tuple[Any, Any]:
        import llama_cpp as lc
        from llama_cpp._logger import set_verbose

        with _BACKEND_LOCK:
            set_verbose(False)  # llama.cpp's own log: errors only
            lc.llama_backend_init()
        tokenizer = self._tokenizer or gguf_tokenizer(self.gguf)
        native = _Native(lc, self.gguf, 1, _MIN_STREAM, self.n_threads)  # grown by _native to what a batch needs
        return native, tokenizer

    def _native(self, rows: int, cells: int) -> _Native:
        """The loaded model and a context of at least ``rows`` streams of ``cells`` cells (grown when smaller,
        within :data:`_MAX_CELLS` where it can), reopened in a forked child."""
        native, _ = self.load()
        if native.pid != os.getpid():  # a forked child: the parent's context and threads are not ours
            with self._load_lock:
                if self._model is native:
                    self._model = self._load()[0]
            native = self._model
        if native.n_seq_max < rows or native.n_ctx_seq < cells:
            n_seq, n_cells = max(rows, native.n_seq_max), max(cells, native.n_ctx_seq)
            if n_seq * n_cells > _MAX_CELLS:
                n_seq, n_cells = rows, cells
            native.open_context(n_seq, n_cells)
        return native

    def vocab_size(self) -> int:
        """V: the width of the logits :meth:`score` reads its statistics from."""
        native, _ = self.load()
        return int(native.n_vocab)

    def _context_limit(self) -> int | None:
        native, _ = self.load()
        return min(native.n_ctx_train, self.n_ctx or native.n_ctx_train)

    def _end_ids(self) -> set[int]:
        return self._model.eog | {self._tokenizer.eos_token_id, self._tokenizer.pad_token_id} - {None}

    def score(self, texts: list[str], *, stats: bool = False) -> list[list[tuple]]:
        """Prompt log-probabilities (see :meth:`BatchedEngine.score`): each text decoded alone, every position's
        logits read (in chunks of 256 tokens); with ``stats``, each position's entropy and mean log-probability over
        the vocabulary too (:func:`vocab_stats`, from the same log-softmax).
        """
        _, tokenizer = self.load()
        with _TOKENIZER_LOCK:
            encoded = [tokenizer(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts]
        ids = [e["input_ids"] for e in encoded]
        limit = self._context_limit()
        if (longest := max(map(len, ids), default=0)) > limit:
            raise lm15.ContextLengthError(f"a scored text has {longest} tokens, more than the model's {limit}")
        logprobs: list[list[float | None]] = [([None] if row else []) for row in ids]
        extra: list[list[tuple]] = [([(None, None)] if row else []) for row in ids]
        with self._ctx_lock:
            native = self._native(1, _stream_size(max(map(len, ids), default=1)))
            for i, row in enumerate(ids):
                if len(row) > 1:
                    native.clear()
                    start = time.perf_counter()
                    lp = log_softmax(_prefill(native, row[:-1], 0, all_logits=True))
                    self._count(prefill_tokens=len(row) - 1, prefill_seconds=time.perf_counter() - start)
                    logprobs[i] += lp[np.arange(len(row) - 1), row[1:]].tolist()
                    if stats:
                        entropy, mean = vocab_stats(lp)
                        extra[i] += list(zip(entropy.tolist(), mean.tolist(), strict=True))
            native.clear()
        return self._scored(encoded, logprobs, extra if stats else None)

    def _run(
        self, inputs: list[list[int]], greedy: bool, max_tokens: int, stop: tuple[str, ...], settings: list[tuple],
        seeds: list[int] | None, top: int | None,
    ) -> tuple[list[list[int]], list | None]:
        generated: list[list[int]] = [[] for _ in inputs]
        scored: list | None = [[] for _ in inputs] if top is not None else None
        rngs = None if greedy else [np.random.default_rng(seed) for seed in seeds]
        cells = _stream_size(max(map(len, inputs)) + max_tokens)
        rows_per_part = max(1, min(self.max_batch_size, _MAX_SEQ, _MAX_CELLS // cells))
        with self._ctx_lock:
            for start in range(0, len(inputs), rows_per_part):
                part = list(range(start, min(start + rows_per_part, len(inputs))))
                native = self._native(len(part), cells)
                try:
                    self._decode_part(native, inputs, part, greedy, max_tokens, stop, settings, rngs, top,
                                      generated, scored)
                finally:
                    native.clear()
        return generated, scored

    def _decode_part(
        self, native: _Native, inputs: list[list[int]], rows: list[int], greedy: bool, max_tokens: int,
        stop: tuple[str, ...], settings: list[tuple], rngs: list | None, top: int | None,
        generated: list[list[int]], scored: list | None,
    ) -> None:
        """Prefill each distinct prompt of ``rows`` once, in sorted order, on a copy of the previous prompt's stream
        cut to their common prefix where that is :data:`_MIN_SHARED` tokens or more (see :func:`_prefill`); copy its
        stream to its other rows; then decode all live rows one step per ``llama_decode`` until each ends (EOS,
        ``max_tokens`` or a stop string)."""
        lc, memory = native.lc, native.memory
        seq = {r: k for k, r in enumerate(rows)}
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for r in rows:
            by_prompt.setdefault(tuple(inputs[r]), []).append(r)
        last: dict[tuple[int, ...], np.ndarray] = {}
        previous, shared_total, start = None, 0, time.perf_counter()
        for prompt in sorted(by_prompt):  # sorted: the longest head a prompt shares is with the one before it
            target = seq[by_prompt[prompt][0]]
            shared = 0 if previous is None else min(_common_prefix(previous, prompt), len(prompt) - 1)
            if shared >= _MIN_SHARED:  # between streams llama.cpp copies the whole stream (at the next decode)
                lc.llama_memory_seq_cp(memory, seq[by_prompt[previous][0]], target, -1, -1)
                lc.llama_memory_seq_rm(memory, target, shared, -1)
            else:
                shared = 0
            last[prompt] = _prefill(native, prompt, target, all_logits=False, start=shared)[-1]
            previous, shared_total = prompt, shared_total + shared
        self._count(prefill_tokens=sum(map(len, by_prompt)) - shared_total, shared_prefix_tokens=shared_total,
                    prefill_seconds=time.perf_counter() - start)
        for group in by_prompt.values():
            for r in group[1:]:
                lc.llama_memory_seq_cp(memory, seq[group[0]], seq[r], -1, -1)
        live = list(rows)
        logits = np.stack([last[tuple(inputs[r])] for r in live])
        tail = max(map(len, stop), default=0) + 4  # tokens decoded to look for a stop string
        ends = self._end_ids()  # the tokens _finish cuts at: a row stops decoding where its text ends
        while True:
            tokens, steps = _pick(logits, live, greedy, settings, rngs, top)
            for k, r in enumerate(live):
                generated[r].append(int(tokens[k]))
                if scored is not None:
                    scored[r].append(steps[k])
            ended = [len(generated[r]) >= max_tokens or generated[r][-1] in ends for r in live]
            if stop:
                with _TOKENIZER_LOCK:
                    ended = [done or any(s in self._tokenizer.decode(generated[r][-tail:], skip_special_tokens=True)
                                         for s in stop) for done, r in zip(ended, live, strict=True)]
            live = [r for r, done in zip(live, ended, strict=True) if not done]
            if not live:
                return
            start = time.perf_counter()
            native.decode([(generated[r][-1], len(inputs[r]) + len(generated[r]) - 1, seq[r], True) for r in live])
            logits = native.logits(len(live))
            self._count(decode_steps=1, decode_rows=len(live), decode_seconds=time.perf_counter() - start)


class AsyncLlamaCppEngine(AsyncBatchedEngine):
    """The async twin of :class:`LlamaCppEngine`, sharing its model and batcher."""

    engine_class = LlamaCppEngine


def shared_llamacpp_engine(
    model_path: str | os.PathLike | None = None, *, n_ctx: int | None = None, **knobs: Any
) -> LlamaCppEngine:
    """The process-wide :class:`LlamaCppEngine` for (GGUF, n_ctx); a None path is the embedded GGUF.

    Non-None ``max_batch_size`` / ``batch_window_s`` in ``knobs`` also update an existing engine.
    """
    key = ("llamacpp", str(gguf_path(model_path)), str(n_ctx))
    return shared(key, lambda: LlamaCppEngine(model_path, n_ctx=n_ctx, **knobs), knobs)


def _prefill(
    native: _Native, prompt: list[int] | tuple[int, ...], seq: int, all_logits: bool, start: int = 0
) -> np.ndarray:
    """Decode ``prompt[start:]`` into sequence ``seq`` (which holds ``prompt[:start]`` already), in chunks of
    ``n_batch`` tokens holding this prompt only; the logits of every decoded position (``all_logits``) or of the
    last one, as a new array.

    One prompt per ``llama_decode``: several prompts decoded together are split by llama.cpp into ubatches of an
    equal number of tokens per sequence, and a sequence's logits then depend on that number (max |difference| ~1 on
    the embedded model, llama-cpp-python 0.3.36, this CPU). One prompt alone gives the same logits wherever it is cut
    into chunks (``start`` included).
    """
    rows = []
    step = min(native.n_batch, _SCORE_CHUNK) if all_logits else native.n_batch  # all logits: chunk x vocab floats
    for first in range(start, len(prompt), step):
        chunk = prompt[first : first + step]
        last = first + len(chunk) == len(prompt)
        native.decode([(t, first + k, seq, all_logits or (last and k == len(chunk) - 1)) for k, t in enumerate(chunk)])
        if all_logits or last:
            rows.append(native.logits(len(chunk) if all_logits else 1).copy())
    return np.concatenate(rows)


def _pick(
    logits: np.ndarray, live: list[int], greedy: bool, settings: list[tuple], rngs: list | None, top: int | None
) -> tuple[np.ndarray, list | None]:
    """The next token of each live row, and (when ``top`` is not None) its log-probability with the ``top`` best
    ``(logprob, token_id)`` pairs, under the distribution sampled from (raw when greedy)."""
    if greedy:
        processed = logits
        tokens = logits.argmax(axis=1)
    else:
        processed = np.empty(logits.shape, dtype=np.float32)
        groups: dict[tuple, list[int]] = {}
        for k, r in enumerate(live):
            groups.setdefault(settings[r], []).append(k)
        for setting, ks in groups.items():
            processed[ks] = warp(logits[ks], *setting)
        tokens = sample(processed, np.array([rngs[r].random() for r in live]))
    if top is None:
        return tokens, None
    lp = log_softmax(processed.astype(np.float32, copy=False))
    chosen = lp[np.arange(len(live)), tokens].tolist()
    if not top:
        return tokens, [(c, []) for c in chosen]
    best = lp.argmax(axis=1)[:, None] if top == 1 else np.argpartition(-lp, top - 1, axis=1)[:, :top]
    steps = []
    for k in range(len(live)):
        ranked = best[k][np.argsort(-lp[k, best[k]], kind="stable")]
        steps.append((chosen[k], [(float(lp[k, a]), int(a)) for a in ranked]))
    return tokens, steps


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many leading tokens ``a`` and ``b`` share.

    Examples:
        >>> _common_prefix((1, 2, 3), (1, 2, 4, 5)), _common_prefix((1, 2), (1, 2, 3)), _common_prefix((), (1,))
        (2, 2, 0)
    """
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


def _stream_size(tokens: int) -> int:
    """The KV cells of a stream holding ``tokens``: a power of two, at least :data:`_MIN_STREAM`.

    Examples:
        >>> [_stream_size(n) for n in (1, 256, 257, 700)]
        [256, 256, 512, 1024]
    """
    return max(_MIN_STREAM, 1 << max(tokens - 1, 0).bit_length())
