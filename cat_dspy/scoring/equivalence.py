"""Answer equivalence (CaT verifiable reward, paper §1.5); extraction lives in :mod:`cat_dspy.scoring.extraction`.

The symbolic check runs in long-lived worker processes: fresh interpreters started with ``subprocess`` (spawn-like:
no fork of a parent holding torch threads, no re-import of the caller's ``__main__`` or of ``cat_dspy``). Each request
has a wall-clock limit that holds from any thread; a worker that overruns is killed and restarted on next use, and the
caller gets the string-comparison result. Outcomes are counted in :func:`equivalence_stats`; every fallback (a
worker that cannot start, crashes, times out, is busy, or a math-verify error) is a counted reason
(:data:`EQUIVALENCE_FALLBACKS`), collected per unit of work with :func:`collect_equivalence`, and logged at
WARNING with its cause the first time it happens in a process.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import re
import select
import subprocess
import sys
import tempfile
import time

from cat_dspy.scoring.counters import Counters

__all__ = ["equivalence_stats", "equivalent", "normalize_answer", "reset_equivalence_stats"]
__all__ += ["EQUIVALENCE_FALLBACKS", "collect_equivalence", "shutdown_equivalence_workers"]

# --------------------------------------------------------------------------------------------- normalization
_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])")
_SPACING = re.compile(r"\\[,;:! ]|\{,\}")
# A comma pulled tight to the next digits by a negative thin space ("45,\! 678"): a thousands separator, whatever
# space follows (math mode does not show it), so the space goes before the thousands rule reads the groups.
_TIGHT_COMMA = re.compile(r",[ \t]*\\![ \t]*(?=\d)")
# Thousands separators: groups of exactly three digits after a comma, no space after it ("1,000", "12,345,678").
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")
_OPENERS, _CLOSERS = ("(", "[", "\\{"), (")", "]", "\\}")
_PERCENT = re.compile(r"(?<=[\d}])\s*(?:\\?%|\b(?:percent(?:age)?|per\s+cent|pct)\b(?:\s+points?\b)?)", re.I)
_UNIT_TEXT = re.compile(r"\\(?:text|textrm|mathrm|mbox)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d\}?)?\s*\.?\s*$")
_WORD_UNITS = re.compile(r"(?<=[\d}%])\s+(?P<u>[A-Za-z]{2,}(?:[ /.-]+[A-Za-z]+){0,3})(?:\^\{?\d\}?)?\s*\.?\s*$")
_NOT_UNITS = {"pi", "sqrt", "sin", "cos", "tan", "log", "ln", "exp", "and", "or", "mod", "if", "for", "when"}
_MAX_UNIT_CHARS = 300  # longer answers keep their words (and these regexes stay cheap)
_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.])")  # no nested quantifiers: linear on long digit runs
_NUMBER = re.compile(r"[+-]?(?:\d{1,60}(?:\.\d{0,60})?|\.\d{1,60})")


def _merge_thousands(m: re.Match[str]) -> str:
    """Drop the separators of ``1,000``, unless the group is the whole content of a bracket (``(3,500)``, a pair)."""
    before = m.string[max(0, m.start() - 40) : m.start()].rstrip()  # bounded: linear on long inputs
    after = m.string[m.end() : m.end() + 40].lstrip()
    if before.endswith(_OPENERS) and after.startswith(_CLOSERS):
        return m.group()
    return m.group().replace(",", "")


def _drop_units(ans: str) -> str:
    """The answer without a trailing unit: a ``\\text{...}`` after math (``12\\text{ cm}``, hendrycks' and Qwen's
    rule), or words after a number (``5 dollars``, ``\\text{16 eggs}``); a percent word is kept (see
    :func:`normalize_answer`). Letters glued to a number (``2xy``) are math, not units, and stay."""
    s = ans.strip().strip("$").strip()
    if len(s) > _MAX_UNIT_CHARS:
        return ans
    m = re.fullmatch(r"\\(?:text|textrm|mathrm|mbox)\s*\{([^{}]*)\}", s)
    if m:  # \text{5 dollars}: the whole answer in text
        s = m.group(1).strip()
    cut = _UNIT_TEXT.search(s)
    if cut and cut.start() > 0 and not _PERCENT.fullmatch(" " + _strip_text(s[cut.start() :])):
        s = s[: cut.start()].rstrip().removesuffix("\\")  # "12\\ \\text{cm}": the spacing command goes too
    cut = _WORD_UNITS.search(s)
    if cut and cut.group("u").lower() not in _NOT_UNITS and not re.match(r"(?i)per", cut.group("u")):
        s = s[: cut.start()]
    return s if s.strip() else ans


def _strip_text(s: str) -> str:
    return re.sub(r"\\(?:text|textrm|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)


def normalize_answer(ans: str) -> str:
    """Normalize an answer string conservatively (unit words are kept; :func:`equivalent` compares without them).

    Strips whitespace, ``$``, ``\\text{}``/``\\mathrm{}`` wrappers, ``\\left``/``\\right``, a trailing ``.``, a
    leading ``+`` and thousands separators; maps ``\\dfrac``/``\\tfrac`` to ``\\frac``, ``72.0`` to ``72`` and
    ``\\%``/"percent"/"pct" after a number to ``%``. A thousands separator is a comma followed by exactly three
    digits and no space (``1,000``, ``12,345,678``), or by a negative thin space and then the digits, whatever space
    follows it (``45,\\! 678``, ``1,\\! 234,\\! 567``: the ``\\!`` pulls the group to the comma); ``32, 349`` stays
    two numbers, and so does ``(3,500)``, a bracket holding nothing but the group (a pair, as math-verify reads it).

    Args:
        ans: An extracted answer.

    Returns:
        The normalized string ('' for None/empty input).

    Examples:
        >>> normalize_answer(r" $\\dfrac{1}{2}$. ")
        '\\\\frac{1}{2}'
        >>> normalize_answer("1,000"), normalize_answer("+72.0"), normalize_answer("0.50")
        ('1000', '72', '0.5')
        >>> normalize_answer(r"10\\text{ cm}"), normalize_answer("28 percent"), normalize_answer("32, 349")
        ('10cm', '28%', '32,349')
        >>> normalize_answer(r"45,\\! 678"), normalize_answer(r"1,\\! 234,\\! 567"), normalize_answer(r"1,\\! 2")
        ('45678', '1234567', '1,2')
    """
    if ans is None:
        return ""
    s = str(ans).strip()
    s = s.replace("\\$", "").replace("$", "")
    for _ in range(20):  # unwrap innermost-first; bounded
        s, n = _WRAPPER.subn(r"\1", s)
        if not n:
            break
    s = _LEFT_RIGHT.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\%", "%")
    s = _TIGHT_COMMA.sub(",", s)  # before the spacing commands go: "45,\! 678" is one number, "1, 2" two
    s = _SPACING.sub("", s)
    s = _PERCENT.sub("%", s)  # "28 percent", "28 \\%" -> "28%"
    s = _THOUSANDS.sub(_merge_thousands, s)  # before spaces go: "32, 349" is two numbers, "1,000" one
    s = re.sub(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])", "\\1\x00", s)  # keep the space that ends a command name
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    s = s.rstrip(".").removeprefix("+")
    s = _DECIMAL.sub(lambda m: (m.group(1) + "." + m.group(2)).rstrip("0").rstrip("."), s)
    return "0" if s == "-0" else s


# --------------------------------------------------------------------------------------------- statistics
EQUIVALENCE_FALLBACKS = ("timeout_fallback", "busy_fallback", "start_fallback", "crash_fallback", "error_fallback",
                         "too_long_fallback")
"""Why a symbolic check fell back to the string result (False): the worker gave no verdict in time, no worker was
free in time, a worker could not start, a worker died or broke the protocol, math-verify raised, an answer was
over 2000 characters."""
_STAT_KEYS = """calls none_input string_match string_mismatch numeric_match numeric_mismatch symbolic_match
symbolic_mismatch""".split() + list(EQUIVALENCE_FALLBACKS)
_stats = Counters("answer equivalence", _STAT_KEYS, logging.getLogger(__name__))
collect_equivalence = _stats.collect
"""``with collect_equivalence() as counts:`` the outcomes counted inside the block (a ``Counter``), threads too."""


def _count(key: str, cause: object = None) -> None:
    _stats.count(key, cause=cause, warn=key in EQUIVALENCE_FALLBACKS)


def equivalence_stats() -> dict[str, int]:
    """Snapshot of the outcome counters of :func:`equivalent` (thread-safe).

    Returns:
        A copy of the counters: ``calls``, one outcome per call (``none_input``, ``string_match``, ...,
        ``symbolic_mismatch``, or one of the fallback reasons :data:`EQUIVALENCE_FALLBACKS`).

    Examples:
        >>> reset_equivalence_stats(); _ = equivalent("1", "1.0"); equivalence_stats()["string_match"]
        1
    """
    return _stats.snapshot()


def reset_equivalence_stats() -> None:
    """Set every counter of :func:`equivalence_stats` to zero.

    Examples:
        >>> reset_equivalence_stats(); sum(equivalence_stats().values())
        0
    """
    _stats.reset()


# --------------------------------------------------------------------------------------------- symbolic worker
_WORKER_CODE = r"""
import json, logging, os, sys
out = os.fdopen(os.dup(1), "w"); os.dup2(2, 1); sys.stdout = sys.stderr  # stray prints cannot corrupt the protocol
logging.disable(logging.CRITICAL)
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]) << 20, resource.getrlimit(resource.RLIMIT_AS)[1]))
except Exception:
    resource = None
