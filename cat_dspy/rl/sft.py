"""CaT-SFT (paper §2.2): supervised fine-tuning on the frozen anchor's references (``cat-dspy sft --config RECIPE``).

1. For every training (and validation) prompt, the initial policy samples G rollouts and the frozen anchor
   synthesizes one reference from them, question-blind: CaT's own :class:`~cat_dspy.modules.rollout.Rollout` and
   :class:`~cat_dspy.modules.synthesize.Synthesize` steps (:func:`synthesize_references`). Each reference is
   appended to the crash-safe store (:class:`cat_dspy.jsonl_store.JsonlStore`, ``references.jsonl`` in
   ``output_dir`` by default) as soon as it exists, so a restart synthesizes only the prompts still missing; a
   failed rollout or anchor call is counted and retried on the next run, never stored.
2. TRL's ``SFTTrainer`` fine-tunes the policy on (prompt, reference) in the conversational prompt-completion format
   (the loss on the reference only), with LoRA (the paper: rank 32) where ``peft`` is installed and the recipe asks
   for it (``use_peft``), else full fine-tuning with a logged note.
3. MLflow, as ``cat-dspy train``: TRL's metrics, the recipe and the reference counts land in one run (experiment
   ``cat-dspy-sft``).

The recipe is parsed by TRL's ``TrlParser`` over :class:`CaTSFTScriptArguments` (the data options of ``train``),
:class:`CaTSFTConfig` (TRL's ``SFTConfig`` plus the anchor options of :class:`~cat_dspy.config.CaTRewardConfig`
and the rollouts') and TRL's ``ModelConfig``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from trl import SFTConfig

from cat_dspy.config import CaTRewardConfig
from cat_dspy.rl.train import CaTScriptArguments

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "cat-dspy-sft"
_UNIFIED = re.compile(r"^\s*#+\s*UNIFIED RESPONSE\s*:?\s*$", re.I | re.M)
# CaTRewardConfig fields that only the RL reward reads (the judge, the rubric, the reward's shaping).
_REWARD_ONLY = ("judge", "judge_api_base", "judge_temperature", "judge_max_tokens", "judge_lm_kwargs",
                "per_criterion", "min_criteria", "length_limit", "equivalence", "program", "skip_unparsed",
                "artifacts", "trace_every")


@dataclass
class CaTSFTScriptArguments(CaTScriptArguments):
    """The questions (as ``cat-dspy train``) and where the references are kept."""

    references_path: str | None = field(
        default=None,
        metadata={"help": "JSONL store of the anchor's references (default: <output_dir>/references.jsonl); a "
                  "restart reuses every reference in it."},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without a better metric_for_best_model (the paper: "
                  "early stopping on the validation loss); needs eval_strategy and load_best_model_at_end."},
    )


@dataclass
class CaTSFTConfig(SFTConfig, CaTRewardConfig):
    """TRL's ``SFTConfig`` plus the anchor's options (:class:`~cat_dspy.config.CaTRewardConfig`: ``mode``
    picks the reasoning or free-form synthesis; the judge and reward-shaping fields are unused here) and the
    initial policy's rollouts."""

    num_generations: int = field(default=8, metadata={"help": "G: rollouts per prompt synthesized into a reference."})
    rollout_model: str | None = field(
        default=None,
        metadata={"help": "The initial policy that samples the rollouts (default: the anchor's model, the initial "
                  "checkpoint, on the same engine or server)."},
    )
    rollout_temperature: float = field(default=1.0, metadata={"help": "Rollout temperature."})
    rollout_max_tokens: int = field(default=512, metadata={"help": "Rollout max new tokens."})

    def __post_init__(self) -> None:
        super().__post_init__()
        CaTRewardConfig.__post_init__(self)


