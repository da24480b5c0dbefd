"""The GRPO trainer of ``cat-dspy train``: TRL's ``GRPOTrainer``, with the completions that carry no gradient left out
of the loss when ``skip_zero_advantage`` is set.

A group whose rewards are all equal (frequent with a label-free reward: half the groups of the CaT-RL arm of the
teachers study) gets advantage 0 for every completion. With ``beta = 0`` such a completion adds exactly 0 to the
loss and to every gradient, yet TRL runs its forward and backward, the largest parts of a CPU step.
:class:`CaTGRPOTrainer` computes the loss on the other completions only and rescales it to TRL's normalization, so
the gradient is the same in exact arithmetic (in floating point, sums over fewer rows may round differently:
``benchmarks/step_time.py --compare skip_zero_advantage`` checks the rewards at a fixed seed).
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer

ROW_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "old_per_token_logps",
            "importance_sampling_ratio", "sampling_per_token_logps", "ref_per_token_logps", "tool_mask")
"""The per-completion tensors of TRL's loss inputs (first dimension: the completions of the micro-batch)."""

MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "spatial_shapes", "image_sizes",
                   "token_type_ids", "mm_token_type_ids", "image_position_ids", "num_images", "num_tiles")
"""Inputs laid out per image, not per completion: a micro-batch with any of them is never cut."""

MEAN_OVER_COMPLETIONS = ("grpo", "sapo", "dr_grpo", "luspo")  # loss divided by the micro-batch's completions
MEAN_OVER_TOKENS = ("bnpo",)  # divided by the micro-batch's completion tokens
FIXED_NORMALIZER = ("dapo", "cispo", "vespo")  # divided by num_items_in_batch, the same with fewer completions


def check_skip_zero_advantage(trainer: GRPOTrainer) -> None:
    """Refuse ``skip_zero_advantage`` where a completion of advantage 0 still moves the loss.

    Raises:
        ValueError: naming the option that makes the cut inexact.
    """
    reasons = []
    if trainer.beta != 0.0:
        reasons.append(f"beta={trainer.beta} (the KL term gives every completion a gradient)")
    if trainer.top_entropy_quantile < 1.0:
        reasons.append(f"top_entropy_quantile={trainer.top_entropy_quantile} (a quantile over all completions)")
    if getattr(trainer, "_entropy_bonus_enabled", False):
        reasons.append("an entropy bonus (entropy_coef or adaptive entropy acts on every completion)")
    if getattr(trainer, "aux_loss_enabled", False):
        reasons.append("a router auxiliary loss")
    if trainer.loss_type not in (*MEAN_OVER_COMPLETIONS, *MEAN_OVER_TOKENS, *FIXED_NORMALIZER):
        reasons.append(f"loss_type={trainer.loss_type!r} (unknown normalization)")
    if reasons:
        raise ValueError("skip_zero_advantage=true would change the gradient with " + "; ".join(reasons)
                         + ": set skip_zero_advantage to false")


class CaTGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer``; with ``args.skip_zero_advantage``, the loss's forward and backward skip the
    completions whose advantage is 0, and the share skipped is logged as ``frac_zero_advantage_skipped``.

    The step's ``entropy`` and clip-ratio metrics, computed inside the loss, are then over the completions kept.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.args, "skip_zero_advantage", False):
            check_skip_zero_advantage(self)

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if not getattr(self.args, "skip_zero_advantage", False) or any(k in inputs for k in MULTIMODAL_KEYS):
            return super()._compute_loss(model, inputs)
        advantages = inputs["advantages"]
        keep = advantages != 0 if advantages.dim() == 1 else (advantages != 0).any(dim=-1)
        total = keep.numel()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["frac_zero_advantage_skipped"].append(1.0 - keep.sum().item() / total)
        if bool(keep.all()):
            return super()._compute_loss(model, inputs)
        if not bool(keep.any()):
            keep[0] = True  # one completion of advantage 0: every gradient is defined, and exactly 0
        kept = {k: v[keep] if k in ROW_KEYS and isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        loss = super()._compute_loss(model, kept)
        if self.loss_type in MEAN_OVER_COMPLETIONS:
            return loss * (keep.sum() / total)
        if self.loss_type in MEAN_OVER_TOKENS:
            mask = inputs["completion_mask"] if "tool_mask" not in inputs else (
                inputs["completion_mask"] * inputs["tool_mask"])
            return loss * (mask[keep].sum().clamp(min=1.0) / mask.sum().clamp(min=1.0))
        return loss
