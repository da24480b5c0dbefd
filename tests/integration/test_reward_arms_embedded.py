"""The comparison rewards on the embedded model: the judge and physician-rubric rewards with SmolLM2 as anchor and
judge (reward calls), and the gold arm through ``cat-dspy train`` (one GRPO step: the answer column reaches the
reward through TRL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_judge_and_physician_rubric_rewards_on_the_embedded_model():
    from cat_dspy.lm.models import make_lm
    from cat_dspy.rewards import JudgeReward, PhysicianRubricReward

    anchor = make_lm("local", temperature=0.7, max_tokens=48)
    judge = make_lm("local", temperature=0.0, max_tokens=8)
    prompts = [[{"role": "user", "content": f"What is {q}?"}] for q in ("3 + 4", "3 + 4", "5 + 5", "5 + 5")]
    completions = ["3 + 4 = 7.", "3 + 4 = 8.", "5 + 5 = 10.", "The answer is 10."]
    reward = JudgeReward(anchor, judge, g=2)
    out = reward(prompts=prompts, completions=completions)
    assert len(out) == 4 and all(r in (0.0, 1.0) for r in out)  # binary; no group failed on the local model
    m = reward.last_metrics
    assert m["judge/invalid_groups"] == 0.0 and 0.0 <= m["judge/equivalent_rate"] <= 1.0
    assert reward.usage["anchor"]["calls"] == 2 and reward.usage["judge"]["calls"] == 4  # one verdict per rollout

    rubric = json.dumps([{"criterion": "Says to rest the ankle.", "points": 5},
                         {"criterion": "Recommends surgery right away.", "points": -5}])
    grader = PhysicianRubricReward(judge, g=2)
    sprain = [{"role": "user", "content": "I sprained my ankle. What should I do?"}]
    out = grader(prompts=[sprain] * 2, completions=["Rest it and use ice.", "Get surgery now."], rubrics=[rubric] * 2)
    assert len(out) == 2 and all(r is not None and 0.0 <= r <= 1.0 for r in out)
    assert grader.last_metrics["physician_rubric/invalid_groups"] == 0.0
    assert grader.usage["judge"]["calls"] == 4  # one call per (response, rubric item), as simple-evals


def train_one_step(cli: Callable[..., str], tmp_path: Path, recipe: str, *flags: object) -> str:
    """``cat-dspy train`` (the ``cat_dspy_cli`` fixture) for one GRPO step of 4 short completions on two labelled
    questions; its log. The reward's wiring through TRL is the point: the policy may be the tiny random model
    (``--model_name_or_path``), the anchor stays the embedded one."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a, b in ((2, 3), (4, 1))))
    return cli("train", "--config", REPO / "experiments/recipes" / recipe, *flags, "--dataset_name", data,
               "--output_dir", tmp_path / "out", "--max_steps", "1", "--per_device_train_batch_size", "4",
               "--max_completion_length", "16", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1")


def test_gold_arm_trains_one_step_with_the_answer_column(tmp_path, cat_dspy_cli, tiny_llama):
    """Also with ``skip_zero_advantage``: the recipe option reaches the trainer, which logs what it left out."""
    logs = train_one_step(cat_dspy_cli, tmp_path, "arith_smollm2_cpu_gold.yaml", "--model_name_or_path", tiny_llama,
                          "--skip_zero_advantage", "true")
    assert "'rewards/gold_reward/mean'" in logs and "'gold/accuracy'" in logs and "'gold/missing_labels': '0'" in logs
    assert "'frac_zero_advantage_skipped'" in logs


def test_min_ppl_reward_labels_with_the_rollout_the_embedded_anchor_finds_likely():
    from cat_dspy.lm.models import make_lm
    from cat_dspy.rewards import MinPPLReward

    anchor = make_lm("local", temperature=0.7, max_tokens=16)
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    completions = ["2 + 3 = 5.", "zebra quantum lattice purple 9 9 ## ok", "The answer is 5."]
    reward = MinPPLReward(anchor, g=3, extraction="flexible")
    out = reward(prompts=[prompt] * 3, completions=completions, answer=["5"] * 3)
    nlls = reward.nlls(reward._rows([prompt] * 3, completions, None, {}))  # what the call scored, read again
    assert all(x is not None and x > 0 for x in nlls) and nlls[1] > max(nlls[0], nlls[2])  # gibberish is unlikely
    assert out == [1.0, 0.0, 1.0]  # the likely rollouts' answer "5" is the label; "9" disagrees
    m = reward.last_metrics
    assert m["min_ppl/invalid_groups"] == 0.0 and m["min_ppl/label_accuracy"] == 1.0
    assert m["min_ppl/reward_accuracy"] == 1.0 and reward.usage["anchor"]["calls"] == 3  # one scored text per rollout


def test_min_ppl_arm_trains_one_step_with_label_metrics(tmp_path, cat_dspy_cli, tiny_llama):
    """The embedded anchor scores the tiny policy's completions after the prompt its chat template rendered."""
    logs = train_one_step(cat_dspy_cli, tmp_path, "arith_smollm2_cpu_majority.yaml", "--reward", "min_ppl",
                          "--label_metrics", "true", "--model_name_or_path", tiny_llama)
    assert "'rewards/min_ppl_reward/mean'" in logs and "'min_ppl/invalid_groups': '0'" in logs
    assert "'min_ppl/reward_accuracy'" in logs and "'min_ppl/label_accuracy'" in logs  # gold read for metrics only
