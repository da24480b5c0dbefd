"""Benchmark: time inside the CaT reward ÷ GRPO step time, measured side by side on the CPU smoke recipe.

Runs ``cat-dspy train`` in process on ``experiments/recipes/cpu_smoke.yaml`` (embedded SmolLM2-135M, GSM8K train
prompts, G=4, 32-token completions, 48-token anchor synthesis) into a temporary directory, with a
``TrainerCallback`` timing every optimizer step while the reward times itself. Prints, per step and in total:
step seconds, reward seconds, their ratio (target ≤ 0.20), the anchor's share (time inside its ``generate``) and
its generate calls per reward call: the reward scores every group of a step concurrently, so the local anchor
synthesizes all of them in one batched ``generate`` (``--per_device_train_batch_size 16`` gives 4 groups a step).
Step 1 also pays one-time warm-up (first forward/backward); the total over later steps is the steady state. The
anchor is the recipe's (``local``: the default runtime, llama.cpp in process on a CPU with llama-cpp-python, else
torch); ``--runtime torch|llamacpp`` pins it (through ``CAT_DSPY_RUNTIME``).

Run (the measurement): python benchmarks/reward_time.py --steps 4
Dry run: python benchmarks/reward_time.py --steps 2 --max_completion_length 8 --anchor_max_tokens 8
Any ``--key value`` after the options overrides the recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (generation and reward included: GRPO generates inside the step)."""

        def __init__(self) -> None:
            self.steps: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self._start)

    return StepTimer()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "recipes" / "cpu_smoke.yaml"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runtime", choices=("auto", "torch", "llamacpp"),
                        help="runtime of a 'local' anchor (sets CAT_DSPY_RUNTIME; default: as set, else auto)")
    args, overrides = parser.parse_known_args()
    if args.runtime:
        os.environ["CAT_DSPY_RUNTIME"] = args.runtime

    from cat_dspy.lm.models import engine_of
    from cat_dspy.rl import train

    with tempfile.TemporaryDirectory(prefix="cat-reward-time-") as tmp:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        argv = ["--config", args.config, "--output_dir", f"{tmp}/out", "--max_steps", str(args.steps),
                "--save_strategy", "no", "--save_final_model", "false", "--auto_resume", "false",
                "--anchor_lm_kwargs", '{"cache": false}',  # every synthesis really generates (no DSPy cache hit)
                *overrides]
        script_args, training_args, model_args = train.make_parser().parse_args_and_config(argv)

        steps = step_timer()
        start = time.perf_counter()
        trainer = train.main(script_args, training_args, model_args, callbacks=[steps])
        total = time.perf_counter() - start
        reward = trainer.reward_funcs[0]  # the CaTReward; it clocks each of its calls
        engine = engine_of(reward.anchor)
        anchor_stats = engine.stats if engine is not None else None
        anchor_generate = anchor_stats["generate_seconds"] if anchor_stats is not None else None
        trainer.end()

    n = min(len(steps.steps), len(reward.call_seconds))
    per_step = [{"step": i + 1, "step_s": steps.steps[i], "reward_s": reward.call_seconds[i],
                 "ratio": reward.call_seconds[i] / steps.steps[i]} for i in range(n)]
    later = per_step[1:] or per_step
    result = {
        "config": os.path.relpath(args.config, REPO),
        "steps": per_step,
        "ratio_all": sum(reward.call_seconds[:n]) / sum(steps.steps[:n]),
        "ratio_after_first": sum(s["reward_s"] for s in later) / sum(s["step_s"] for s in later),
        "reward_s_total": sum(reward.call_seconds),
        "anchor_generate_s_total": anchor_generate,
        "anchor_generate_calls_per_reward_call": (anchor_stats["generate_calls"] / max(reward.calls, 1)
                                                  if anchor_stats is not None else None),
        "groups_per_reward_call": (getattr(training_args, "generation_batch_size", None)
                                   or training_args.per_device_train_batch_size) // training_args.num_generations,
        "run_s": total,
        "anchor": str(getattr(reward.anchor, "model", reward.anchor)),
        "anchor_runtime": engine.runtime if engine is not None else None,
        "target": 0.20,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"CaT reward time ÷ GRPO step time ({result['config']}, {n} steps, CPU threads: {os_threads()}, "
          f"anchor {result['anchor']} on {result['anchor_runtime']})")
    for s in per_step:
        print(f"  step {s['step']}: step {s['step_s']:6.1f} s   reward {s['reward_s']:5.1f} s   ratio {s['ratio']:.3f}")
    print(f"  all steps: ratio {result['ratio_all']:.3f}   after step 1: {result['ratio_after_first']:.3f}   "
          f"(target ≤ {result['target']:.2f})")
    if anchor_generate is not None:
        print(f"  anchor generate: {anchor_generate:.1f} s of {result['reward_s_total']:.1f} s in the reward; "
              f"{result['anchor_generate_calls_per_reward_call']:.1f} generate call(s) per reward call for "
              f"{result['groups_per_reward_call']} group(s)")
    return 0


def os_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
