"""``solve`` and ``eval`` through the ``openai/`` route against a real llama.cpp server on 127.0.0.1.

A counting proxy sits between LiteLLM and the server, so the per-role usage the CLI reports is checked against
the HTTP requests that actually went over the wire.
"""

from __future__ import annotations

import html
import json
import os
import uuid
from pathlib import Path

import pytest

from cat_dspy.signatures import JudgeAll, ProposeCriteria, SynthesizeFreeform, SynthesizeReasoning

pytestmark = pytest.mark.server

MODEL = "openai/smollm2"


RUBRIC = ["The response recommends a regular sleep schedule.", "The response warns against caffeine late in the day.",
          "The response mentions keeping the bedroom dark and quiet."]
ROLE_MARKS = {"judge": JudgeAll.instructions.split(".")[0], "anchor_rubric": ProposeCriteria.instructions.split(":")[0],
              "anchor_free": SynthesizeFreeform.instructions.split(".")[0],
              "anchor": SynthesizeReasoning.instructions.split(".")[0]}  # first sentences of their instructions


def _posts(proxy) -> list[dict]:
    return proxy.requests(lambda r: r["path"].endswith("/chat/completions"))


def _text(post: dict) -> str:
    return "\n".join(str(m.get("content", "")) for m in post["body"]["messages"])


def _role(post: dict) -> str:
    """Which CaT role sent a request, from the instructions in its prompt."""
    text = _text(post)
    return next((role.split("_")[0] for role, mark in ROLE_MARKS.items() if mark in text), "policy")


def _wire_usage(posts: list[dict]) -> dict[str, int]:
    """Calls and tokens of ``posts`` as the server counted them (the ``usage`` of each reply)."""
    assert all(p["status"] == 200 and p["usage"] for p in posts), [(p["status"], p["usage"]) for p in posts]
    return {"calls": len(posts), **{key: sum(p["usage"][key] for p in posts)
                                    for key in ("prompt_tokens", "completion_tokens")}}


def _reported(usage: dict) -> dict[str, int]:
    return {key: int(usage.get(key, 0)) for key in ("calls", "prompt_tokens", "completion_tokens")}


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
    assert _reported(usage["policy"]) == _wire_usage(posts)  # calls and tokens exactly as the server counted them
    assert usage["policy"].get("generate_calls", 0) == 0  # no local generate for an HTTP role
    # The anchor ran in process: one LM call, batched generate on the local engine.
    assert usage["anchor"]["calls"] == 1 and usage["anchor"]["generate_calls"] >= 1
    assert usage.get("judge", {}).get("calls", 0) == 0


def test_solve_rubric_all_roles_over_http(cli, proxy_factory) -> None:
    """Every role over HTTP (rubric mode): per-role usage equals the requests and tokens seen on the wire.

    The anchor's rubric request is answered by the proxy with a fixed three-criterion rubric (the 135M model rarely
    writes one), so the judge always has criteria to grade: its calls go to the real server.
    """
    rubric = "<rubric>\n" + "".join(f"<criterion>{c}</criterion>\n" for c in RUBRIC) + "</rubric>"
    proxy = proxy_factory(script=lambda body: rubric if ROLE_MARKS["anchor_rubric"] in _text({"body": body}) else None)
    [result] = cli(["solve", "Give two tips for sleeping well.", "--mode", "rubric", "--g", "2", "--max-tokens", "32",
                  "--anchor-max-tokens", "128", "--policy", MODEL, "--anchor", MODEL, "--judge", MODEL,
                  "--api-base", proxy.url, "--json", "--seed", "1"])
    usage, posts = result["usage"], _posts(proxy)
    assert [p["outcome"] for p in posts].count("scripted") == 1  # the one rubric request
    by_role = {role: [p for p in posts if _role(p) == role] for role in ("policy", "anchor", "judge")}
    assert sum(map(len, by_role.values())) == len(posts)
    for role, role_posts in by_role.items():  # calls and tokens per role, exactly as the server counted them
        assert _reported(usage.get(role, {})) == _wire_usage(role_posts), role
    assert len(by_role["policy"]) == 2 and len(by_role["anchor"]) == 2  # G rollouts; synthesis + rubric
    assert result["rubric"] == RUBRIC
    # The judge really graded: one call per rollout, each on that rollout against every criterion.
    judge = by_role["judge"]
    assert len(judge) == 2 and all(p["outcome"] == "ok" and p["usage"]["completion_tokens"] > 0 for p in judge)
    assert all(all(c in _text(p) for c in RUBRIC) for p in judge)
    for rollout in filter(str.strip, result["rollouts"]):
        assert any(html.unescape(rollout.strip()) in html.unescape(_text(p)) for p in judge), rollout
    assert all(u.get("generate_calls", 0) == 0 for u in usage.values())
    assert len(result["rewards"]) == 2 and all(0.0 <= r <= 1.0 for r in result["rewards"])
    assert all(r * len(RUBRIC) == pytest.approx(round(r * len(RUBRIC))) for r in result["rewards"])  # k of 3 met


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


