"""Leak-free splits: HealthBench's held-out ids (what `eval` grades) never reach a training or validation recipe,
training on a graded split needs the named TTRL option, and generated arithmetic keeps train and test apart as
unordered operand pairs."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cat_dspy.datasets import DATASETS, HEALTHBENCH_HELD_OUT, DataError, check_training_split, held_out, load_dataset

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "experiments" / "recipes"
HEALTHBENCH_RECIPES = sorted(p.stem for p in RECIPES.glob("*healthbench*.yaml") if not p.stem.startswith("eval-"))
SFT_FLAGS = ["--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false"]  # the GPU recipes on CPU
GPU_FLAGS = [*SFT_FLAGS, "--use_vllm", "false"]  # GRPO recipes also generate with vLLM


def write_healthbench(root: Path, n: int, seed: int = 0, order_seed: int | None = None, keep: float = 1.0) -> list[str]:
    """A HealthBench-format file of ``n`` generated conversations (``keep``: a random share of them, shuffled with
    ``order_seed``), at ``root/healthbench/healthbench_eval.jsonl``; returns the prompt ids written, in file order."""
    rng = random.Random(seed)
    records = [{"prompt": [{"role": "user", "content": f"Question {k} about sleep?"}],
                "prompt_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "rubrics": [{"criterion": "Advises a routine.", "points": 5, "tags": ["axis:accuracy"]}],
                "example_tags": ["theme:hedging"], "ideal_completions_data": None, "canary": "x"} for k in range(n)]
    if order_seed is not None:
        records = random.Random(order_seed).sample(records, int(len(records) * keep))
    path = root / "healthbench" / "healthbench_eval.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return [r["prompt_id"] for r in records]


def ids(name: str, split: str | None, data_dir: Path) -> set[str]:
    return {item.id for item in load_dataset(name, split=split, data_dir=data_dir)}


def test_healthbench_test_and_train_are_disjoint_by_id_and_eval_defaults_to_test(tmp_path: Path) -> None:
    written = write_healthbench(tmp_path, 400)
    test, train, whole = (ids("healthbench", s, tmp_path) for s in ("test", "train", "all"))
    assert not test & train and test | train == whole == set(written)
    assert 20 <= len(test) <= 60  # 10% of 400 = 40, sd 6
    assert ids("healthbench", None, tmp_path) == test  # what `cat-dspy eval --dataset healthbench` grades
    assert DATASETS["healthbench"].default_split == "test" and HEALTHBENCH_HELD_OUT == 0.1
    # By id alone: another order, a subset of the records, the same decision for every id.
    write_healthbench(tmp_path, 400, order_seed=1, keep=0.5)
    assert ids("healthbench", "test", tmp_path) == test & ids("healthbench", "all", tmp_path)
    assert all(held_out(i, 0.1) for i in test) and not any(held_out(i, 0.1) for i in train)


def build(recipe: str, data_dir: Path, *overrides: str):
    from cat_dspy.rl import sft, train
    from cat_dspy.rl.train import build_datasets

    is_sft = recipe.endswith("_sft")  # CaT-SFT has its own recipe dataclasses (no vLLM generation)
    make_parser = sft.make_parser if is_sft else train.make_parser
    flags = SFT_FLAGS if is_sft else GPU_FLAGS
    argv = ["--config", str(RECIPES / f"{recipe}.yaml"), "--data_dir", str(data_dir), *flags, *overrides]
    script_args, training_args, _ = make_parser().parse_args_and_config(argv)
    return build_datasets(script_args, training_args)


@pytest.mark.parametrize("recipe", HEALTHBENCH_RECIPES)
def test_no_healthbench_recipe_trains_or_validates_on_the_evaluated_ids(recipe: str, tmp_path: Path) -> None:
    write_healthbench(tmp_path, 400)
    train, validation = build(recipe, tmp_path)
    graded = ids("healthbench", None, tmp_path)
    assert validation is not None and len(validation) == 48
    assert not set(train["id"]) & graded and not set(validation["id"]) & graded
    assert not set(train["id"]) & set(validation["id"])
    assert len(train) + len(validation) + len(graded) == 400


@pytest.mark.needs_data("healthbench")
def test_real_healthbench_split_is_disjoint(data_dir: Path) -> None:
    test, train, whole = (ids("healthbench", s, data_dir) for s in ("test", "train", "all"))
    assert not test & train and test | train == whole and len(whole) == 450
    assert (len(test), len(train)) == (38, 412)  # documented in experiments/README.md
    recipe_train, validation = build(HEALTHBENCH_RECIPES[0], data_dir)
    assert not (set(recipe_train["id"]) | set(validation["id"])) & test


def test_training_on_a_graded_split_needs_the_named_ttrl_option(tmp_path: Path) -> None:
    write_healthbench(tmp_path, 50)
    with pytest.raises(DataError, match=r"healthbench split 'test'.*use split 'train'.*ttrl: true"):
        build(HEALTHBENCH_RECIPES[0], tmp_path, "--dataset_train_split", "test")
    with pytest.raises(DataError, match="validating on healthbench split 'test'"):
        build(HEALTHBENCH_RECIPES[0], tmp_path, "--holdout", "0")
    with pytest.raises(DataError, match="training on gsm8k split 'test'"):
        check_training_split("gsm8k", "test")
    check_training_split("gsm8k", "test", validation=True)  # monitoring label metrics on GSM8K test stays possible
    from cat_dspy.rl.train import make_parser

    for recipe in sorted(p.stem for p in RECIPES.glob("*_math500.yaml")):  # the paper's setting, named
        script_args, _, _ = make_parser().parse_args_and_config(["--config", str(RECIPES / f"{recipe}.yaml"),
                                                                  *GPU_FLAGS])
        assert script_args.ttrl and script_args.dataset_train_split == "test"
        with pytest.raises(DataError, match="math500 split 'test'"):
            check_training_split(script_args.dataset_name, script_args.dataset_train_split)


def test_generated_arithmetic_train_and_test_share_no_operand_pair(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        from make_arithmetic import make_items, operand_pair, overlap
    finally:
        sys.path.remove(str(REPO / "experiments"))
    out = tmp_path / "arith"
    subprocess.run([sys.executable, str(REPO / "experiments" / "make_arithmetic.py"), "--out", str(out),
                    "--train", "120", "--test", "100", "--low", "1", "--high", "21"], check=True, capture_output=True)
    splits = {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()]
              for s in ("train", "test")}
    assert [len(splits[s]) for s in ("train", "test")] == [120, 100]
    pairs = {s: [operand_pair(r["question"]) for r in rows] for s, rows in splits.items()}
    assert not set(pairs["train"]) & set(pairs["test"])  # "3 + 5" in test: no "5 + 3", "3 + 5" or "5 - 3" in train
    assert len(set(pairs["train"])) == 120 and len(set(pairs["test"])) == 100
    assert overlap(splits["train"], splits["test"]) == {"test": 100, "same_question": 0, "up_to_commutativity": 0,
                                                        "same_operand_pair": 0}
    check = subprocess.run([sys.executable, str(REPO / "experiments" / "make_arithmetic.py"), "--check", str(out)],
                           check=True, capture_output=True, text=True)
    assert json.loads(check.stdout)["same_operand_pair"] == 0
    for row in splits["train"] + splits["test"]:
        a, op, b = row["question"].removeprefix("What is ").removesuffix("?").split()
        assert row["answer"] == str(int(a) + int(b) if op == "+" else int(a) - int(b)) and int(row["answer"]) >= 0
    with pytest.raises(ValueError, match="78 left"):  # operands 1-12 hold 78 pairs: 220 questions cannot be disjoint
        make_items(220, random.Random(0), set(), 1, 12)
