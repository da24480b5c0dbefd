"""Write a generated easy-arithmetic set (train/test JSONL) for label-free CaT-RL of small models.

The embedded 135M model scores ~0% on GSM8K, which leaves GRPO no signal to amplify; one- and two-digit
additions and subtractions sit in its range. Items are generated (no dataset copied), seeded, disjoint.

Run: python experiments/make_arithmetic.py --out data/arith --train 256 --test 100 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def make_items(n: int, rng: random.Random, seen: set[str], low: int = 2, high: int = 40) -> list[dict]:
    """``n`` new questions ``What is a + b?`` / ``a - b`` (operands in [low, high]) with answers, none in ``seen``."""
    items = []
    while len(items) < n:
        a, b = rng.randint(low, high), rng.randint(low, high)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        question = f"What is {a} {op} {b}?"
        if question in seen:
            continue
        seen.add(question)
        items.append({"question": question, "answer": str(a + b if op == "+" else a - b)})
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/arith")
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--low", type=int, default=2, help="smallest operand")
    parser.add_argument("--high", type=int, default=40, help="largest operand")
    args = parser.parse_args()
    rng, seen = random.Random(args.seed), set()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("test", args.test), ("train", args.train)):
        rows = make_items(n, rng, seen, args.low, args.high)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / split}.jsonl: {len(rows)} items")


if __name__ == "__main__":
    main()
