"""API keys: a keyless server at an ``api_base`` needs no variable set, and a key a server rejects reads as an
authentication error that names the variable to set, never as a server error, and never shows the key."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cat_dspy.lm.models import PLACEHOLDER_KEY, api_key_env, explain_backend_error, make_lm
from cat_dspy.modules import CaT
from cat_dspy.testing import scripted_lm

SECRET = "sk-test-0123456789abcdef"


def _reply(body: dict) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "\\boxed{5}"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def test_an_api_base_with_no_key_set_gets_the_placeholder_and_reaches_the_server(json_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = json_server(_reply)
    lm = make_lm("openai/smollm2", api_base=server.url, num_retries=0, cache=False)
    assert lm.kwargs["api_key"] == PLACEHOLDER_KEY
    assert lm("What is 2 + 3?") == ["\\boxed{5}"] and len(server.bodies) == 1


def test_a_key_in_the_environment_is_left_to_litellm_and_no_api_base_gets_no_placeholder(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert "api_key" not in make_lm("openai/smollm2", api_base="http://127.0.0.1:9/v1").kwargs
    monkeypatch.delenv("OPENAI_API_KEY")
    assert "api_key" not in make_lm("openai/gpt-4o-mini").kwargs
    assert api_key_env("hosted_vllm/Qwen/Qwen3-4B") == "HOSTED_VLLM_API_KEY"


@pytest.fixture
def rejecting_server():
    """An OpenAI-compatible endpoint that answers every request with 401, as OpenAI does for a bad key."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                         "code": "invalid_api_key"}}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_rejected_key_is_an_authentication_error_naming_the_variable(rejecting_server, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    policy = make_lm("openai/smollm2", api_base=rejecting_server, num_retries=0, cache=False)
    cat = CaT(g=2, policy=policy, anchor=scripted_lm(lambda p: "\\boxed{5}"), judge=scripted_lm(lambda p: "yes"))
    pred = cat(question="What is 2 + 3?")
    errors = [f for f in pred.failures if f.startswith("rollout_error")]
    assert len(errors) == 2, pred.failures
    for reason in errors:
        assert reason.startswith("rollout_error: LMAuthError: authentication failed for openai/smollm2"), reason
        assert "set OPENAI_API_KEY" in reason and "Server" not in reason and SECRET not in reason
    assert SECRET not in caplog.text and "LMAuthError" in caplog.text


def test_a_missing_key_reads_as_an_authentication_error_not_a_server_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lm = make_lm("openai/gpt-4o-mini", num_retries=0, cache=False)  # no api_base: no placeholder
    with pytest.raises(Exception) as caught:
        lm("hi")
    assert explain_backend_error(caught.value) == (
        "authentication failed for openai/gpt-4o-mini: no API key was found; set OPENAI_API_KEY")
