"""The CaT reward inside a real TRL ``GRPOTrainer`` (tiny random policy, scripted anchor and judge): the ``None``
rewards of a group whose anchor failed reach TRL, which leaves them out of the reward statistics it logs.

Rubric mode, question-aware, so the scripted roles can tell the groups apart and every reward is known in advance
whatever the random policy writes: the anchor fails on question A; on B and C it writes a reference naming the
group, whose rubric (5 criteria) the judge passes 3 of (B: reward 0.6) or 1 of (C: reward 0.2).
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import pytest

from cat_dspy.testing import scripted_lm

PASSED = {"B": 3, "C": 1}  # criteria the judge passes, per group; group A's anchor call fails
QUESTIONS = {tag: f"Question {tag}: how should a mild ankle sprain be treated?" for tag in ("A", "B", "C")}


def anchor_script(prompt: str) -> str:
    if "grading rubric" in prompt:  # ProposeRubric: criteria naming the group of the reference
        tag = re.search(r"Reference of group ([BC])\.", prompt).group(1)
        return "<rubric>\n" + "".join(f"<criterion>Group {tag} criterion {i}.</criterion>\n" for i in range(1, 6)) \
            + "</rubric>"
    tags = re.findall(r"Question ([ABC]):", prompt)  # Synthesize, question-aware
    assert len(set(tags)) == 1, prompt
    if tags[0] == "A":
        raise ConnectionError("anchor server down")
    return f"Reference of group {tags[0]}. Rest, ice, compression, elevation."


def judge_script(prompt: str) -> str:
    tag = re.search(r"Group ([BC]) criterion 1\.", prompt).group(1)
    return "\n".join(f'<verdict id="{i}">{"yes" if i <= PASSED[tag] else "no"}</verdict>' for i in range(1, 6))


def test_trl_logs_rewards_without_the_groups_whose_anchor_failed(tiny_llama: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from cat_dspy.rl.reward import CaTReward

    reward = CaTReward(scripted_lm(anchor_script), judge=scripted_lm(judge_script), mode="rubric", g=2,
                       question_aware=True, artifacts=False)
    returned: list[list[float | None]] = []
    score = reward.__call__

    class Recorded:  # what the reward handed TRL, call by call
        __name__ = reward.__name__

        def __call__(self, **kwargs):
            returned.append(score(**kwargs))
            return returned[-1]

    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=6, max_completion_length=8,
        max_steps=2, logging_steps=1, learning_rate=1e-6, beta=0.0, use_cpu=True, bf16=False,
        gradient_checkpointing=False, report_to="none", save_strategy="no", seed=0, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=str(tiny_llama), reward_funcs=[Recorded()], args=args,
                          train_dataset=Dataset.from_dict({"prompt": list(QUESTIONS.values())}))
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "rewards/cat_reward/mean" in entry]
    assert len(logs) == 2 and len(returned) == 2  # one reward call, one log line per step
    scored = [0.6, 0.6, 0.2, 0.2]  # B and C; A's two completions are None (TRL: NaN, left out)
    for rewards, log in zip(returned, logs, strict=True):
        assert sorted(r for r in rewards if r is not None) == pytest.approx(sorted(scored))
        assert sum(r is None for r in rewards) == 2
        assert log["rewards/cat_reward/mean"] == pytest.approx(statistics.mean(scored))  # 0.4, not 0.27 (None as 0)
        assert log["rewards/cat_reward/std"] == pytest.approx(statistics.stdev(scored))
        assert log["reward"] == pytest.approx(0.4) and log["reward_std"] == pytest.approx(statistics.stdev(scored))
        # the CaT metrics TRL logged from the reward's log_metric calls
        assert log["cat/invalid_groups"] == 1.0 and log["cat/anchor_errors"] == 1.0 and log["cat/judge_errors"] == 0
        assert log["cat/rubric_size"] == 5.0
        assert log["cat/criterion_pass_rate"] == pytest.approx((3 + 3 + 1 + 1) / 20)
        assert log["cat/zero_spread_groups"] == 1.0  # both scored groups: equal rewards within the group
        assert not any(isinstance(v, float) and math.isnan(v) for v in log.values())
