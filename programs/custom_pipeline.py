"""Compose CaT's steps by hand: reuse your own rollouts, synthesize twice (blind and question-aware), compare.

This is the shape of a research script: the modules are ordinary DSPy modules, so they take rollouts from
anywhere (a dataset of model outputs, TRL's GRPO group, another system) and plug into DSPy optimizers.

Run: python programs/custom_pipeline.py
"""

from __future__ import annotations

import dspy

from cat_dspy import Rollout, Synthesize, make_lm
from cat_dspy.scoring.extraction import extract_answer
from cat_dspy.scoring.rewards import majority_answer, verifiable_reward
from cat_dspy.signatures import Solve

QUESTION = "Tom has 3 boxes with 12 apples each. He gives away 10 apples. How many apples are left?"


def main() -> None:
    policy = make_lm("local", temperature=1.0, max_tokens=128)
    anchor = make_lm("local", temperature=0.7, max_tokens=128)

    with dspy.track_usage() as usage:
        rollouts = Rollout(g=4, signature=Solve, lm=policy)(question=QUESTION).rollouts
        blind = Synthesize(lm=anchor)(rollouts=rollouts)
        aware = Synthesize(question_aware=True, lm=anchor)(rollouts=rollouts, question=QUESTION)

    answers = [extract_answer(r) for r in rollouts]
    majority, size, _ = majority_answer(answers)
    print(f"rollout answers: {answers}  majority: {majority!r} ({size}/{len(answers)})")
    print(f"question-blind reference: {blind.answer!r}   question-aware reference: {aware.answer!r}")
    print("rewards vs blind reference:", [verifiable_reward(a, blind.answer) for a in answers])
    print("tokens:", usage.get_total_tokens())


if __name__ == "__main__":
    main()
