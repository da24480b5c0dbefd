"""CaT-SFT end to end on CPU: ``cat-dspy sft`` on the smoke recipe (the embedded model as policy and anchor), then a
rerun that reuses every cached reference (no new rollout or anchor call) and resumes from the last checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from components import components_required, missing_component

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "experiments" / "recipes" / "sft_smoke_cpu.yaml"


def test_sft_smoke_recipe_synthesizes_trains_logs_and_reuses_references(tmp_path, cat_dspy_cli):
    import mlflow
    from transformers.utils import is_peft_available

    if not is_peft_available() and components_required():  # without peft it checks the full fine-tuning fallback
        missing_component("peft")

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a, b in ((2, 3), (4, 1), (6, 2), (3, 5))))
    out = tmp_path / "out"
    cmd = ["sft", "--config", RECIPE, "--dataset_name", data, "--output_dir", out]
    cat_dspy_cli(*cmd)  # the test's DSPy cache is in memory: no completion from earlier runs
    store = out / "references.jsonl"
    records = [json.loads(line) for line in store.read_text().splitlines()]
    assert len(records) == 4 and all(len(r["rollouts"]) == 2 and r["usage"]["anchor"]["calls"] == 1 for r in records)
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2

    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("cat-dspy-sft")
    (first,) = client.search_runs([experiment.experiment_id])
    params = first.data.params
    assert first.info.status == "FINISHED" and params["sft.references_new"] == "4"
    assert int(params["sft.train_examples"]) == sum(r["usable"] for r in records) > 0
    # LoRA (the paper's rank 32) where peft is installed (`make install` installs it): a few percent of the weights
    # train; without peft, full fine-tuning, noted
    share = first.data.metrics["sft/trainable_share"]
    if is_peft_available():
        assert params["sft.tuning"] == "LoRA rank 32" and 0 < share < 0.2, (params["sft.tuning"], share)
    else:
        assert "peft not installed" in params["sft.tuning"] and share == 1.0
    assert "train_loss" in first.data.metrics and first.data.metrics["sft/references_new"] == 4.0
    before = store.read_bytes()

    # a rerun (2 more steps) reuses all 4 references, calls no LM for them, and resumes from checkpoint-2
    cat_dspy_cli(*cmd, "--max_steps", "3", "--save_steps", "3")
    assert store.read_bytes() == before
    second = next(r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id != first.info.run_id)
    assert (second.data.params["sft.references_new"], second.data.params["sft.references_cached"]) == ("0", "4")
    assert second.data.params["sft.resumed_from"].endswith("checkpoint-2")
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
