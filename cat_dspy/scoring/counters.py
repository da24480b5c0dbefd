"""Named failure counters: thread-safe totals, per-context collectors, and a WARNING once per process per reason.

Grading and parsing fall back to a defined value when something fails (a math-verify worker that times out, an
output that cannot be parsed). Every fallback is counted here, so the number reaches the user: the totals
(:meth:`Counters.snapshot`) for tests and logs, and a :meth:`Counters.collect` block for the counts of one unit of
work (one eval question, one reward group), which follow ``contextvars`` into worker threads.

Examples:
    >>> c = Counters("demo", ["ok", "failed"])
    >>> with c.collect() as mine:
    ...     c.count("failed", cause="boom")
    >>> dict(mine), c.snapshot()["failed"]
    ({'failed': 1}, 1)
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator

__all__ = ["PARSE_FAILURES", "UNPARSABLE", "Counters", "parse_failure_stats"]


class Counters:
    """Thread-safe counters ``keys`` under ``name``, with collectors and warn-once logging.

    Args:
        name: Prefix of the log messages (and the name of the context variable).
        keys: The counter names.
        logger: Where :meth:`count` logs (default: this module's logger).
    """

    def __init__(self, name: str, keys: Iterable[str], logger: logging.Logger | None = None) -> None:
        self.name = name
        self.keys = tuple(keys)
        self.logger = logger or logging.getLogger(__name__)
        self._totals = dict.fromkeys(self.keys, 0)
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._collectors: contextvars.ContextVar[tuple[Counter[str], ...]] = contextvars.ContextVar(
            f"{name}_collectors", default=())
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:  # a child process logs its own first warnings, with a fresh lock
        self._lock = threading.Lock()
        self._warned = set()

    def count(self, key: str, *, cause: object = None, warn: bool = False) -> None:
        """Count one ``key``; with ``warn``, log a WARNING (with ``cause``) the first time ``key`` is counted in
        this process, and DEBUG for every later one; without, a DEBUG line when a ``cause`` is given."""
        collectors = self._collectors.get()
        with self._lock:
            self._totals[key] += 1
            for collector in collectors:
                collector[key] += 1
            first = warn and key not in self._warned
            if first:
                self._warned.add(key)
        if first:
            self.logger.warning("%s: %s (%s); counted, further ones are logged at DEBUG only", self.name, key, cause)
        elif cause is not None:
            self.logger.debug("%s: %s (%s)", self.name, key, cause)

    def snapshot(self) -> dict[str, int]:
        """A copy of the totals since the last :meth:`reset`."""
        with self._lock:
            return dict(self._totals)

    def reset(self) -> None:
        """Set every total to zero (the warn-once memory is kept: it is per process)."""
        with self._lock:
            self._totals = dict.fromkeys(self.keys, 0)

    @contextlib.contextmanager
    def collect(self) -> Iterator[Counter[str]]:
        """Count, in the yielded ``Counter``, what is counted inside the block (nested blocks each get theirs;
        threads started with a copy of this context, e.g. :meth:`cat_dspy.modules.base.RoleModule.map`, too)."""
        mine: Counter[str] = Counter()
        token = self._collectors.set((*self._collectors.get(), mine))
        try:
            yield mine
        finally:
            self._collectors.reset(token)


UNPARSABLE: tuple[type[BaseException], ...] = (RecursionError, MemoryError)
"""What the lenient parsers (:mod:`cat_dspy.scoring.extraction`, :mod:`cat_dspy.scoring.parsing`) turn into
"no answer"/"unread": an output too deep or too large to process. Any other exception there is a bug and
propagates."""
PARSE_FAILURES = Counters("output parsing", ("extract_answer", "parse_criteria", "parse_verdict", "parse_verdicts"))


def parse_failure_stats() -> dict[str, int]:
    """Outputs the lenient parsers gave up on (:data:`UNPARSABLE`), by parser, since the process started.

    Examples:
        >>> sorted(parse_failure_stats())
        ['extract_answer', 'parse_criteria', 'parse_verdict', 'parse_verdicts']
    """
    return PARSE_FAILURES.snapshot()
