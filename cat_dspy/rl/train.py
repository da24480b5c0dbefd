"""CaT-RL: GRPO (TRL) with the CaT reward, from one YAML recipe (``cat-dspy train --config RECIPE [--key value]``).

The recipe is parsed by TRL's ``TrlParser`` over three dataclasses, open-r1 style: :class:`CaTScriptArguments`
(data), :class:`CaTGRPOConfig` (TRL's ``GRPOConfig`` plus the CaT options) and TRL's ``ModelConfig``; any field can
be overridden on the command line, and an ``env:`` block sets environment variables. :func:`main` then

1. loads the questions with :func:`cat_dspy.datasets.load_dataset` into a conversational ``prompt`` column (the gold
   ``answer`` is kept in the evaluation set, and with ``label_metrics`` in the training set, for the label metrics
   only: no label-free reward reads it),
2. builds the CaT reward (:class:`cat_dspy.rewards.CaTReward`) with the frozen anchor: by default the initial
   checkpoint (the embedded SmolLM2-135M when ``model_name_or_path`` is unset), loaded once in eval mode, apart from
   the trained model; or a separate server (``anchor: hosted_vllm/...`` + ``anchor_api_base``),
3. trains with ``GRPOTrainer`` (:class:`cat_dspy.rl.trainer.CaTGRPOTrainer`: with ``skip_zero_advantage``, the
   completions of advantage 0 are left out of the loss), resuming from the last checkpoint in ``output_dir`` when
   there is one, and
4. reports to MLflow (``MLFLOW_TRACKING_URI``, default ``sqlite:///mlflow.db``): TRL's metrics, the ``cat/*``
   metrics and the references of every step land in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from transformers.trainer import TRAINER_STATE_NAME
from trl import GRPOConfig, ScriptArguments

from cat_dspy.config import TRL_FIELDS, CaTRewardConfig
from cat_dspy.rl.registry import REWARD_FUNCS

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "cat-dspy-train"


@dataclass
class CaTScriptArguments(ScriptArguments):
    """Where the questions come from (labels are never used for the reward)."""

    dataset_name: str | None = field(
        default="gsm8k",
        metadata={"help": "A cat-dspy dataset (gsm8k, math500, math, aime24, aime25, healthbench) or a JSONL "
                  "file."},
    )
    dataset_limit: int | None = field(default=None, metadata={"help": "Keep the first N training questions."})
    dataset_seed: int | None = field(
        default=None, metadata={"help": "Shuffle the questions with this seed before dataset_limit/holdout."}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Directory of the named datasets (default: $CAT_DSPY_DATA or shared/data)."}
    )
    question_field: str = field(default="question", metadata={"help": "JSONL files: the question field."})
    answer_field: str | None = field(
        default="answer", metadata={"help": "JSONL files: the gold answer field (label metrics; the gold reward)."}
    )
    holdout: int = field(
        default=0,
        metadata={"help": "Hold the last N (shuffled) training questions out of training and evaluate on them."},
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Evaluation dataset (default: dataset_name, split dataset_test_split); used when "
                  "eval_strategy is not 'no' and holdout is 0."},
    )
    eval_limit: int | None = field(default=None, metadata={"help": "Keep the first N evaluation questions."})
    label_metrics: bool = field(
        default=False,
        metadata={"help": "Carry the gold answers in the training set too, for the reward's label metrics while "
                  "training (<reward>/reward_accuracy, <reward>/label_accuracy in MLflow); a label-free reward never "
                  "reads them for its reward."},
    )
    ttrl: bool = field(
        default=False,
        metadata={"help": "Train on a named set's test questions without labels (TTRL: the paper's MATH-500 "
                  "setting); without it, training or validating on the examples `cat-dspy eval` grades is refused."},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System message of every prompt. Default: the Solve instruction (boxed final answer) in "
                  "verifiable mode, none in rubric mode; '' for none."},
    )
    prompt_prefix: str = field(
        default="", metadata={"help": "Text put before every question, e.g. '/no_think ' for Qwen3 (as the paper)."}
    )
    save_final_model: bool = field(default=True, metadata={"help": "Save the final model into output_dir."})
    auto_resume: bool = field(
        default=True,
        metadata={"help": "Resume from the last checkpoint in output_dir when resume_from_checkpoint is unset."},
    )


REWARDS = tuple(REWARD_FUNCS)
"""The rewards a recipe can train with (``reward:``; the keys of :data:`cat_dspy.rl.registry.REWARD_FUNCS`)."""


@dataclass
class CaTGRPOConfig(GRPOConfig, CaTRewardConfig):
    """TRL's ``GRPOConfig`` plus the CaT reward's options (:class:`cat_dspy.config.CaTRewardConfig`) and the
    choice of reward (the CaT reward, or a comparison arm)."""

    reward: str = field(
        default="cat",
        metadata={"choices": list(REWARDS),
                  "help": "The reward: 'cat' (CaT), or a comparison arm: 'majority' (TTRL majority vote, "
                  "label-free), 'judge' (model-as-judge equivalence to the anchor's reference), 'physician_rubric' "
                  "(HealthBench's rubrics graded by the judge), 'random' (the random-reward control), 'min_ppl' (the "
                  "answer of the rollout the anchor finds most likely) or 'gold' (the dataset's answers, supervised "
                  "upper bound). The arms read the CaT options they share (anchor, "
                  "judge, equivalence, extraction, length_limit, ...)."},
    )

    skip_zero_advantage: bool = field(
        default=False,
        metadata={"help": "Leave the completions whose advantage is 0 (every completion of a group whose rewards "
                  "are all equal) out of the loss's forward and backward, the loss rescaled so that the gradient "
                  "is the same in exact arithmetic (cat_dspy.rl.trainer.CaTGRPOTrainer). Needs beta = 0, no "
                  "entropy bonus and no top_entropy_quantile; the step's entropy and clip metrics are then over "
                  "the completions kept."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        CaTRewardConfig.__post_init__(self)


def cat_fields() -> list[str]:
    """The recipe fields :class:`CaTGRPOConfig` adds to ``GRPOConfig``: those of ``CaTRewardConfig``."""
    return [f.name for f in dataclasses.fields(CaTRewardConfig)]


def reward_options(training_args: Any, model_path: str | None) -> dict[str, Any]:
    """The :func:`cat_dspy.rewards.build_reward` options of a recipe (its CaT fields and G)."""
    options = {name: getattr(training_args, name) for name in cat_fields()}
    options |= {option: getattr(training_args, name) for name, option in TRL_FIELDS.items()}
    options["model_name_or_path"] = model_path
    if (options.get("anchor") or "local").startswith("local") and options.get("anchor_device") is None:
        options["anchor_device"] = str(training_args.device)  # this process's device, not always cuda:0
    return options


def default_system_prompt(mode: str) -> str | None:
    """The policy's system message when the recipe sets none: the Solve instruction in verifiable mode."""
    if mode != "verifiable":
        return None
    from cat_dspy.signatures import Solve

    return " ".join(Solve.instructions.split())


