"""Benchmark: where a CPU GRPO step's time goes, phase by phase, measured in one training run.

Runs ``cat-dspy train`` in process on a recipe (default: the study's CaT-RL arm, ``study_cat_rl.yaml``: embedded
SmolLM2-135M, 4 prompts x G=4 completions of 48 tokens a step, the anchor on llama.cpp) into a temporary directory,
with TRL's ``GRPOTrainer`` phases timed where they run:

* ``generation``: the policy's rollouts (``GRPOTrainer._generate``);
* ``reward``: the reward functions (``_calculate_rewards``: the anchor's synthesis and the answer checks for CaT);
* ``scoring_rest``: the rest of ``_generate_and_score_completions`` (tokenizing, the old/ref log-probabilities);
* ``loss_forward``: ``compute_loss`` (the policy's forward with gradients);
* ``backward``: ``accelerator.backward``;
* ``optimizer``: ``optimizer.step`` and ``zero_grad`` (between transformers' ``on_pre_optimizer_step`` and
  ``on_step_end``);
* ``other``: the step's wall time less all of these.

Prints seconds per step for each phase and its share of the step, over the steps after the first (step 1 also pays
one-time warm-up), the peak resident memory, and the rewards of every step (so two runs at one seed can be compared
reward for reward). ``--json`` prints one object.

Run (the measurement): python benchmarks/step_time.py --steps 4
Before and after a boolean option, at one seed (every completion's reward compared):
python benchmarks/step_time.py --steps 4 --compare skip_zero_advantage --out step_time_skip_zero_advantage.json
Dry run: python benchmarks/step_time.py --steps 2 --max_completion_length 8 --anchor_max_tokens 8
Any ``--key value`` after the options overrides the recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PHASES = ("generation", "reward", "scoring_rest", "loss_forward", "backward", "optimizer", "other")


class PhaseClock:
    """Seconds per phase per optimizer step; phases nested in a timed phase are subtracted from it."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.rewards: list[list[list[float]]] = []  # per reward call: per completion, per reward function
        self.current: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [start, time of timed children]
        self._step_start = 0.0

    @contextmanager
    def phase(self, name: str):
        self._stack.append([time.perf_counter(), 0.0])
        try:
            yield
        finally:
            start, children = self._stack.pop()
            spent = time.perf_counter() - start
            self.current[name] += spent - children
            if self._stack:
                self._stack[-1][1] += spent

    def begin_step(self) -> None:
        self.current = defaultdict(float)
        self._step_start = time.perf_counter()

    def end_step(self) -> None:
        step = time.perf_counter() - self._step_start
        timed = dict(self.current)
        timed["other"] = step - sum(timed.values())
        timed["step"] = step
        self.steps.append(timed)


