"""Runs ``cat-dspy optimize`` on :func:`eval_driver.scripted_roles` (every LM call logged, no DSPy cache), and can
die in the middle of writing its cache, as a process killed during a write does.

Usage: ``python optimize_driver.py CALL_LOG DELAY_S CRASH_AT -- <cat-dspy optimize arguments>``. With CRASH_AT = k > 0,
the k-th record this process appends to a cache file is written only half (flushed and fsync'd, so the torn line
is on disk), then the process sends itself SIGKILL. CRASH_AT = 0 never crashes. The roles have DSPy's LM cache off,
so whatever a rerun does not recompute came from optimize's own cache files.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def crash_during_append(crash_at: int) -> None:
    """Make the ``crash_at``-th :class:`~cat_dspy.jsonl_store.JsonlStore` write of this process tear, then SIGKILL."""
    from cat_dspy.jsonl_store import JsonlStore

    write, state = JsonlStore._write, {"n": 0}

    def torn_write(self: JsonlStore, line: bytes) -> None:
        state["n"] += 1
        if state["n"] == crash_at:
            write(self, line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        write(self, line)

    JsonlStore._write = torn_write


def main(argv: list[str]) -> int:
    """Run ``cat-dspy optimize`` with scripted roles; returns its exit code (unless it crashes on purpose)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import eval_driver

    from cat_dspy import cli
    from cat_dspy.cli import optimize

    log_path, delay, crash_at, sep, *rest = argv
    assert sep == "--", "usage: optimize_driver.py CALL_LOG DELAY_S CRASH_AT -- <optimize arguments>"
    if int(crash_at) > 0:
        crash_during_append(int(crash_at))
    optimize.build_roles = lambda args: eval_driver.scripted_roles(log_path, float(delay), cache=False)
    return cli.main(["optimize", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
