"""Write a generated easy-arithmetic set (train/test JSONL) for label-free CaT-RL of small models.

The embedded 135M model scores ~0% on GSM8K, which leaves GRPO no signal to amplify; one- and two-digit
additions and subtractions sit in its range. Items are generated (no dataset copied) and seeded. Each unordered
operand pair {a, b} is used by at most one question of the whole set, so train and test are disjoint up to
commutativity and operator: "3 + 5" in test keeps "5 + 3", "3 + 5" and "5 - 3" out of train.

Run: python experiments/make_arithmetic.py --out data/arith --train 256 --test 100 --seed 0
Check a set: python experiments/make_arithmetic.py --check data/arith (test questions found in train)
A competence level (the signal sweep, ``experiments/signals.py``): python experiments/make_arithmetic.py --level 3
--test 40 --out data/arith-L3 (one test set, :data:`LEVELS`)

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


def overlap(train: list[dict], test: list[dict]) -> dict[str, int]:
    """How many ``test`` questions appear in ``train``: as the same string, up to commutativity (same operator and
    unordered operands), and by unordered operands alone (either operator).

    >>> overlap([{"question": "What is 5 + 3?"}], [{"question": q} for q in ("What is 3 + 5?", "What is 5 - 3?")])
    {'test': 2, 'same_question': 0, 'up_to_commutativity': 1, 'same_operand_pair': 2}
    """

    def op(question: str) -> str:
        return question.split()[3]

    questions = {r["question"] for r in train}
    keyed = {(op(q), operand_pair(q)) for q in questions}
    pairs = {operand_pair(q) for q in questions}
    qs = [r["question"] for r in test]
    return {"test": len(qs), "same_question": sum(q in questions for q in qs),
            "up_to_commutativity": sum((op(q), operand_pair(q)) in keyed for q in qs),
            "same_operand_pair": sum(operand_pair(q) in pairs for q in qs)}


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


LEVELS = {
    0: ("1-digit addition to 5 + 5, the number alone asked for", (1, 5), (1, 5), "+"),
    1: ("1-digit addition", (1, 9), (1, 9), "+"),
    2: ("2-digit addition and subtraction", (10, 99), (10, 99), "+-"),
    3: ("2-digit times 1-digit multiplication", (12, 99), (3, 9), "*"),
    4: ("3-digit multiplication", (100, 999), (100, 999), "*"),
}
"""The competence sweep's levels (easy to hard for the embedded 135M model): name, operand ranges, operators."""
INSTRUCTION = {0: " Reply with the number only."}
"""What a level's question asks beyond the sum: level 0 asks for the number alone (the 135M model otherwise rambles
on past its first equation). In the committed sweep it cut the rollouts at the 64-token cap from 60 % (L1) to 40 %,
not the errors: 0.219 of L0's rollouts right, 0.234 of L1's (``experiments/results/signals/summary.json``)."""


def level_items(level: int, n: int, rng: random.Random) -> list[dict]:
    """``n`` distinct questions of a :data:`LEVELS` level (``What is a * b?``; subtraction never negative).

    >>> [r["question"] for r in level_items(3, 2, random.Random(0))]
    ['What is 61 * 9?', 'What is 17 * 5?']

    Raises:
        ValueError: The level has fewer than ``n`` distinct questions.
    """
    _, (lo_a, hi_a), (lo_b, hi_b), ops = LEVELS[level]
    space = (hi_a - lo_a + 1) * (hi_b - lo_b + 1) * len(ops)
    if n > space // 2:
        raise ValueError(f"level {level} has about {space} questions; ask for at most half of them, not {n}")
    seen, items = set(), []
    while len(items) < n:
        a, b, op = rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b), rng.choice(ops)
        if op == "-" and b > a:
            a, b = b, a
        question = f"What is {a} {op} {b}?{INSTRUCTION.get(level, '')}"
        if question in seen:
            continue
        seen.add(question)
        answer = a + b if op == "+" else a - b if op == "-" else a * b
        items.append({"id": f"L{level}-{len(items)}", "question": question, "answer": str(answer)})
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/arith")
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--low", type=int, default=2, help="smallest operand")
    parser.add_argument("--high", type=int, default=40, help="largest operand")
    parser.add_argument("--check", metavar="DIR", help="print the overlap of DIR/test.jsonl with DIR/train.jsonl")
    parser.add_argument("--level", type=int, choices=sorted(LEVELS), default=None,
                        help="write OUT/test.jsonl of --test questions at this competence level only (no train)")
    args = parser.parse_args()
    if args.level is not None:
        rows = level_items(args.level, args.test, random.Random(f"{args.seed}\0{args.level}"))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / 'test.jsonl'}: {len(rows)} items, level {args.level} ({LEVELS[args.level][0]})")
        return
    if args.check:
        rows = {s: [json.loads(line) for line in (Path(args.check) / f"{s}.jsonl").read_text().splitlines() if line]
                for s in ("train", "test")}
        print(json.dumps(overlap(rows["train"], rows["test"])))
        return
    rng, used = random.Random(args.seed), set()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("test", args.test), ("train", args.train)):
        rows = make_items(n, rng, used, args.low, args.high)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / split}.jsonl: {len(rows)} items")


if __name__ == "__main__":
    main()
