"""CaT-SFT (``cat_dspy.rl.sft``) on scripted policies and anchors: references from G rollouts, cached and resumable
in the crash-safe store, the SFT dataset, LoRA or its fallback, the recipe and the CLI (training itself:
tests/integration/test_sft_embedded.py)."""

from __future__ import annotations

import re
import threading
from collections import Counter
from pathlib import Path

import pytest
from components import require_component

from cat_dspy.jsonl_store import JsonlStore
from cat_dspy.modules.cat import CaT
from cat_dspy.rl.sft import prompt_hash, sft_dataset, sft_target, synthesize_references
from cat_dspy.testing import scripted_lm

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "experiments" / "recipes" / "sft_smoke_cpu.yaml"


def prompts(n: int) -> list:
    return [[{"role": "system", "content": "Solve."}, {"role": "user", "content": f"What is {i} + {i}?"}]
            for i in range(n)]


def setup(fail: set[int] = frozenset(), g: int = 2):
    """A policy answering ``[q<i>] ... \\boxed{2i}`` and an anchor synthesizing from the rollouts it is shown."""
    anchor_calls: Counter = Counter()
    lock = threading.Lock()

    def policy(prompt: str) -> str:
        i = int(re.search(r"What is (\d+) \+", prompt).group(1))
        return f"[q{i}] {i} + {i} = {2 * i}, so \\boxed{{{2 * i}}}"

    def anchor(prompt: str) -> str:
        (i,) = {int(t) for t in re.findall(r"\[q(\d+)\]", prompt)}
        with lock:
            anchor_calls[i] += 1
        if i in fail:
            raise ConnectionError("anchor down")
        if i == 3:
            return "# SUMMARY they disagree\n# UNIFIED RESPONSE\nI cannot tell."  # no answer: unusable
        return f"# SUMMARY all agree\n# UNIFIED RESPONSE\n{i} + {i} = {2 * i}. The answer is $\\boxed{{{2 * i}}}$."

    policy_lm, anchor_lm = scripted_lm(policy), scripted_lm(anchor)
    return CaT(g=g, policy=policy_lm, anchor=anchor_lm), policy_lm, anchor_lm, anchor_calls


def test_one_reference_per_prompt_from_g_rollouts_then_reused(tmp_path):
    cat, policy, _, anchor_calls = setup()
    store = JsonlStore(tmp_path / "references.jsonl", key="key")
    batch = prompts(4)
    made = synthesize_references(cat, batch, store, num_threads=4, ids=["a", "b", "c", "d"])
    assert (made["new"], made["cached"], made["failed"]) == (4, 0, 0)
    assert anchor_calls == {0: 1, 1: 1, 2: 1, 3: 1} and policy.engine_script.calls == 8  # G=2 rollouts each
    record = made["records"][prompt_hash(batch[2])]
    assert record["id"] == "c" and record["reference_answer"] == "4" and record["usable"]
    assert record["target"] == "2 + 2 = 4. The answer is $\\boxed{4}$."  # the UNIFIED RESPONSE only
    assert len(record["rollouts"]) == 2 and record["usage"]["anchor"]["calls"] == 1
    assert "Solve." not in policy.engine_script.prompts[0].split("What is")[-1]  # the question, no system message
    assert not made["records"][prompt_hash(batch[3])]["usable"]

    again_cat, again_policy, _, again_calls = setup()
    again = synthesize_references(again_cat, batch, JsonlStore(store.path, key="key"))
    assert (again["new"], again["cached"]) == (0, 4) and not again_calls and again_policy.engine_script.calls == 0
    assert again["records"] == made["records"]

    dataset, counts = sft_dataset(batch, again["records"])
    assert counts == {"missing": 0, "unusable": 1} and len(dataset) == 3
    assert dataset[0]["prompt"] == batch[0] and dataset[0]["completion"][0]["role"] == "assistant"


def test_failed_calls_are_not_stored_and_are_retried(tmp_path, caplog):
    store = JsonlStore(tmp_path / "references.jsonl", key="key")
    cat, _, _, _ = setup(fail={1})
    made = synthesize_references(cat, prompts(3), store)
    assert (made["new"], made["failed"]) == (2, 1) and "anchor_error" in made["failures"][0]
    assert len(store.records()) == 2 and "retried on the next run" in caplog.text
    dataset, counts = sft_dataset(prompts(3), made["records"])
    assert counts["missing"] == 1 and len(dataset) == 2

    cat, _, _, anchor_calls = setup()
    retry = synthesize_references(cat, prompts(3), store)
    assert (retry["new"], retry["cached"]) == (1, 2) and anchor_calls == {1: 1}  # only the failed prompt


