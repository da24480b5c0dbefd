"""Optimize your own DSPy program without labels: CaT's reference is the metric (Compute as Teacher for prompts).

``ShortAnswer`` is a user's program; ``main`` builds the CaT metric on a few unlabelled questions (G samples of the
program as it is, one question-blind synthesis by the frozen anchor per question), compiles the program with
``BootstrapFewShot`` and saves it. The same from the command line:
``cat-dspy optimize --target policy --metric cat --module programs/policy_program.py:ShortAnswer --dataset Q.jsonl``.

Run: python programs/policy_program.py [OUT.json]   (the embedded model on CPU: about a minute)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import dspy

from cat_dspy import FreeTextAdapter, make_lm
from cat_dspy.optimization.label_free import cat_metric


class ShortAnswer(dspy.Module):
    """A user's program: one free-text answer (the free-text adapter, so a 135M model needs no field markers)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict(dspy.Signature("question -> response", "Answer the question briefly."))

    def forward(self, question: str) -> dspy.Prediction:
        with dspy.context(adapter=FreeTextAdapter()):
            return self.answer(question=question)


def main(out: str = "outputs/programs/short-answer.json", lms: dict[str, Any] | None = None) -> dspy.Module:
    lms = lms or {"policy": make_lm("local", temperature=0.7, max_tokens=48),
                  "anchor": make_lm("local", temperature=0.7, max_tokens=64)}
    questions = [dspy.Example(question=f"What is {a} + {b}?").with_inputs("question")
                 for a, b in ((3, 4), (12, 5), (9, 9), (7, 15), (14, 3), (6, 11), (8, 2), (5, 13))]  # no labels
    metric = cat_metric(ShortAnswer(), questions, policy=lms["policy"], anchor=lms["anchor"], g=4,
                        extraction="flexible")
    optimizer = dspy.BootstrapFewShot(metric=metric, metric_threshold=1.0, max_bootstrapped_demos=2,
                                      max_labeled_demos=0)
    with dspy.context(lm=lms["policy"]):  # the program's LM (dspy.configure(lm=...) in a script of your own)
        optimized = optimizer.compile(ShortAnswer(), trainset=questions)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    optimized.save(out)
    print(f"{len(optimized.answer.demos)} demos the CaT reference agreed with; saved to {out}")
    return optimized


if __name__ == "__main__":
    main(*sys.argv[1:2])