def sft_target(reference: str, mode: str) -> str:
    r"""The SFT target of a reference: in reasoning mode the new solution under ``# UNIFIED RESPONSE`` (the summary
    before it talks about the rollouts, not the question); the whole reference otherwise or without that header.

    Examples:
        >>> sft_target("# SUMMARY both say 4\n# UNIFIED RESPONSE\n2 + 2 = 4, so $\\boxed{4}$.", "verifiable")
        '2 + 2 = 4, so $\\boxed{4}$.'
        >>> sft_target("Rest the ankle.", "rubric")
        'Rest the ankle.'
    """
    match = _UNIFIED.search(reference) if mode == "verifiable" else None
    return (reference[match.end():] if match else reference).strip()


def prompt_hash(prompt: Any) -> str:
    """The store key of a training prompt (its whole conversation, system message included)."""
    from cat_dspy.rl.inputs import prompt_key

    return hashlib.sha256(prompt_key(prompt).encode("utf-8")).hexdigest()[:24]


def synthesis_settings(cat: Any) -> dict[str, Any]:
    """What a stored reference depends on: a store made with other settings is refused, not silently reused."""
    return {"g": cat.g, "mode": cat.mode, "question_aware": cat.synthesize.question_aware,
            "anchor": getattr(cat.synthesize.lm, "model", repr(cat.synthesize.lm)),
            "policy": getattr(cat.rollout.lm, "model", repr(cat.rollout.lm))}


def synthesize_references(cat: Any, prompts: list[Any], store: Any, num_threads: int | None = None,
                          ids: list[str] | None = None) -> dict[str, Any]:
    """One anchor reference per prompt, from G rollouts of the initial policy; cached in ``store``.

    Args:
        cat: A :class:`~cat_dspy.modules.cat.CaT` (its rollout and synthesis steps are used; policy = the initial
            checkpoint, anchor = the frozen π_0).
        prompts: TRL prompts (strings or conversations); the rollouts see the conversation without its system
            message (:func:`cat_dspy.rl.inputs.prompt_conversation`).
        store: A :class:`~cat_dspy.jsonl_store.JsonlStore` keyed by ``key`` (:func:`prompt_hash`).
        num_threads: Prompts synthesized concurrently (the local engine batches their calls).
        ids: Dataset ids of the prompts, stored for reading.

    Returns:
        ``{"records": {key: record}, "cached": n, "new": n, "failed": n, "failures": [...]}``; each record holds
        ``reference``, ``target`` (:func:`sft_target`), ``usable`` (an answer was extracted / the reference is
        non-empty), the rollouts and the usage per role.

    Raises:
        ValueError: The store holds references made with other settings (anchor, policy, G, mode).
    """
    from cat_dspy.lm.usage import track_role
    from cat_dspy.modules.base import thread_map
    from cat_dspy.rl.inputs import prompt_conversation

    settings = synthesis_settings(cat)
    records = store.load()
    stale = next((r for r in records.values() if r.get("settings") != settings), None)
    if stale is not None:
        raise ValueError(f"{store.path}: its references were made with {stale.get('settings')}, this recipe asks "
                         f"for {settings}; set references_path to another file (or remove this one)")
    keys = [prompt_hash(p) for p in prompts]
    todo = list({k: i for i, k in enumerate(keys) if k not in records}.values())  # each prompt once

    def one(i: int) -> dict[str, Any] | str:
        question = prompt_conversation(prompts[i])
        usage: dict[str, dict[str, float]] = {}
        with track_role(usage, "policy", cat.rollout.lm):
            sampled = cat.rollout(question=question)
        errors = [f"rollout_error: {e}" for e in sampled.failures if e]
        if errors:
            return errors[0]
        with track_role(usage, "anchor", cat.synthesize.lm):
            synthesis = cat.synthesize(rollouts=sampled.rollouts, question=question)
        if synthesis.error:
            return f"anchor_error: {synthesis.error}"
        record = {"key": keys[i], "id": ids[i] if ids else None, "question": question[:4000],
                  "reference": synthesis.reference, "reference_answer": synthesis.answer,
                  "target": sft_target(synthesis.reference, cat.mode), "usable": bool(synthesis.parsed),
                  "rollouts": list(sampled.rollouts), "usage": usage, "settings": settings}
        store.append(record)  # durable before the next prompt: a crash loses no finished reference
        return record

    results = thread_map(one, todo, num_threads)
    failures = [r for r in results if isinstance(r, str)]
    for reason in failures[:5]:
        logger.warning("CaT-SFT: no reference for a prompt (retried on the next run): %s", reason[:300])
    fresh = {r["key"]: r for r in results if isinstance(r, dict)}
    found = {**records, **fresh}
    return {"records": {k: found[k] for k in keys if k in found}, "cached": sum(k in records for k in set(keys)),
            "new": len(fresh), "failed": len(failures), "failures": failures}


