"""Compute accounting per CaT role: LM calls, tokens, wall time and (local engine) batched generate calls.

Counts come from DSPy's own usage tracker (cache hits record nothing, so a resumed run shows zero new calls)
and from the local engine's counters, and are returned — never printed — so ``solve``, ``eval``, ``train``
and the benchmarks report the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dspy


def tracker_totals(tracker: Any) -> dict[str, int]:
    """Calls and tokens recorded by a ``dspy.track_usage()`` tracker (missing token counts count as 0).

    Examples:
        >>> from types import SimpleNamespace
        >>> tracker_totals(SimpleNamespace(usage_data={"m": [{"prompt_tokens": 3, "completion_tokens": None}] * 2}))
        {'calls': 2, 'prompt_tokens': 6, 'completion_tokens': 0}
    """
    entries = [e for es in tracker.usage_data.values() for e in es]
    return {
        "calls": len(entries),
        "prompt_tokens": sum(int(e.get("prompt_tokens") or 0) for e in entries),
        "completion_tokens": sum(int(e.get("completion_tokens") or 0) for e in entries),
    }


def empty_usage() -> dict[str, float]:
    """A zeroed usage record for one role.

    Examples:
        >>> empty_usage()["calls"]
        0
    """
    return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0, "generate_calls": 0}


def merge_usage(total: dict[str, dict[str, float]], part: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Add ``part`` into ``total`` role by role (in place) and return ``total``.

    Examples:
        >>> merge_usage({"policy": empty_usage()}, {"policy": {"calls": 2}})["policy"]["calls"]
        2
    """
    for role, counts in part.items():
        record = total.setdefault(role, empty_usage())
        for key, value in counts.items():
            record[key] = record.get(key, 0) + value
    return total


def _engine_stats(lm: Any) -> dict[str, Any] | None:
    from cat_dspy.lm.models import engine_of

    engine = engine_of(lm) if lm is not None else None
    return engine.stats if engine is not None else None


@contextmanager
def track_role(usage: dict[str, dict[str, float]], role: str, lm: Any = None) -> Iterator[None]:
    """Record the LM work done inside the block under ``usage[role]``.

    Args:
        usage: The per-role record to add to (mutated).
        role: ``"policy"``, ``"anchor"`` or ``"judge"``.
        lm: The role's LM; when it is backed by the local engine, its batched ``generate`` calls are counted.
            Stages must not overlap on a shared engine for that count to be per role.
    """
    before = _engine_stats(lm)
    start = time.perf_counter()
    with dspy.track_usage() as tracker:
        try:
            yield
        finally:
            record = usage.setdefault(role, empty_usage())
            record["seconds"] += time.perf_counter() - start
            for key, value in tracker_totals(tracker).items():
                record[key] += value
            after = _engine_stats(lm)
            if before is not None and after is not None:
                record["generate_calls"] += after["generate_calls"] - before["generate_calls"]


def compute_summary(usage: dict[str, dict[str, float]], cache_hits: dict[str, int] | None = None) -> list[str]:
    """A person's view of ``usage``: one line per role (LM calls, tokens, seconds), then the total. Calls answered
    from DSPy's cache count as calls and are named as such (they reach no model and cost no tokens).

    Args:
        usage: Per-role records (:func:`track_role`).
        cache_hits: Calls per role that DSPy answered from its cache (not in ``usage``: the usage tracker records
            only the calls that reached a model).

    Examples:
        >>> usage = {"policy": {"calls": 4, "prompt_tokens": 276, "completion_tokens": 192, "seconds": 7.46},
        ...          "anchor": {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.01}}
        >>> print("\\n".join(compute_summary(usage, {"anchor": 1})))
        policy  4 calls                      276 prompt + 192 completion tokens    7.5 s
        anchor  1 call (1 from DSPy's cache)     0 prompt +   0 completion tokens    0.0 s
        total   5 calls (1 from DSPy's cache)  276 prompt + 192 completion tokens    7.5 s
    """
    cache_hits = cache_hits or {}
    rows = []
    totals = {"calls": 0, "hits": 0, "prompt": 0, "completion": 0, "seconds": 0.0}
    for role, counts in usage.items():
        row = {"calls": int(counts.get("calls", 0)), "hits": int(cache_hits.get(role, 0)),
               "prompt": int(counts.get("prompt_tokens", 0)), "completion": int(counts.get("completion_tokens", 0)),
               "seconds": float(counts.get("seconds", 0.0))}
        rows.append((role, row))
        for key, value in row.items():
            totals[key] += value
    rows.append(("total", totals))

    def calls(row: dict[str, Any]) -> str:
        answered = row["calls"] + row["hits"]
        hits = f" ({row['hits']} from DSPy's cache)" if row["hits"] else ""
        return f"{answered} call{'s' * (answered != 1)}{hits}"

    width = max(len(calls(row)) for _, row in rows)
    digits = max(len(str(row[key])) for _, row in rows for key in ("prompt", "completion"))
    return [f"{role:<7} {calls(row):<{width}}  {row['prompt']:>{digits}} prompt + {row['completion']:>{digits}} "
            f"completion tokens  {row['seconds']:>6.1f} s" for role, row in rows]
