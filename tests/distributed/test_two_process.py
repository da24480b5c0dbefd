"""The CaT reward on two processes (accelerate, gloo on CPU): groups straddling ranks are synthesized once."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_worker():
    spec = importlib.util.spec_from_file_location("cat_distributed_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_straddling_groups_are_synthesized_once_and_match_one_process(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    # `--cpu` alone starts one process (accelerate needs mpirun for several CPU processes); `--multi_gpu` starts
    # torchrun workers, which use gloo on CPU (the worker asks for cpu=True, as GRPOTrainer does with use_cpu).
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(WORKER), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]

    # every group synthesized exactly once, across both processes (g1 has completions on both)
    total = {}
    for record in ranks:
        for tag, count in record["calls"].items():
            total[tag] = total.get(tag, 0) + count
    assert total == {"g0": 1, "g1": 1, "g2": 1}
    assert ranks[0]["calls"] == {"g0": 1, "g2": 1} and ranks[1]["calls"] == {"g1": 1}  # round-robin ownership

    # each rank got its own slice, and together they equal one process scoring the whole batch
    worker = load_worker()
    prompts, completions, ids = worker.global_batch()
    single = worker.make_reward(worker.counting_anchor())
    expected = single(prompts=prompts, completions=completions, completion_ids=ids)
    assert ranks[0]["rewards"] + ranks[1]["rewards"] == expected
    assert expected == [1.0, 1.0, 0.0, -1.0, 1.0, 0.0, 1.0, -1.0, 0.0, 1.0, 0.0, -1.0]

    # all ranks log the same keys and values (TRL averages them across processes)
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert ranks[0]["metrics"]["cat/length_penalty_hits"] == [0.25]
    assert len(ranks[0]["references"]) == len(ranks[1]["references"]) == 6
    assert "\\boxed{7}" in ranks[1]["references"][0]  # rank 1 starts inside g1

    # a comparison arm on the same machinery: g1's majority (7, three of four) is decided across both ranks
    majority = worker.make_majority()(prompts=prompts, completions=completions, completion_ids=ids)
    assert ranks[0]["majority_rewards"] + ranks[1]["majority_rewards"] == majority
    assert majority == [1.0, 1.0, 0.0, -1.0, 1.0, 0.0, 1.0, -1.0, 1.0, 0.0, 1.0, -1.0]
    assert ranks[0]["majority_metrics"] == ranks[1]["majority_metrics"]