def sft_dataset(prompts: list[Any], records: dict[str, Any]) -> tuple[Any, dict[str, int]]:
    """The conversational prompt-completion ``datasets.Dataset`` of the usable references, and the counts of
    the prompts left out (``missing``: no reference, its call failed; ``unusable``: no answer / empty)."""
    from datasets import Dataset

    rows, counts = [], {"missing": 0, "unusable": 0}
    for prompt in prompts:
        record = records.get(prompt_hash(prompt))
        if record is None:
            counts["missing"] += 1
        elif not record["usable"] or not record["target"]:
            counts["unusable"] += 1
        else:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            rows.append({"prompt": messages, "completion": [{"role": "assistant", "content": record["target"]}]})
    return Dataset.from_list(rows) if rows else None, counts


def peft_config(model_args: Any) -> tuple[Any, str]:
    """TRL's LoRA config where the recipe asks for it and ``peft`` is installed, and what was used."""
    if not model_args.use_peft:
        return None, "full fine-tuning"
    from transformers.utils import is_peft_available

    if not is_peft_available():
        logger.warning("CaT-SFT: the recipe asks for LoRA (rank %d, as the paper) but peft is not installed: "
                       "full fine-tuning instead (pip install peft for LoRA)", model_args.lora_r)
        return None, f"full fine-tuning (LoRA rank {model_args.lora_r} asked for; peft not installed)"
    from trl import get_peft_config

    return get_peft_config(model_args), f"LoRA rank {model_args.lora_r}"


