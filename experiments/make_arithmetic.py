"""Write a generated easy-arithmetic set (train/test JSONL) for label-free CaT-RL of small models.

The embedded 135M model scores ~0% on GSM8K, which leaves GRPO no signal to amplify; one- and two-digit
additions and subtractions sit in its range. Items are generated (no dataset copied) and seeded. Each unordered
operand pair {a, b} is used by at most one question of the whole set, so train and test are disjoint up to
commutativity and operator: "3 + 5" in test keeps "5 + 3", "3 + 5" and "5 - 3" out of train.

Run: python experiments/make_arithmetic.py --out data/arith --train 256 --test 100 --seed 0

(Before this rule, the generator kept only the question strings apart: the set behind the CaT-RL numbers in
experiments/TRAINING.md, ``--train 120 --test 100 --low 1 --high 12 --seed 0``, shares 34 of its 100 test questions
with training up to commutativity; ``git show 4d01308:experiments/make_arithmetic.py`` regenerates it.)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def operand_pair(question: str) -> frozenset[int]:
    """The unordered operands of a generated question.

    >>> operand_pair("What is 12 - 5?") == operand_pair("What is 5 + 12?") == frozenset({5, 12})
    True
    """
    words = question.removeprefix("What is ").removesuffix("?").split()
    return frozenset((int(words[0]), int(words[2])))


def make_items(n: int, rng: random.Random, used: set[frozenset[int]], low: int = 2, high: int = 40) -> list[dict]:
    """``n`` questions ``What is a + b?`` / ``a - b`` (operands in [low, high]) with answers, each on an unordered
    operand pair not in ``used`` (which gains them).

    Raises:
        ValueError: Fewer than ``n`` unused pairs are left in [low, high].
    """
    free = (high - low + 1) * (high - low + 2) // 2 - len(used)
    if n > free:
        raise ValueError(f"{n} questions need {n} unused operand pairs; [{low}, {high}] has {free} left")
    items = []
    while len(items) < n:
        a, b = rng.randint(low, high), rng.randint(low, high)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        if (pair := frozenset((a, b))) in used:
            continue
        used.add(pair)
        items.append({"question": f"What is {a} {op} {b}?", "answer": str(a + b if op == "+" else a - b)})
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
    rng, used = random.Random(args.seed), set()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("test", args.test), ("train", args.train)):
        rows = make_items(n, rng, used, args.low, args.high)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / split}.jsonl: {len(rows)} items")


if __name__ == "__main__":
    main()