def to_prompt(item: Any, system_prompt: str | None, prefix: str = "") -> list[dict[str, str]]:
    """The conversational prompt of a dataset item: the system message, then its conversation or question."""
    messages = [dict(m) for m in item.messages] if item.messages else [{"role": "user", "content": item.question}]
    if prefix:
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        k = users[-1] if users else len(messages) - 1
        messages[k] = {**messages[k], "content": prefix + str(messages[k]["content"])}
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}, *[m for m in messages if m.get("role") != "system"]]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def build_datasets(script_args: Any, training_args: Any) -> tuple[Any, Any]:
    """``(train, eval)`` ``datasets.Dataset`` objects: ``prompt`` (+ ``id``), and ``answer`` in eval (and in train
    with ``label_metrics``, for the label metrics only); plus the
    columns the recipe's reward reads (:func:`cat_dspy.rewards.dataset_columns`: ``answer`` for the gold arm,
    ``rubrics`` as JSON for the physician-rubric arm), in both."""
    from datasets import Dataset

    from cat_dspy.datasets import check_training_split, load_dataset
    from cat_dspy.rl.registry import dataset_columns

    reward = getattr(training_args, "reward", "cat")
    needed = dataset_columns(reward)

    check_training_split(script_args.dataset_name, script_args.dataset_train_split, ttrl=script_args.ttrl)
    common = {"data_dir": script_args.data_dir, "question_field": script_args.question_field,
              "answer_field": script_args.answer_field}
    items = load_dataset(script_args.dataset_name, split=script_args.dataset_train_split,
                         seed=script_args.dataset_seed, **common)
    held: list[Any] = []
    if script_args.holdout:
        if script_args.holdout >= len(items):
            raise ValueError(f"holdout={script_args.holdout} leaves no training questions ({len(items)} loaded)")
        items, held = items[: -script_args.holdout], items[-script_args.holdout :]
    if script_args.dataset_limit is not None:
        items = items[: script_args.dataset_limit]
    system = (default_system_prompt(training_args.mode) if script_args.system_prompt is None
              else script_args.system_prompt)
    prefix = script_args.prompt_prefix

    rows = [{"prompt": to_prompt(it, system, prefix), "id": it.id, **reward_columns(it, needed, reward)}
            for it in items]
    if script_args.label_metrics and "answer" not in needed:  # gold: for the label metrics only, never the reward
        missing = [it.id for it in items if it.answer is None]
        if missing:
            raise ValueError(f"label_metrics needs the answer of every training question; {len(missing)} have none "
                             f"(first: {missing[0]!r})")
        rows = [{**row, "answer": it.answer} for row, it in zip(rows, items, strict=True)]
    train = Dataset.from_list(rows)
    evaluation = None
    if training_args.eval_strategy != "no":
        if not held:
            check_training_split(script_args.eval_dataset_name or script_args.dataset_name,
                                 script_args.dataset_test_split, ttrl=script_args.ttrl, validation=True)
            held = load_dataset(script_args.eval_dataset_name or script_args.dataset_name,
                                split=script_args.dataset_test_split, **common)
        if script_args.eval_limit is not None:
            held = held[: script_args.eval_limit]
        rows = [{"prompt": to_prompt(it, system, prefix), "id": it.id, **reward_columns(it, needed, reward)}
                for it in held]
        if all(it.answer is not None for it in held):  # gold: for the label metrics only, never the reward
            rows = [{**row, "answer": it.answer} for row, it in zip(rows, held, strict=True)]
        evaluation = Dataset.from_list(rows)
    return train, evaluation


