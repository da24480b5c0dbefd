"""Fault injection at the LM layer: an engine wrapper that fails like a real backend, on purpose.

:class:`FaultyEngine` wraps any DSPy engine (the embedded local one, a scripted one) and, at a configurable rate,
raises the errors a remote backend raises — timeouts, rate limits, dropped connections, 5xx — or stalls before
timing out. The errors are **dspy.lm15** errors, the ones DSPy's own execution loop classifies as transient, so
DSPy's bounded retries (``dspy.LM(num_retries=...)``) apply exactly as they would against a flaky server, and a
request whose retries are exhausted reaches the caller as DSPy's public error (``LMTimeoutError``, ...).

Every attempt is recorded per logical request (DSPy retries the *same* ``Request`` object), so a test can check
that retries stay bounded (:attr:`FaultyEngine.max_attempts` ≤ 1 + ``num_retries``) and that every request ended
either answered or explicitly failed (:attr:`FaultyEngine.failed_requests`).

Examples:
    >>> from cat_dspy.testing import scripted_lm
    >>> lm = faulty_lm(scripted_lm(["ok"]), rate=0.5, seed=1, num_retries=5)
    >>> [lm("hi")[0] for _ in range(4)]
    ['ok', 'ok', 'ok', 'ok']
    >>> faults = lm.faults
    >>> faults.requests, faults.answered, faults.failed_requests, faults.max_attempts <= 6
    (4, 4, 0, True)
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import dspy
from dspy import lm15

__all__ = ["FAULT_KINDS", "AsyncFaultyEngine", "FaultyEngine", "faulty_lm"]

FAULT_KINDS = ("timeout", "rate_limit", "connection", "stall", "server")
_OK = "ok"


def _error(kind: str, retry_after: float | None) -> lm15.LM15Error:
    """The dspy.lm15 error a real backend raises for ``kind`` (all of them transient for DSPy)."""
    meta: dict[str, Any] = {"provider": "faulty", "retry_after": retry_after}
    if kind == "timeout":
        return lm15.TimeoutError("injected fault: request timed out", **meta)
    if kind == "stall":
        return lm15.TimeoutError("injected fault: backend stalled, then timed out", **meta)
    if kind == "rate_limit":
        return lm15.RateLimitError("injected fault: rate limited", status=429, **meta)
    if kind == "server":
        return lm15.ServerError("injected fault: internal server error", status=503, **meta)
    return lm15.TransportError("injected fault: connection reset by peer", **meta)


class FaultyEngine:
    """A DSPy engine that forwards to ``inner`` but fails a fraction ``rate`` of attempts.

    Args:
        inner: The wrapped engine (``complete(Request) -> Response``; ``stream`` optional).
        rate: Probability that an attempt fails, in ``[0, 1]``.
        kinds: Fault kinds drawn uniformly: ``"timeout"``, ``"rate_limit"``, ``"connection"``, ``"server"``
            (raised at once) and ``"stall"`` (sleeps ``stall_s``, then raises a timeout).
        stall_s: How long a stalled attempt hangs before it times out.
        seed: Seed of the fault draws (the sequence is fixed; which request gets which draw depends on thread
            scheduling when calls are concurrent).
        retry_after: The ``retry_after`` hint the errors carry; DSPy waits exactly that long before retrying
            (0 keeps tests fast; None lets DSPy back off exponentially).

    Attributes:
        attempts: Engine calls (attempts), faulted or not.
        injected: Faults injected, by kind.
        history: Per logical request (DSPy's ``Request`` object), the outcome of each attempt: ``"ok"``, a fault
            kind, or ``"error"`` when the inner engine itself raised.
    """

    def __init__(
        self,
        inner: Any,
        rate: float = 0.3,
        kinds: Iterable[str] = ("timeout", "rate_limit", "connection", "stall"),
        stall_s: float = 0.05,
        seed: int = 0,
        retry_after: float | None = 0.0,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {rate}")
        self.kinds = tuple(kinds)
        unknown = sorted(set(self.kinds) - set(FAULT_KINDS))
        if not self.kinds or unknown:
            raise ValueError(f"fault kinds must be a non-empty subset of {FAULT_KINDS}, got {self.kinds}")
        self.inner = inner
        self.rate = rate
        self.stall_s = stall_s
        self.retry_after = retry_after
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._requests: dict[int, Any] = {}  # id -> Request, kept alive so ids stay unique
        self.history: dict[int, list[str]] = {}
        self.attempts = 0
        self.injected: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------------- bookkeeping
    def _draw(self, request: Any) -> str | None:
        """Record one attempt on ``request``; the fault kind to inject, or None to forward it."""
        with self._lock:
            self.attempts += 1
            self._requests.setdefault(id(request), request)
            fault = self._rng.choice(self.kinds) if self._rng.random() < self.rate else None
            self.history.setdefault(id(request), []).append(fault or _OK)
            if fault:
                self.injected[fault] += 1
            return fault

    def _inner_failed(self, request: Any) -> None:
        with self._lock:
            self.history[id(request)][-1] = "error"

    @property
    def requests(self) -> int:
        """Logical requests seen (a retry of the same request is not a new one)."""
        with self._lock:
            return len(self.history)

    @property
    def answered(self) -> int:
        """Logical requests whose last attempt succeeded."""
        with self._lock:
            return sum(h[-1] == _OK for h in self.history.values())

    @property
    def failed_requests(self) -> int:
        """Logical requests whose last attempt failed: DSPy gave up on them and the caller got an error."""
        with self._lock:
            return sum(h[-1] != _OK for h in self.history.values())

    @property
    def max_attempts(self) -> int:
        """The most attempts any one logical request took (bounded by 1 + ``num_retries``)."""
        with self._lock:
            return max((len(h) for h in self.history.values()), default=0)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters, for logs and assertions.

        Examples:
            >>> FaultyEngine(None).stats()["attempts"]
            0
        """
        with self._lock:
            injected = dict(self.injected)
        return {
            "attempts": self.attempts,
            "requests": self.requests,
            "answered": self.answered,
            "failed_requests": self.failed_requests,
            "max_attempts": self.max_attempts,
            "injected": injected,
            "faults": sum(injected.values()),
        }

    # ------------------------------------------------------------------------------------------- engine protocol
    def _fail(self, fault: str) -> None:
        if fault == "stall":
            time.sleep(self.stall_s)
        raise _error(fault, self.retry_after)

    def complete(self, request: Any) -> Any:
        """One attempt: a fault at rate ``rate``, else the inner engine's response."""
        fault = self._draw(request)
        if fault:
            self._fail(fault)
        try:
            return self.inner.complete(request)
        except Exception:
            self._inner_failed(request)
            raise

    def stream(self, request: Any) -> Iterator[Any]:
        """The inner engine's stream, or a fault before its first event."""
        fault = self._draw(request)
        if fault:
            self._fail(fault)
        try:
            if hasattr(self.inner, "stream"):
                yield from self.inner.stream(request)
            else:
                yield from lm15.response_to_events(self.inner.complete(request))
        except Exception:
            self._inner_failed(request)
            raise

    def close(self) -> None:
        """Close the inner engine (if it has ``close``)."""
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


class AsyncFaultyEngine:
    """The async twin of :class:`FaultyEngine`: same fault draws and counters, ``await``-able, stalls without
    blocking the event loop.

    Args:
        faults: The sync :class:`FaultyEngine` whose policy and counters are shared.
        inner: The wrapped async engine; None runs ``faults.inner.complete`` in a worker thread.
    """

    def __init__(self, faults: FaultyEngine, inner: Any = None):
        self.faults = faults
        self.inner = inner

    async def _fail(self, fault: str) -> None:
        if fault == "stall":
            await asyncio.sleep(self.faults.stall_s)
        raise _error(fault, self.faults.retry_after)

    async def complete(self, request: Any) -> Any:
        """One attempt: a fault at the shared rate, else the inner engine's response."""
        fault = self.faults._draw(request)
        if fault:
            await self._fail(fault)
        try:
            if self.inner is None:
                return await asyncio.to_thread(self.faults.inner.complete, request)
            return await self.inner.complete(request)
        except Exception:
            self.faults._inner_failed(request)
            raise

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        """The events of the (possibly faulted) completion."""
        for event in lm15.response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """Close the inner async engine (if it has ``aclose``)."""
        aclose = getattr(self.inner, "aclose", None)
        if aclose is not None:
            await aclose()


def faulty_lm(
    lm: dspy.LM,
    rate: float = 0.3,
    kinds: Iterable[str] = ("timeout", "rate_limit", "connection", "stall"),
    *,
    stall_s: float = 0.05,
    seed: int = 0,
    num_retries: int | None = None,
    retry_after: float | None = 0.0,
) -> dspy.LM:
    """A copy of ``lm`` whose engine (sync and async) injects faults; ``.faults`` holds the counters.

    Args:
        lm: An LM built on an engine object (:func:`cat_dspy.testing.scripted_lm`, a local model).
        rate: Fault probability per attempt.
        kinds: Fault kinds (see :class:`FaultyEngine`).
        stall_s: Stall duration before a stalled attempt times out.
        seed: Seed of the fault draws.
        num_retries: DSPy's retries of each request (default: ``lm.num_retries``).
        retry_after: Retry delay hint carried by the errors (0: immediate retries).

    Returns:
        The wrapped LM (same model id, so DSPy's cache and usage keys are unchanged).

    Raises:
        ValueError: ``lm`` routes through a named backend ("auto", "litellm", "lm15") rather than an engine object.
    """
    inner = lm.engine
    if isinstance(inner, str):
        raise ValueError(f"faulty_lm needs an LM built on an engine object, not engine={inner!r}")
    faults = FaultyEngine(inner, rate, kinds, stall_s=stall_s, seed=seed, retry_after=retry_after)
    twin = AsyncFaultyEngine(faults, getattr(lm, "_async_engine_spec", None))
    retries = lm.num_retries if num_retries is None else num_retries
    wrapped = lm.copy(engine=faults, async_engine=twin, num_retries=retries)
    wrapped.faults = faults
    return wrapped
