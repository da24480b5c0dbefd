r"""Answer-checking agreement on a hand-written case table: our grader next to plain math-verify.

For each case of :data:`benchmarks.equivalence_cases.CASES` (reference, response, expected verdict), our grader
decides ``equivalent(reference, extract_answer(response))``; the peer is math-verify used as its README says,
``verify(parse("$" + reference + "$"), parse(response))`` on the raw texts. The script prints the agreement of each
with the expected verdicts, per category, per ``written`` group (cases written after the rule they test, which the
rules were fitted to; cases written before being run against the rules; regressions a held-out table found) and in
total, then lists every disagreement. Agreement on the "after" group is agreement with the rules' own examples;
the "before" group was not used to shape the rules (but for the two cases that found bugs), and the "held-out"
regressions all disagreed until their fixes, written after them, so they now check those fixes.

Run (from the repository root): ``python benchmarks/equivalence.py`` (about 10 s; ``--json`` for a machine-readable
summary).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.equivalence_cases import CASES, WRITTEN
from cat_dspy.scoring.equivalence import equivalent
from cat_dspy.scoring.extraction import extract_answer


def ours(reference: str, response: str, mode: str = "symbolic") -> bool:
    """Our verdict: the extracted answer of ``response`` against ``reference``."""
    return equivalent(reference, extract_answer(response), mode=mode)


def math_verify(reference: str, response: str) -> bool | None:
    """Plain math-verify on the raw texts (None when it raised)."""
    from math_verify import parse, verify

    try:
        return bool(verify(parse("$" + reference + "$"), parse(response)))
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    """Print agreement per category and per ``written`` group (ours vs math-verify) and every disagreement; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of the table")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # math-verify warns about disabled timeouts on every call
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # cases, ours agree, math-verify agree
    per_written: dict[str, list[int]] = {w: [0, 0, 0] for w in WRITTEN}
    misses: list[str] = []
    for case in CASES:
        got, peer = ours(case.reference, case.response, case.mode), math_verify(case.reference, case.response)
        for row in (per_cat[case.category], per_written[case.written]):
            row[0] += 1
            row[1] += got == case.expected
            row[2] += peer == case.expected
        for who, verdict in (("ours", got), ("math-verify", peer)):
            if verdict != case.expected:
                extracted = extract_answer(case.response) if who == "ours" else ""
                misses.append(f"  [{who:11}] {case.category:14} {case.written:8} expected {case.expected!s:5} got "
                              f"{verdict!s:5} ref={case.reference!r} response={case.response!r}"
                              + (f" extracted={extracted!r}" if who == "ours" else "")
                              + (f" mode={case.mode}" if case.mode != "symbolic" else ""))
    total = [sum(r[i] for r in per_cat.values()) for i in range(3)]
    keys = ("cases", "ours", "math_verify")
    if args.json:
        print(json.dumps({"categories": {c: dict(zip(keys, r, strict=True)) for c, r in per_cat.items()},
                          "written": {w: dict(zip(keys, r, strict=True)) for w, r in per_written.items()},
                          "total": dict(zip(keys, total, strict=True))}, indent=1))
        return 0
    rows = [*per_cat.items(), ("", None), *((f"written: {w}", r) for w, r in per_written.items()), ("", None),
            ("TOTAL", total)]
    print(f"{'category':18} {'cases':>5}  {'ours':>11}  {'math-verify':>11}")
    for name, row in rows:
        if row is None:
            print()
            continue
        n, a, p = row
        print(f"{name:18} {n:5d}  {a:4d} ({a / n:4.0%})  {p:4d} ({p / n:4.0%})" if n else f"{name:18} {n:5d}")
    print(f"\ndisagreements with the expected verdict ({len(misses)}):")
    print("\n".join(misses) if misses else "  none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