def instrument(clock: PhaseClock) -> Any:
    """Wrap GRPOTrainer's phases with ``clock`` and return the callback that marks steps and the optimizer."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    def timed(method: str, phase: str) -> None:
        original = getattr(GRPOTrainer, method)

        def wrapper(self, *args, **kwargs):
            with clock.phase(phase):
                return original(self, *args, **kwargs)

        setattr(GRPOTrainer, method, wrapper)

    timed("_generate", "generation")
    timed("_calculate_rewards", "reward")
    calculate = GRPOTrainer._calculate_rewards

    def recorded(self, *args, **kwargs):  # every completion's reward, for comparing two runs at one seed
        rewards = calculate(self, *args, **kwargs)
        clock.rewards.append(rewards.tolist())
        return rewards

    GRPOTrainer._calculate_rewards = recorded
    timed("_generate_and_score_completions", "scoring_rest")
    timed("compute_loss", "loss_forward")
    from accelerate import Accelerator

    backward = Accelerator.backward

    def timed_backward(self, *args, **kwargs):
        with clock.phase("backward"):
            return backward(self, *args, **kwargs)

    Accelerator.backward = timed_backward

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin_step()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            clock._optimizer_start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            start = getattr(clock, "_optimizer_start", None)
            if start is not None:
                clock.current["optimizer"] += time.perf_counter() - start
                clock._optimizer_start = None
            clock.end_step()

    return Steps()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "recipes" / "study_cat_rl.yaml"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--compare", metavar="OPTION",
                        help="a boolean recipe option: run once with it false, once true (fresh processes, one "
                        "seed), and print both, their ratio and whether every completion's reward is the same")
    parser.add_argument("--out", help="with --compare: also write the comparison to this JSON file")
    args, overrides = parser.parse_known_args()
    if args.compare:
        return compare(args, overrides)

    from cat_dspy.rl import train

    clock = PhaseClock()
    with tempfile.TemporaryDirectory(prefix="cat-step-time-") as tmp:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                                for a in range(2, 12) for b in range(3, 7)))
        argv = ["--config", args.config, "--output_dir", f"{tmp}/out", "--max_steps", str(args.steps),
                "--dataset_name", str(data), "--save_strategy", "no", "--save_final_model", "false",
                "--auto_resume", "false", "--report_to", "none", "--logging_steps", "1",
                "--anchor_lm_kwargs", '{"cache": false}',  # every synthesis really generates (no DSPy cache hit)
                *overrides]
        script_args, training_args, model_args = train.make_parser().parse_args_and_config(argv)
        callback = instrument(clock)
        start = time.perf_counter()
        trainer = train.main(script_args, training_args, model_args, callbacks=[callback])
        total = time.perf_counter() - start
        history = [h for h in trainer.state.log_history if "reward" in h]
        trainer.end()

    later = clock.steps[1:] or clock.steps
    mean = {p: sum(s.get(p, 0.0) for s in later) / len(later) for p in (*PHASES, "step")}
    result = {
        "config": os.path.relpath(args.config, REPO),
        "overrides": overrides,
        "steps": clock.steps,
        "mean_after_first": mean,
        "share_after_first": {p: mean[p] / mean["step"] for p in PHASES},
        "largest": max(PHASES, key=lambda p: mean[p]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rewards": [h["reward"] for h in history],
        "completion_rewards": clock.rewards,
        "run_s": total,
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"GRPO step time by phase ({result['config']}, {len(clock.steps)} steps; mean of steps 2+)")
    for p in PHASES:
        print(f"  {p:13s} {mean[p]:7.2f} s   {result['share_after_first'][p]:6.1%}")
    print(f"  {'step':13s} {mean['step']:7.2f} s   peak RSS {result['peak_rss_mb']:.0f} MB   "
          f"load average {result['load_average'][0]:.1f}")
    print(f"  rewards per logged step: {result['rewards']}")
    return 0


def compare(args: argparse.Namespace, overrides: list[str]) -> int:
    """Run the benchmark twice in fresh processes, ``--<option> false`` then ``true``; print (and write) both."""
    import subprocess

    runs = {}
    for value in ("false", "true"):
        command = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps), "--json",
                   *overrides, f"--{args.compare}", value]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return done.returncode
        runs["before" if value == "false" else "after"] = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = runs["before"], runs["after"]
    result = {
        "option": args.compare,
        "command": " ".join(["python benchmarks/step_time.py", "--steps", str(args.steps), "--compare", args.compare,
                             *overrides]),
        "same_rewards": before["completion_rewards"] == after["completion_rewards"],
        "step_s": {"before": before["mean_after_first"]["step"], "after": after["mean_after_first"]["step"]},
        "step_ratio": after["mean_after_first"]["step"] / before["mean_after_first"]["step"],
        "peak_rss_mb": {"before": before["peak_rss_mb"], "after": after["peak_rss_mb"]},
        "before": before,
        "after": after,
    }
    print(f"--{args.compare}: step {result['step_s']['before']:.2f} s -> {result['step_s']['after']:.2f} s "
          f"(x{result['step_ratio']:.2f}), peak RSS {before['peak_rss_mb']:.0f} -> {after['peak_rss_mb']:.0f} MB, "
          f"every completion's reward the same: {result['same_rewards']}")
    for p in PHASES:
        print(f"  {p:13s} {before['mean_after_first'][p]:7.2f} s -> {after['mean_after_first'][p]:7.2f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
