r"""Answer-checking agreement on a hand-written case table: our grader next to plain math-verify.

For each case of :data:`benchmarks.equivalence_cases.CASES` (reference, response, expected verdict), our grader
decides ``equivalent(reference, extract_answer(response))``; the peer is math-verify used as its README says,
``verify(parse("$" + reference + "$"), parse(response))`` on the raw texts. The script prints the agreement of each
with the expected verdicts, per category and in total, then lists every disagreement.

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

from benchmarks.equivalence_cases import CASES
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
    """Print agreement per category (ours vs math-verify) and every disagreement; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of the table")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # math-verify warns about disabled timeouts on every call
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # cases, ours agree, math-verify agree
    misses: list[str] = []
    for case in CASES:
        cat, ref, resp, expected = case[:4]
        mode = case[4] if len(case) > 4 else "symbolic"
        got, peer = ours(ref, resp, mode), math_verify(ref, resp)
        row = per_cat[cat]
        row[0] += 1
        row[1] += got == expected
        row[2] += peer == expected
        for who, verdict in (("ours", got), ("math-verify", peer)):
            if verdict != expected:
                extracted = extract_answer(resp) if who == "ours" else ""
                misses.append(f"  [{who:11}] {cat:14} expected {expected!s:5} got {verdict!s:5} ref={ref!r} "
                              f"response={resp!r}" + (f" extracted={extracted!r}" if who == "ours" else "")
                              + (f" mode={mode}" if mode != "symbolic" else ""))
    total = [sum(r[i] for r in per_cat.values()) for i in range(3)]
    if args.json:
        print(json.dumps({"categories": {c: dict(zip(("cases", "ours", "math_verify"), r, strict=True))
                                         for c, r in per_cat.items()},
                          "total": dict(zip(("cases", "ours", "math_verify"), total, strict=True))}, indent=1))
        return 0
    print(f"{'category':16} {'cases':>5}  {'ours':>11}  {'math-verify':>11}")
    for cat, (n, a, p) in [*per_cat.items(), ("TOTAL", total)]:
        print(f"{cat:16} {n:5d}  {a:4d} ({a / n:4.0%})  {p:4d} ({p / n:4.0%})")
    print(f"\ndisagreements with the expected verdict ({len(misses)}):")
    print("\n".join(misses) if misses else "  none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