from math_verify import parse, verify
out.write("READY\n"); out.flush()
for line in sys.stdin:
    try:
        req = json.loads(line)
        if resource is not None:  # CPU limit per request: a runaway job dies even if the parent is gone
            ru = resource.getrusage(resource.RUSAGE_SELF)
            hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
            soft = int(ru.ru_utime + ru.ru_stime + req["t"] + 5)
            resource.setrlimit(resource.RLIMIT_CPU, (soft if hard < 0 or soft < hard else hard, hard))
        # first_match: the answer is read whole or not at all (no number picked out of a form it cannot parse)
        ga, pb = (parse("$" + req[k] + "$", parsing_timeout=None, extraction_mode="first_match") for k in "ab")
        resp = {"r": bool(ga) and bool(pb) and bool(verify(ga, pb, timeout_seconds=None))}
    except BaseException as e:
        resp = {"e": repr(e)[:300]}
    out.write(json.dumps(resp) + "\n"); out.flush()
"""
_MAX_SYMBOLIC_CHARS = 2000
_STARTUP_TIMEOUT = 60.0
_BUSY_WAIT_MIN = 30.0  # seconds a check waits for a free worker at least (then busy_fallback)
_MEM_LIMIT_MB = int(os.environ.get("CAT_DSPY_EQUIV_MEM_MB", "4096"))
_NUM_WORKERS = max(1, int(os.environ.get("CAT_DSPY_EQUIV_WORKERS", str(min(4, os.cpu_count() or 1)))))


class _WorkerFailure(Exception):
    """The symbolic check gave no verdict; ``reason`` is one of :data:`EQUIVALENCE_FALLBACKS`."""

    def __init__(self, reason: str, cause: str) -> None:
        super().__init__(f"{reason}: {cause}")
        self.reason, self.cause = reason, cause


class _Worker:
    """One math-verify interpreter behind a JSON-lines pipe; used by one thread at a time (pool slot).

    Its stderr goes to a temporary file, whose tail is the cause reported when the worker fails to start or dies.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.err: tempfile._TemporaryFileWrapper[bytes] | None = None
        self.buf = b""

    def stderr_tail(self, limit: int = 300) -> str:
        """The last ``limit`` characters the worker wrote to stderr ('' if none)."""
        if self.err is None:
            return ""
        try:
            self.err.seek(0, os.SEEK_END)
            size = self.err.tell()
            self.err.seek(max(0, size - limit))
            return self.err.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def _readline(self, deadline: float) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        poller = select.poll()  # not select.select: it fails for descriptors >= 1024 (a process with many files)
        poller.register(fd, select.POLLIN)
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(max(1, int(remaining * 1000))):
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("equivalence worker exited")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def ensure_started(self) -> None:
        """Start the worker if it is not running; raises :class:`_WorkerFailure` (``start_fallback``) if it
        cannot start (no interpreter, math-verify missing or broken, no READY within the startup limit)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.kill()
        cmd = [sys.executable, "-c", _WORKER_CODE, str(_MEM_LIMIT_MB)]
        try:
            self.err = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
            ready = self._readline(time.monotonic() + _STARTUP_TIMEOUT)
        except (OSError, EOFError, ValueError) as exc:
            ready = None
            cause = f"{type(exc).__name__}: {exc}"
        else:
            cause = f"no READY within {_STARTUP_TIMEOUT:.0f} s" if ready is None else f"unexpected {ready[:80]!r}"
        if ready != b"READY":
            tail = self.stderr_tail()
            self.kill()
            raise _WorkerFailure("start_fallback", f"math-verify worker did not start ({cause}); stderr: {tail!r}")

    def ask(self, a: str, b: str, timeout: float) -> bool | None:
        """True/False from math-verify, None on timeout (the worker is then killed).

        Raises:
            _WorkerFailure: The worker could not start (``start_fallback``), died or broke the protocol
                (``crash_fallback``), or math-verify raised (``error_fallback``).
        """
        self.ensure_started()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"a": a, "b": b, "t": timeout}) + "\n").encode())
            self.proc.stdin.flush()
            line = self._readline(time.monotonic() + timeout)
            if line is None:
                self.kill()
                return None
            resp = json.loads(line)
        except (OSError, EOFError, ValueError) as exc:  # a dead worker (broken pipe, EOF) or a corrupt reply
            code = self.proc.poll() if self.proc is not None else None
            tail = self.stderr_tail()
            self.kill()
            raise _WorkerFailure("crash_fallback", f"math-verify worker died or broke the protocol "
                                 f"({type(exc).__name__}: {exc}; exit code {code}); stderr: {tail!r}") from exc
        if not isinstance(resp, dict) or "r" not in resp:
            error = resp.get("e", "bad reply") if isinstance(resp, dict) else "bad reply"
            raise _WorkerFailure("error_fallback", f"math-verify raised {error}")
        return bool(resp["r"])

    def kill(self) -> None:
        proc, err, self.proc, self.err, self.buf = self.proc, self.err, None, None, b""
        steps = [] if proc is None else [proc.kill, lambda: proc.wait(timeout=5), proc.stdin.close, proc.stdout.close]  # type: ignore[union-attr]
        for step in [*steps, *([err.close] if err is not None else [])]:
            try:
                step()
            except (OSError, ValueError, subprocess.TimeoutExpired) as exc:  # best effort: the process is gone
                logging.getLogger(__name__).debug("stopping an equivalence worker: %r", exc)


_pool: queue.LifoQueue[_Worker] = queue.LifoQueue()
_all_workers: list[_Worker] = []


def _init_pool() -> None:
    global _pool, _all_workers
    _pool, _all_workers = queue.LifoQueue(), [_Worker() for _ in range(_NUM_WORKERS)]
    for w in _all_workers:
        _pool.put(w)


def shutdown_equivalence_workers() -> None:
    """Stop the symbolic worker processes (runs ``atexit``; they restart lazily on next use).

    Examples:
        >>> shutdown_equivalence_workers()
    """
    for w in list(_all_workers):
        w.kill()


def _after_fork_in_child() -> None:  # a forked child gets its own (lazy) workers, never the parent's pipes
    _init_pool()


_init_pool()
atexit.register(shutdown_equivalence_workers)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _symbolic(a: str, b: str, timeout: float) -> bool:
    """math-verify's verdict. Waiting for a free worker is not charged to ``timeout`` (a busy pool must not turn
    matches into misses); it is bounded anyway, since every job ahead is killed after its own.

    Raises:
        _WorkerFailure: No verdict; its ``reason`` says why (:data:`EQUIVALENCE_FALLBACKS`).
    """
    wait = max(_BUSY_WAIT_MIN, 10 * timeout)
    try:
        worker = _pool.get(timeout=wait)
    except queue.Empty:
        raise _WorkerFailure("busy_fallback", f"no free math-verify worker within {wait:.0f} s "
                             f"({_NUM_WORKERS} workers; CAT_DSPY_EQUIV_WORKERS sets how many)") from None
    try:
        verdict = worker.ask(a, b, timeout)
    finally:
        _pool.put(worker)
    if verdict is None:
        raise _WorkerFailure("timeout_fallback", f"math-verify gave no verdict within {timeout:g} s (the worker was "
                             f"killed) on {a[:60]!r} vs {b[:60]!r}")
    return verdict


def _percent_number(s: str) -> tuple[float, bool] | None:
    """``(value, is_percent)`` for a plain number with an optional trailing ``%``; None otherwise."""
    body = s.removesuffix("%")
    return (float(body), body != s) if _NUMBER.fullmatch(body) else None


def _same_number(a: tuple[float, bool], b: tuple[float, bool]) -> bool:
    """Numbers equal within ``1e-9`` relative; ``28%`` equals both ``28`` and ``0.28`` (as math-verify decides)."""
    (x, xp), (y, yp) = a, b
    candidates = [(x, y)] + ([(x / 100, y)] if xp and not yp else []) + ([(x, y / 100)] if yp and not xp else [])
    return math.isfinite(x) and any(abs(u - v) < 1e-9 * max(1.0, abs(u)) for u, v in candidates)


def _symbolic_form(s: str) -> str:
    """What math-verify reads: a comma that survived normalization separates elements (thousands separators are
    gone by now), so it gets a space, or math-verify would read ``32,349`` as one number. The worker asks math-verify
    to read each side whole (``extraction_mode="first_match"``): by default, when it cannot parse a form such as
    ``-[1, 2)``, it falls back to a number that a space sets apart inside it (``2``), and the space added here would
    make that a false match."""
    return s.replace(",", ", ")


def equivalent(a: str | None, b: str | None, *, mode: str = "symbolic", timeout: float = 2.0) -> bool:
    """Whether two final answers are equivalent.

    ``mode="string"`` compares :func:`normalize_answer` outputs, as they are and without a trailing unit (a
    ``\\text{...}`` after math, or words after a number: ``12\\text{ cm}``, ``5 dollars``) or percent sign (``28%`` is
    ``28``, as in hendrycks' and Qwen2.5-Math's graders). ``mode="symbolic"`` (default) also accepts plain numbers
    equal within ``1e-9`` relative (``28%`` also equals ``0.28``, as in math-verify), then asks math-verify (``a`` is
    the reference side) in a worker process under a wall-clock ``timeout`` that holds in any thread; on timeout or
    error the string result (False) is returned. A comma that survived normalization reaches math-verify as an
    element separator, so ``(3, 500)`` is a pair, never ``3500``; math-verify reads each answer whole or not at all,
    so a form it cannot parse (``-[1, 2)``) matches nothing but itself, never a number inside it.

    Args:
        a: Reference answer (or None).
        b: Candidate answer (or None).
        mode: "symbolic" or "string".
        timeout: Seconds allowed for the symbolic check (not counting a worker's start or a wait for a free one).

    Returns:
        True when equivalent; False otherwise, and whenever either side is None.

    Raises:
        ValueError: For an unknown ``mode``.

    Examples:
        >>> equivalent("72", "72.0"), equivalent(r"\\frac{1}{2}", "0.5"), equivalent("3", None)
        (True, True, False)
        >>> equivalent(r"\\sqrt{4}", "2", mode="string"), equivalent("12", r"12\\text{ cm}", mode="string")
        (False, True)
        >>> equivalent("3500", "(3, 500)"), equivalent("32349", "32, 349"), equivalent(r"\\{1,2\\}", "2, 1")
        (False, False, True)
        >>> equivalent("2", "-[1, 2)"), equivalent("[1,2)", "[1, 2)"), equivalent("45678", r"45,\\! 678")
        (False, True, True)
    """
    if mode not in ("symbolic", "string"):
        raise ValueError(f"unknown equivalence mode {mode!r} (expected 'symbolic' or 'string')")
    _count("calls")
    if a is None or b is None:
        _count("none_input")
        return False
    na, nb = normalize_answer(a), normalize_answer(b)
    if na == nb and na:
        _count("string_match")
        return True
    na, nb = normalize_answer(_drop_units(a)), normalize_answer(_drop_units(b))  # "12\text{ cm}" -> "12"
    if na and nb and (na == nb or na.removesuffix("%") == nb.removesuffix("%")):  # "28%" is "28" (hendrycks, Qwen)
        _count("string_match")
        return True
    if mode == "string" or not na or not nb:
        _count("string_mismatch")
        return False
    xa, xb = _percent_number(na), _percent_number(nb)
    if xa is not None and xb is not None:
        same = _same_number(xa, xb)
        _count("numeric_match" if same else "numeric_mismatch")
        return same
    na, nb = _symbolic_form(na), _symbolic_form(nb)
    if len(na) > _MAX_SYMBOLIC_CHARS or len(nb) > _MAX_SYMBOLIC_CHARS:
        _count("too_long_fallback", f"an answer of {max(len(na), len(nb))} characters (over {_MAX_SYMBOLIC_CHARS})")
        return False
    try:
        verdict = _symbolic(na, nb, timeout)
    except _WorkerFailure as exc:
        _count(exc.reason, exc.cause)
        return False
    _count("symbolic_match" if verdict else "symbolic_mismatch")
    return verdict