def test_a_store_made_with_other_settings_is_refused(tmp_path):
    store = JsonlStore(tmp_path / "references.jsonl", key="key")
    synthesize_references(setup(g=2)[0], prompts(1), store)
    with pytest.raises(ValueError, match=r"references were made with .*'g': 2.*this recipe asks for .*'g': 4"):
        synthesize_references(setup(g=4)[0], prompts(1), store)


def test_sft_target_keeps_freeform_references_whole():
    assert sft_target("# SUMMARY x\n## Unified Response:\nAnswer 5.", "verifiable") == "Answer 5."
    assert sft_target("No headers, just \\boxed{5}", "verifiable") == "No headers, just \\boxed{5}"
    assert sft_target("# UNIFIED RESPONSE\nRest.", "rubric") == "# UNIFIED RESPONSE\nRest."


def parse(*overrides: str):
    from cat_dspy.rl.sft import make_parser

    return make_parser().parse_args_and_config(["--config", str(RECIPE), *overrides])


def test_smoke_recipe_parses_with_the_anchor_options_and_lora():
    from trl import SFTConfig

    from cat_dspy.config import CaTRewardConfig
    from cat_dspy.rl.sft import CaTSFTConfig

    script_args, args, model_args = parse("--max_steps", "3")
    assert isinstance(args, CaTSFTConfig) and isinstance(args, SFTConfig) and isinstance(args, CaTRewardConfig)
    assert (args.num_generations, args.rollout_max_tokens, args.anchor, args.mode) == (
        2, 24, "local", "verifiable")
    assert args.max_steps == 3 and args.use_cpu and args.report_to == ["mlflow"] and args.lr_scheduler_type == "cosine"
    assert model_args.use_peft and model_args.lora_r == 32  # the paper's LoRA rank
    assert script_args.dataset_name == "data/arith_sft/train.jsonl" and script_args.references_path is None


def test_lora_where_peft_is_installed_else_full_fine_tuning_with_a_note(caplog, monkeypatch):
    import transformers.utils
    from transformers.utils import is_peft_available

    from cat_dspy.rl.sft import peft_config

    _, _, model_args = parse()
    if is_peft_available():  # `make install` installs peft
        config, tuning = peft_config(model_args)
        assert config.r == 32 and config.lora_alpha == 64 and tuning == "LoRA rank 32"
    monkeypatch.setattr(transformers.utils, "is_peft_available", lambda: False)
    config, tuning = peft_config(model_args)
    assert config is None and "peft not installed" in tuning and "full fine-tuning instead" in caplog.text
    _, _, full = parse("--use_peft", "false")
    assert peft_config(full) == (None, "full fine-tuning")


def test_trainable_share_counts_the_weights_training_updates():
    import torch

    from cat_dspy.rl.sft import trainable_share

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))  # 20 + 5 parameters
    assert trainable_share(model) == 1.0
    model[0].requires_grad_(False)
    assert trainable_share(model) == 5 / 25
    peft = require_component("peft")
    lora = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)),
                               peft.LoraConfig(r=2, target_modules=["0"]))
    assert trainable_share(lora) == (2 * 4 + 4 * 2) / (25 + 16)  # the rank-2 adapter A (2x4) + B (4x2) of layer 0


def test_cli_hands_every_argument_to_trl(monkeypatch):
    from cat_dspy import cli
    from cat_dspy.rl import sft

    seen = {}
    monkeypatch.setattr(sft, "main", lambda s, t, m: seen.update(s=s, t=t, m=m))
    assert cli.main(["sft", "--config", str(RECIPE), "--num_generations", "4", "--references_path", "r.jsonl"]) == 0
    assert seen["t"].num_generations == 4 and seen["s"].references_path == "r.jsonl" and seen["m"].lora_r == 32


def test_paper_sft_recipe_parses_with_the_papers_settings():
    from cat_dspy.rl.sft import make_parser

    script_args, args, model_args = make_parser().parse_args_and_config(
        ["--config", str(REPO / "experiments/recipes/qwen3_4b_healthbench_sft.yaml"), "--use_cpu", "true",
         "--bf16", "false", "--gradient_checkpointing", "false"])
    assert (args.num_generations, args.learning_rate, args.lr_scheduler_type, model_args.lora_r) == (
        8, 5e-5, "cosine", 32)  # cat-paper.md §2.2
    assert args.per_device_train_batch_size * 4 == 32 and args.mode == "rubric" and args.anchor_api_base
    assert script_args.early_stopping_patience == 3 and args.metric_for_best_model == "eval_loss"
