"""CaT-RL end to end on CPU: ``cat-dspy train`` on the smoke recipe, resume, and TRL's own CLI (a process of its
own) with ``cat_reward``.

Slow (GRPO steps of the embedded model on CPU: about a minute per step on 2 cores, more under load).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "experiments" / "recipes" / "cpu_smoke.yaml"
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "CUDA_VISIBLE_DEVICES": "", **env}
    done = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    return done


def test_cpu_smoke_recipe_trains_checkpoints_logs_and_resumes(tmp_path, tiny_gsm8k, cat_dspy_cli):
    """The smoke recipe (``dataset_name: gsm8k``, one step a run), on a generated GSM8K-format train split; the
    restart is a second ``main()`` in the same process, as a notebook would run it."""
    import mlflow

    out = tmp_path / "out"
    data = ["--data_dir", str(tiny_gsm8k), "--max_completion_length", "16", "--anchor_max_tokens", "24"]  # short
    cat_dspy_cli("train", "--config", RECIPE, "--output_dir", out, "--max_steps", "1", "--save_steps", "1", *data)
    assert (out / "checkpoint-1" / "model.safetensors").exists()
    assert json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1

    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("cat-dspy-train")
    (first,) = client.search_runs([experiment.experiment_id])
    assert first.info.status == "FINISHED"
    metrics = first.data.metrics
    assert "rewards/cat_reward/mean" in metrics and "frac_reward_zero_std" in metrics
    for name in ("cat/synthesis_extracted", "cat/invalid_groups", "cat/zero_spread_groups",
                 "cat/length_penalty_hits", "cat/reward_seconds"):
        assert name in metrics, name
        assert len(client.get_metric_history(first.info.run_id, name)) == 1  # logged at the step
    assert first.data.params["mode"] == "verifiable" and first.data.params["anchor"] == "local"
    artifacts = [a.path for a in client.list_artifacts(first.info.run_id, "cat/train")]
    assert len(artifacts) == 1  # the references of the step

    # a restart with a higher step budget resumes from checkpoint-1 instead of starting over
    cat_dspy_cli("train", "--config", RECIPE, "--output_dir", out, "--max_steps", "2", "--save_steps", "2", *data)
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    second = next(r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id != first.info.run_id)
    assert second.data.params["cat.resumed_from"].endswith("checkpoint-1")
    assert len(client.get_metric_history(second.info.run_id, "rewards/cat_reward/mean")) == 1  # only step 2


def test_trl_cli_uses_the_env_configured_cat_reward(tmp_path, tiny_llama):
    """``trl grpo`` trains (a tiny random policy: TRL's wiring is the point) with ``cat_reward`` configured from the
    environment, the embedded model as its anchor."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {a}? End with \\boxed{{answer}}."}]}
            for a in range(2, 6)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = run(
        [str(BIN / "trl"), "grpo", "--model_name_or_path", str(tiny_llama), "--dataset_name", str(data),
         "--reward_funcs", "cat_dspy.rewards.cat_reward", "--num_generations", "4",
         "--per_device_train_batch_size", "4", "--max_completion_length", "16", "--max_steps", "1",
         "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none",
         "--logging_steps", "1", "--save_strategy", "no", "--output_dir", str(tmp_path / "out")],
        cwd=tmp_path, CAT_ANCHOR="local", CAT_ANCHOR_MAX_TOKENS="16",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    logs = done.stdout + done.stderr
    assert "'rewards/cat_reward/mean'" in logs and "'cat/synthesis_extracted'" in logs
    assert (tmp_path / "out" / "model.safetensors").exists()