def reward_columns(item: Any, needed: tuple[str, ...], reward: str) -> dict[str, Any]:
    """The dataset columns a reward reads, for one item (``answer``; ``rubrics`` JSON-encoded, Arrow-friendly).

    Raises:
        ValueError: The item lacks one (names the item and the reward).
    """
    out: dict[str, Any] = {}
    for name in needed:
        value = item.answer if name == "answer" else getattr(item, name, None)
        if value is None:
            raise ValueError(f"the {reward!r} reward needs the {name!r} of every question; item {item.id!r} "
                             f"({item.meta.get('source', '?')}:{item.meta.get('line', '?')}) has none")
        out[name] = json.dumps(list(value)) if name == "rubrics" else value
    return out


def complete_checkpoint(output_dir: str) -> str | None:
    """The highest-numbered ``checkpoint-N`` in ``output_dir`` that the Trainer finished writing, or None.

    The Trainer writes ``trainer_state.json`` last, after the weights, optimizer and RNG states; a checkpoint
    without a readable one was cut off (a crash, a full disk) and is passed over with a warning, so a resume
    starts from the last whole one instead of failing on the broken one.

    Args:
        output_dir: The training's ``output_dir``; it need not exist.
    """
    from transformers.trainer_utils import sort_checkpoints

    if not os.path.isdir(output_dir):
        return None
    for path in reversed(sort_checkpoints(output_dir)):  # the Trainer's own order: by step, last first
        if _is_complete(path):
            return path
        logger.warning("%s is incomplete (no readable %s): not resuming from it", path, TRAINER_STATE_NAME)
    return None


def _is_complete(checkpoint: str) -> bool:
    """Whether the Trainer finished writing ``checkpoint``: its last file, ``trainer_state.json``, reads as JSON."""
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(training_args: Any, auto_resume: bool = True) -> str | None:
    """The checkpoint to resume from: ``resume_from_checkpoint``, else the last complete one in ``output_dir``
    (see :func:`complete_checkpoint`).

    Raises:
        ValueError: ``resume_from_checkpoint`` names a folder that is not a complete checkpoint.
    """
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if str(explicit).lower() in ("false", "no", "none"):
            return None
        if str(explicit).lower() in ("true", "yes", "last"):
            return complete_checkpoint(training_args.output_dir)
        if not _is_complete(str(explicit)):
            raise ValueError(f"resume_from_checkpoint={explicit!s}: not a complete checkpoint (no readable "
                             f"{TRAINER_STATE_NAME})")
        return str(explicit)
    if auto_resume:
        return complete_checkpoint(training_args.output_dir)
    return None


