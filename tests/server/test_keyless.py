"""A keyless local server: ``--policy openai/smollm2 --api-base URL`` with no key in the environment works, and
API-only test-time use (``python -m cat_dspy solve`` and ``eval`` on API models) imports none of torch, TRL,
transformers, accelerate, datasets or peft (they are the ``[train]`` extra)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MODEL = "openai/smollm2"  # the alias the session server serves (tests/server/conftest.py)

pytestmark = pytest.mark.server

TRAIN_ONLY = ("torch", "trl", "transformers", "accelerate", "datasets", "peft")
BLOCKER = f'''
import sys

class _TrainOnly:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAIN_ONLY!r}:
            raise ModuleNotFoundError(f"{{name}} is not installed here (an API-only install)", name=name)

sys.meta_path.insert(0, _TrainOnly())
'''


def test_solve_against_a_keyless_server_with_no_key_set_and_no_training_stack(live_server, tmp_path):
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env |= {"PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), str(repo)]), "OMP_NUM_THREADS": "1",
            "DSPY_CACHEDIR": str(tmp_path / "dspy")}  # a cold cache: every call reaches the server
    argv = [sys.executable, "-m", "cat_dspy", "solve", "What is 2 + 3?", "--g", "2", "--max-tokens", "24",
            "--anchor-max-tokens", "32", "--seed", "0", "--json", "--api-base", live_server.url,
            *[arg for role in ("policy", "anchor", "judge") for arg in (f"--{role}", MODEL)]]
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["failed_calls"] == {"rollout": 0, "anchor": 0, "judge": 0}, result["failures"]
    assert all(result["rollouts"]) and result["reference"], result
    assert result["usage"]["policy"]["completion_tokens"] > 0
    assert "Missing credentials" not in done.stderr and "is not installed here" not in done.stderr


def test_api_only_eval_runs_without_the_training_stack_and_without_a_key(json_server, tmp_path):
    """`pip install -e .` (no [train]) is enough for test-time CaT on API models: an eval against a keyless
    OpenAI-compatible endpoint, with torch, TRL, transformers, accelerate, datasets and peft unimportable."""
    def reply(body):
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "The answer is \\boxed{4}"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}

    server = json_server(reply)
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": q, "answer": "4"}) + "\n"
                                              for q in ("What is 2+2?",)))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    repo = Path(__file__).resolve().parents[2]
    env |= {"PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), str(repo)]), "DSPY_CACHEDIR": str(tmp_path / "c")}
    argv = [sys.executable, "-m", "cat_dspy", "eval", "--dataset", "q.jsonl", "--g", "2", "--methods",
            "single,cat", "--api-base", server.url, "--run-dir", "runs/x",
            *[arg for role in ("policy", "anchor", "judge") for arg in (f"--{role}", "openai/m")]]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is not installed here" not in done.stderr and "Missing credentials" not in done.stderr
    assert len(server.bodies) >= 3 and "1.000" in done.stdout  # 2 rollouts and 1 synthesis, on the wire