def test_eval_through_server(cli, proxy_factory, tmp_path: Path) -> None:
    """``cat-dspy eval`` with policy and anchor on the server: the LM work it records equals the wire's."""
    from cat_dspy.evaluation.runner import RESULTS_FILE, record_usage
    from cat_dspy.lm.usage import merge_usage

    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {a + 3}?", "answer": str(2 * a + 3)}) + "\n"
                            for a in (4, 11)))
    proxy = proxy_factory()
    run_dir = tmp_path / "run"
    rows = cli(["eval", "--dataset", str(data), "--g", "1,2", "--max-tokens", "32", "--policy", MODEL,
                "--anchor", MODEL, "--api-base", proxy.url, "--run-dir", str(run_dir), "--json", "--no-progress"])
    cat = {row["g"]: row for row in rows if row["method"] == "cat"}
    assert set(cat) == {1, 2} and all(row["n"] == 2 for row in rows)
    for row in cat.values():
        assert row["usage"]["policy"]["calls"] >= 2 and row["usage"]["anchor"]["calls"] >= 2
    posts = _posts(proxy)
    assert all(p["body"]["max_tokens"] == 32 for p in posts)
    # Everything the run recorded (rollouts, every method's own calls) is what went over the wire, token for token.
    records = [json.loads(line) for line in (run_dir / RESULTS_FILE).read_text().splitlines() if line.strip()]
    assert len(records) == 2
    total: dict = {}
    for record in records:
        merge_usage(total, record_usage(record))
    assert set(total) <= {"policy", "anchor"}
    recorded = {key: sum(_reported(counts)[key] for counts in total.values())
                for key in ("calls", "prompt_tokens", "completion_tokens")}
    assert recorded == _wire_usage(posts)
    for role in ("policy", "anchor"):  # and per role: rollouts and self-BoN's selections vs CaT's syntheses
        assert _reported(total[role]) == _wire_usage([p for p in posts if _role(p) == role]), role
    assert sum(len(r["rollouts"]) for r in records) == 2 * 2  # G_max rollouts per question, shared by every G


@pytest.mark.skipif(not os.environ.get("CAT_DSPY_VLLM_BASE"), reason="set CAT_DSPY_VLLM_BASE to a vLLM /v1 URL")
def test_hosted_vllm_route_samples_with_n(cli) -> None:
    """Opt-in: ``hosted_vllm/`` against a real vLLM server (``CAT_DSPY_VLLM_MODEL``, default ``smollm2``): the G
    rollouts come back from one request with ``n=G``."""
    model = f"hosted_vllm/{os.environ.get('CAT_DSPY_VLLM_MODEL', 'smollm2')}"
    [result] = cli(["solve", "What is 2+3?", "--g", "4", "--max-tokens", "32", "--policy", model, "--anchor", model,
                    "--judge", model, "--api-base", os.environ["CAT_DSPY_VLLM_BASE"], "--json"])
    assert len(result["rollouts"]) == 4 and all(result["rollouts"])
    assert result["usage"]["policy"]["calls"] == 1 and result["usage"]["anchor"]["calls"] == 1
