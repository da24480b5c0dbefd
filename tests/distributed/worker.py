"""One rank of the two-process CaT reward check (run by ``tests/distributed/test_two_process.py``).

``accelerate launch --multi_gpu --num_processes 2 tests/distributed/worker.py OUT_DIR`` (torchrun workers; on
CPU, ``PartialState(cpu=True)`` gives gloo; ``accelerate launch --cpu`` alone starts one process): every rank takes
its TRL-style slice of one generation batch whose middle group straddles the ranks, calls the CaT reward, and
writes its rewards, the anchor's calls per group and the logged metrics to ``OUT_DIR/rank<r>.json``. Not a test
module itself.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections import Counter
from pathlib import Path

NUM_GENERATIONS = 4
# Three groups of four: 12 completions, 6 per rank, so group g1 straddles rank 0 (2) and rank 1 (2).
GROUPS = {"g0": ["3", "3", "4", "3"], "g1": ["7", "8", "7", "7"], "g2": ["1", "2", "1", "2"]}
REFERENCES = {"g0": "3", "g1": "7", "g2": "2"}
LENGTH_LIMIT = 10


def counting_anchor():
    """A scripted anchor answering per group (rollouts carry a ``[g<k>]`` tag), counting its calls per group."""
    from cat_dspy.testing import scripted_lm

    calls: Counter = Counter()
    lock = threading.Lock()

    def fn(prompt: str) -> str:
        tags = set(re.findall(r"\[(g\d+)\]", prompt))
        assert len(tags) == 1, tags
        tag = tags.pop()
        with lock:
            calls[tag] += 1
        return f"# UNIFIED RESPONSE Therefore, the final answer is: $\\boxed{{{REFERENCES[tag]}}}$."

    lm = scripted_lm(fn)
    lm.group_calls = calls
    return lm


def global_batch() -> tuple[list, list, list]:
    """The whole generation batch in TRL's order: (prompts, completions, completion_ids)."""
    prompts, completions, ids = [], [], []
    for tag, answers in GROUPS.items():
        for j, answer in enumerate(answers):
            prompts.append([{"role": "user", "content": f"Question {tag}?"}])
            completions.append([{"role": "assistant", "content": f"[{tag}] so \\boxed{{{answer}}}"}])
            ids.append([0] * (5 + 2 * j))  # the 4th completion of each group (11 tokens) is over the limit
    return prompts, completions, ids


def make_reward(anchor):
    from cat_dspy.rewards import CaTReward

    return CaTReward(anchor, g=NUM_GENERATIONS, length_limit=LENGTH_LIMIT)


def make_majority():
    from cat_dspy.rewards import MajorityReward

    return MajorityReward(g=NUM_GENERATIONS, length_limit=LENGTH_LIMIT)


def main(out_dir: str) -> None:
    from accelerate import PartialState

    state = PartialState(cpu=True)  # gloo, as GRPOTrainer with use_cpu=True
    rank, world = state.process_index, state.num_processes
    prompts, completions, ids = global_batch()
    n = len(prompts) // world
    mine = slice(rank * n, (rank + 1) * n)
    anchor = counting_anchor()
    metrics: dict[str, list[float]] = {}
    extra: dict[str, list] = {}
    rewards = make_reward(anchor)(
        prompts=prompts[mine], completions=completions[mine], completion_ids=ids[mine],
        log_metric=lambda k, v: metrics.setdefault(k, []).append(v),
        log_extra=lambda c, vs: extra.setdefault(c, []).extend(vs),
    )
    majority = make_majority()  # a comparison arm: the same group machinery (GroupReward), no LM
    majority_rewards = majority(prompts=prompts[mine], completions=completions[mine], completion_ids=ids[mine])
    record = {"rank": rank, "world": world, "rewards": rewards, "calls": dict(anchor.group_calls),
              "metrics": {k: v for k, v in metrics.items() if k != "cat/reward_seconds"},
              "references": extra.get("cat_reference", []), "majority_rewards": majority_rewards,
              "majority_metrics": {k: v for k, v in majority.last_metrics.items() if not k.endswith("seconds")}}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    state.wait_for_everyone()
    state.destroy_process_group()  # a live gloo group at exit aborts the process ("terminate called ...")


if __name__ == "__main__":
    main(sys.argv[1])