def trainable_share(model: Any) -> float:
    """The fraction of ``model``'s parameters that training updates (LoRA: a few percent; full fine-tuning: 1): PEFT's
    own count for a ``PeftModel`` (it sizes ZeRO-3-partitioned and 4-bit parameters right), else the tensors' sizes."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trained, total = model.get_nb_trainable_parameters()
    else:
        sizes = [(p.numel(), p.requires_grad) for p in model.parameters()]
        trained, total = sum(n for n, grad in sizes if grad), sum(n for n, _ in sizes)
    return trained / max(total, 1)


def main(script_args: Any, training_args: Any, model_args: Any) -> Any:
    """Synthesize (or reuse) the references, then fine-tune with ``SFTTrainer``; returns the trainer."""
    from pathlib import Path

    import transformers
    from trl import SFTTrainer

    from cat_dspy.jsonl_store import JsonlStore
    from cat_dspy.modules.cat import CaT
    from cat_dspy.rl.registry import anchor_lm
    from cat_dspy.rl.train import _MlflowRun, build_datasets, cat_fields, last_checkpoint

    transformers.set_seed(training_args.seed)
    model_path = model_args.model_name_or_path
    if not model_path:
        from cat_dspy.lm.hf import default_model_path

        model_path = str(default_model_path())
    ignored = [f.name for f in dataclasses.fields(CaTRewardConfig)
               if f.name in _REWARD_ONLY and getattr(training_args, f.name) != f.default]
    if ignored:
        logger.warning("CaT-SFT ignores the RL reward options %s", ignored)
    train_dataset, eval_dataset = build_datasets(script_args, training_args)

    options = {name: getattr(training_args, name) for name in cat_fields()}
    options["model_name_or_path"] = model_path
    if (options.get("anchor") or "local").startswith("local") and options.get("anchor_device") is None:
        options["anchor_device"] = str(training_args.device)
    anchor = anchor_lm(options)
    policy_options = {**options, "anchor": training_args.rollout_model or options.get("anchor")}
    policy = anchor_lm(policy_options, role="policy", temperature=training_args.rollout_temperature,
                       max_tokens=training_args.rollout_max_tokens)  # top-p/top-k: the anchor's (family sampling)
    cat = CaT(g=training_args.num_generations, mode=training_args.mode, policy=policy, anchor=anchor,
              question_aware=training_args.question_aware, extraction=training_args.extraction)
    store = JsonlStore(script_args.references_path or Path(training_args.output_dir) / "references.jsonl", key="key")
    peft, tuning = peft_config(model_args)

    prompts = list(train_dataset["prompt"]) + (list(eval_dataset["prompt"]) if eval_dataset is not None else [])
    ids = list(train_dataset["id"]) + (list(eval_dataset["id"]) if eval_dataset is not None else [])
    with training_args.main_process_first(desc="CaT references"):  # rank 0 synthesizes, the others reuse
        made = synthesize_references(cat, prompts, store, num_threads=training_args.num_threads or 8, ids=ids)
    train, train_counts = sft_dataset(list(train_dataset["prompt"]), made["records"])
    evaluation = sft_dataset(list(eval_dataset["prompt"]), made["records"])[0] if eval_dataset is not None else None
    if train is None:
        raise RuntimeError(f"CaT-SFT: no usable reference for any of the {len(train_dataset)} training prompts "
                           f"({train_counts}, {made['failed']} failed calls); see {store.path}")
    counts = {"references_cached": made["cached"], "references_new": made["new"],
              "references_failed": made["failed"], "train_examples": len(train),
              "train_missing": train_counts["missing"], "train_unusable": train_counts["unusable"]}
    logger.info("CaT-SFT: %s (%s)", counts, tuning)

    training_args.model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype,
                                       "trust_remote_code": training_args.trust_remote_code,
                                       "attn_implementation": model_args.attn_implementation,
                                       **(training_args.model_init_kwargs or {})}
    checkpoint = last_checkpoint(training_args, script_args.auto_resume)
    params = {"sft.model_path": model_path, "sft.anchor": getattr(anchor, "model", repr(anchor)),
              "sft.policy": getattr(policy, "model", repr(policy)), "sft.references": str(store.path),
              "sft.tuning": tuning, "sft.resumed_from": checkpoint, **{f"sft.{k}": v for k, v in counts.items()}}
    with _MlflowRun(training_args, params, experiment=DEFAULT_EXPERIMENT) as run:
        if run.run is not None:
            import mlflow

            mlflow.log_metrics({f"sft/{k}": float(v) for k, v in counts.items()}, step=0)
        callbacks = []
        if script_args.early_stopping_patience:
            callbacks.append(transformers.EarlyStoppingCallback(script_args.early_stopping_patience))
        trainer = SFTTrainer(model=model_path, args=training_args, train_dataset=train, eval_dataset=evaluation,
                             peft_config=peft, callbacks=callbacks)
        share = trainable_share(trainer.model)
        logger.info("CaT-SFT: %s, %.2f%% of the parameters trained", tuning, 100 * share)
        if run.run is not None:
            mlflow.log_metric("sft/trainable_share", share, step=0)
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        if script_args.save_final_model:
            trainer.save_model(training_args.output_dir)
    return trainer


def make_parser(prog: str | None = None) -> Any:
    """TRL's parser over the three dataclasses (``--config`` YAML, ``--key value`` overrides, ``env:`` block)."""
    from trl import ModelConfig, TrlParser

    return TrlParser((CaTSFTScriptArguments, CaTSFTConfig, ModelConfig), prog=prog)


def run_argv(argv: list[str]) -> int:
    """``cat-dspy sft ARGV``: TrlParser owns every option (``--config``, ``--max_steps``, ``-h``, ...)."""
    script_args, training_args, model_args = make_parser(prog="cat-dspy sft").parse_args_and_config(argv)
    main(script_args, training_args, model_args)
    return 0


if __name__ == "__main__":  # python -m cat_dspy.rl.sft: run the imported module, so the configs pickle by name
    from cat_dspy.rl.sft import run_argv as _run_argv

    sys.exit(_run_argv(sys.argv[1:]))
