"""``solve`` and ``eval`` through the ``openai/`` route against a real llama.cpp server on 127.0.0.1.

A counting proxy sits between LiteLLM and the server, so the per-role usage the CLI reports is checked against
the HTTP requests that actually went over the wire.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

MODEL = "openai/smollm2"


def _posts(proxy) -> list[dict]:
    return proxy.requests(lambda r: r["path"].endswith("/chat/completions"))


def test_solve_mixes_backends_per_role(cli, proxy_factory) -> None:
    """Policy and judge over HTTP, anchor in process: one run, three roles, two backends."""
    proxy = proxy_factory()
    [result] = cli(["solve", "What is 2+3?", "--g", "2", "--max-tokens", "32", "--policy", MODEL,
                  "--api-base", proxy.url, "--anchor", "local", "--judge", MODEL, "--json", "--seed", "0"])
    usage, posts = result["usage"], _posts(proxy)
    assert len(result["rollouts"]) == 2 and not any(f.startswith("rollout_error") for f in result["failures"])
    assert any(r.strip() for r in result["rollouts"])
    # --seed 0 with G=2: each request carries its own seed, so the rollouts are not copies of each other.
    assert len({p["body"].get("seed") for p in posts}) == len(posts) and len(set(result["rollouts"])) == 2
    # Every HTTP request is a policy call (verifiable mode: the judge has nothing to do), and vice versa.
    assert usage["policy"]["calls"] == len(posts) >= 1
    assert all(p["body"]["model"] == "smollm2" and p["body"]["max_tokens"] == 32 for p in posts)
    assert "max_completion_tokens" not in posts[0]["body"]  # the llama.cpp trap: LiteLLM sends max_tokens
    assert 0 < usage["policy"]["completion_tokens"] <= 32 * 2
    assert usage["policy"].get("generate_calls", 0) == 0  # no local generate for an HTTP role
    # The anchor ran in process: one LM call, batched generate on the local engine.
    assert usage["anchor"]["calls"] == 1 and usage["anchor"]["generate_calls"] >= 1
    assert usage.get("judge", {}).get("calls", 0) == 0


def test_solve_rubric_all_roles_over_http(cli, proxy_factory) -> None:
    """Every role over HTTP (rubric mode): per-role usage adds up to the requests seen on the wire."""
    proxy = proxy_factory()
    [result] = cli(["solve", "Give two tips for sleeping well.", "--mode", "rubric", "--g", "2", "--max-tokens", "32",
                  "--anchor-max-tokens", "128", "--policy", MODEL, "--anchor", MODEL, "--judge", MODEL,
                  "--api-base", proxy.url, "--json", "--seed", "1"])
    usage, posts = result["usage"], _posts(proxy)
    calls = {role: int(usage.get(role, {}).get("calls", 0)) for role in ("policy", "anchor", "judge")}
    assert sum(calls.values()) == len(posts)
    assert calls["policy"] >= 1 and calls["anchor"] >= 1
    assert calls["judge"] == (2 if result["rubric"] else 0)  # one judge call per rollout once there is a rubric
    assert all(u.get("generate_calls", 0) == 0 for u in usage.values())
    assert len(result["rewards"]) == 2 and all(0.0 <= r <= 1.0 for r in result["rewards"])


def test_canary_key_never_reaches_mlflow_or_artifacts(cli, proxy_factory, monkeypatch, tmp_path: Path) -> None:
    """A key in the environment is sent to the server but appears nowhere in the MLflow store or artifacts."""
    canary = f"sk-CANARY-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    proxy = proxy_factory()
    [result] = cli(["solve", "What is 3+4?", "--g", "2", "--max-tokens", "16", "--policy", MODEL, "--anchor", MODEL,
                  "--judge", MODEL, "--api-base", proxy.url, "--json", "--traces"])
    assert result["rollouts"] and any(r.strip() for r in result["rollouts"])
    posts = _posts(proxy)
    assert posts and all(p["auth"] == f"Bearer {canary}" for p in posts)  # the key was live in this run
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # cwd: mlflow.db, artifacts, DSPy cache
    assert any(p.name == "mlflow.db" for p in files)
    assert any("artifacts" in p.parts or "mlruns" in p.parts or "mlartifacts" in p.parts for p in files)
    leaks = [str(p) for p in files if canary.encode() in p.read_bytes()]
    assert not leaks, f"the API key leaked into {leaks}"
    assert canary not in str(result)


@pytest.mark.skipif(importlib.util.find_spec("cat_dspy.cli.eval") is None,
                    reason="the eval CLI (cat_dspy.cli.eval) does not exist yet")
def test_eval_through_server(cli, proxy_factory, data_dir: Path) -> None:
    """``cat-dspy eval --limit 2`` with policy and anchor on the server; usage per role matches the wire."""
    proxy = proxy_factory()
    rows = cli(["eval", "--dataset", "gsm8k", "--limit", "2", "--g", "1,2", "--max-tokens", "32", "--policy", MODEL,
                "--anchor", MODEL, "--api-base", proxy.url, "--data-dir", str(data_dir), "--json", "--no-progress"])
    cat = {row["g"]: row for row in rows if row["method"] == "cat"}
    assert set(cat) == {1, 2} and all(row["n"] == 2 for row in rows)
    for row in cat.values():
        assert row["usage"]["policy"]["calls"] >= 2 and row["usage"]["anchor"]["calls"] >= 2
    # G=2 needs 2 rollouts per question (shared by every method), plus anchor and self-BoN calls on top.
    posts = _posts(proxy)
    assert len(posts) >= cat[2]["usage"]["policy"]["calls"] + cat[2]["usage"]["anchor"]["calls"]
    assert all(p["body"]["max_tokens"] == 32 for p in posts)


@pytest.mark.skipif(not os.environ.get("CAT_DSPY_VLLM_BASE"), reason="set CAT_DSPY_VLLM_BASE to a vLLM /v1 URL")
def test_hosted_vllm_route_samples_with_n(cli) -> None:
    """Opt-in: ``hosted_vllm/`` against a real vLLM server (``CAT_DSPY_VLLM_MODEL``, default ``smollm2``): the G
    rollouts come back from one request with ``n=G``."""
    model = f"hosted_vllm/{os.environ.get('CAT_DSPY_VLLM_MODEL', 'smollm2')}"
    [result] = cli(["solve", "What is 2+3?", "--g", "4", "--max-tokens", "32", "--policy", model, "--anchor", model,
                    "--judge", model, "--api-base", os.environ["CAT_DSPY_VLLM_BASE"], "--json"])
    assert len(result["rollouts"]) == 4 and all(result["rollouts"])
    assert result["usage"]["policy"]["calls"] == 1 and result["usage"]["anchor"]["calls"] == 1
