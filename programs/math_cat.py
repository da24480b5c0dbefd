"""Test-time CaT on a math question: G rollouts from the policy, one question-blind synthesis, the reference wins.

Run: python programs/math_cat.py "A shop sells pens at 3 for $2. How much do 12 pens cost?" --g 4
Swap any role for another backend by model string, e.g. --anchor openai/gpt-4o-mini.
"""

from __future__ import annotations

import argparse

from cat_dspy import CaT, make_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--g", type=int, default=4)
    parser.add_argument("--policy", default="local")
    parser.add_argument("--anchor", default="local")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    policy = make_lm(args.policy, temperature=1.0, max_tokens=args.max_tokens)
    anchor = make_lm(args.anchor, temperature=0.7, max_tokens=args.max_tokens)
    cat = CaT(g=args.g, mode="verifiable", policy=policy, anchor=anchor)

    pred = cat(question=args.question)
    for i, (answer, reward) in enumerate(zip(pred.answers, pred.rewards, strict=True), 1):
        print(f"rollout {i}: answer={answer!r} reward={reward}")
    print(f"\nreference answer: {pred.reference_answer!r}\n\n{pred.reference}")


if __name__ == "__main__":
    main()