class _MlflowRun:
    """The MLflow run of a training job on the main process; TRL's MLflow callback logs into it."""

    def __init__(self, training_args: Any, params: dict[str, Any], experiment: str = DEFAULT_EXPERIMENT):
        self.enabled = "mlflow" in (training_args.report_to or []) and training_args.process_index == 0
        self.name = training_args.run_name
        self.params = params
        self.experiment = experiment
        self.run: Any = None

    def __enter__(self) -> _MlflowRun:
        if not self.enabled:
            return self
        import mlflow

        from cat_dspy import tracking

        os.environ.setdefault("MLFLOW_TRACKING_URI", tracking.DEFAULT_TRACKING_URI)  # the callback reads it too
        tracking.setup(os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.experiment)
        run_id = os.environ.pop("MLFLOW_RUN_ID", None)  # resumed here; TRL's callback must not start it again
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else self.name)
        tracking.log_params(self.params)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.run is not None:
            import mlflow

            mlflow.end_run(status="FAILED" if exc_type is not None else "FINISHED")


def main(script_args: Any, training_args: Any, model_args: Any, callbacks: list[Any] | None = None) -> Any:
    """Train with GRPO and the CaT reward; returns the trainer (its ``reward_funcs[0]`` is the CaT reward).

    Args:
        script_args: Data (see :class:`CaTScriptArguments`).
        training_args: TRL's GRPO options plus the CaT options (:class:`CaTGRPOConfig`).
        model_args: TRL's ``ModelConfig``; ``model_name_or_path`` defaults to the embedded model's checkpoint.
        callbacks: Extra ``TrainerCallback`` objects (e.g. timers).
    """
    import transformers
    from trl import get_peft_config

    from cat_dspy.rl.registry import build_reward
    from cat_dspy.rl.trainer import CaTGRPOTrainer

    transformers.set_seed(training_args.seed)
    model_path = model_args.model_name_or_path
    if not model_path:
        from cat_dspy.lm.hf import default_model_path

        model_path = str(default_model_path())
    train_dataset, eval_dataset = build_datasets(script_args, training_args)
    reward = build_reward(reward_options(training_args, model_path), reward=training_args.reward)
    _preload(reward)
    logger.info("policy %s, reward %r, %d training prompts", model_path, reward, len(train_dataset))

    model_init_kwargs = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code,
                         "attn_implementation": model_args.attn_implementation, "dtype": model_args.dtype}
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    checkpoint = last_checkpoint(training_args, script_args.auto_resume)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    params = {"cat.model_path": model_path, "cat.reward": training_args.reward,
              "cat.anchor": getattr(reward.anchor, "model", repr(reward.anchor)),
              "cat.judge": getattr(reward.judge, "model", None), "cat.train_prompts": len(train_dataset),
              "cat.eval_prompts": len(eval_dataset) if eval_dataset is not None else 0,
              "cat.resumed_from": checkpoint}

    with _MlflowRun(training_args, params):
        trainer = CaTGRPOTrainer(
            model=model_path,
            reward_funcs=[reward],
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            peft_config=get_peft_config(model_args),
            callbacks=[reward.callback(), *(callbacks or [])],
        )
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        if script_args.save_final_model:
            trainer.save_model(training_args.output_dir)
    return trainer


def _preload(reward: Any) -> None:
    """Load local anchor/judge weights now: a bad path fails before training, and step 1 is not charged for it."""
    from cat_dspy.lm.models import engine_of

    for lm in {id(lm): lm for lm in (reward.anchor, reward.judge) if lm is not None}.values():
        if (engine := engine_of(lm)) is not None:
            engine.load()


def make_parser(prog: str | None = None) -> Any:
    """TRL's parser over the three dataclasses (``--config`` YAML, ``--key value`` overrides, ``env:`` block)."""
    from trl import ModelConfig, TrlParser

    return TrlParser((CaTScriptArguments, CaTGRPOConfig, ModelConfig), prog=prog)


def run_argv(argv: list[str]) -> int:
    """``cat-dspy train ARGV``: TrlParser owns every option (``--config``, ``--max_steps``, ``-h``, ...)."""
    script_args, training_args, model_args = make_parser(prog="cat-dspy train").parse_args_and_config(argv)
    trainer = main(script_args, training_args, model_args)
    trainer.end()  # end the trackers and the process group, as TRL's own scripts do
    return 0


if __name__ == "__main__":  # python -m cat_dspy.rl.train: run the imported module, so the configs pickle by name
    from cat_dspy.rl.train import run_argv as _run_argv

    sys.exit(_run_argv(sys.argv[1:]))
