"""CaT for a non-verifiable question: synthesis → self-proposed rubric → an independent judge scores each rollout.

Run: python programs/rubric_cat.py "How should I treat a mild sprained ankle?" --g 2
"""

from __future__ import annotations

import argparse

from cat_dspy import CaT, make_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--g", type=int, default=2)
    parser.add_argument("--policy", default="local")
    parser.add_argument("--anchor", default="local")
    parser.add_argument("--judge", default="local")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--per-criterion", action="store_true", help="one judge call per criterion (paper form)")
    args = parser.parse_args()

    cat = CaT(
        g=args.g,
        mode="rubric",
        policy=make_lm(args.policy, temperature=1.0, max_tokens=args.max_tokens),
        anchor=make_lm(args.anchor, temperature=0.7, max_tokens=args.max_tokens),
        judge=make_lm(args.judge, temperature=0.0, max_tokens=args.max_tokens),
        per_criterion=args.per_criterion,
        length_limit=750,  # the paper's HealthBench anti-hacking penalty
    )
    pred = cat(question=args.question)
    print("rubric:")
    for i, criterion in enumerate(pred.rubric, 1):
        print(f"  {i}. {criterion}")
    for i, (verdicts, reward) in enumerate(zip(pred.verdicts, pred.rewards, strict=True), 1):
        print(f"rollout {i}: {''.join('✓' if v else '✗' for v in verdicts)} reward={reward:.2f}")
    print(f"failures: {pred.failures or 'none'}")


if __name__ == "__main__":
    main()
