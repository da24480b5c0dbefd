"""The server fixture notices a server that died: one failure naming its exit signal and log, not N connection errors.

Each case runs an inner pytest session on this directory's fixtures (loaded from ``conftest.py``), with a small fake
server in place of llama.cpp: it answers ``/v1/models`` and crashes with SIGSEGV on its first completion request,
as a llama.cpp built with native flags does on a CPU with AMX (or is killed between tests, or crashes at start).
Needs no llama-cpp-python.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFTEST = Path(__file__).with_name("conftest.py")
LOG_LINE = "fake llama: first decode, about to crash"
START_LINE = "fake llama: loading"

FAKE_SERVER = f'''
import http.server, json, os, signal, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"object": "list", "data": [{{"id": "fake"}}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        print({LOG_LINE!r}, flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)

    def log_message(self, *args):
        pass

print({START_LINE!r}, flush=True)
if os.environ.get("FAKE_CRASH_AT_START"):
    os.kill(os.getpid(), signal.SIGSEGV)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''

INNER_CONFTEST = f'''
import importlib.util
import sys

import pytest

spec = importlib.util.spec_from_file_location("server_conftest", {str(CONFTEST)!r})
server_conftest = sys.modules["server_conftest"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(server_conftest)
live_server = server_conftest.live_server
server_url = server_conftest.server_url
pytest_runtest_makereport = server_conftest.pytest_runtest_makereport


@pytest.fixture(scope="session")
def llama_server(request, tmp_path_factory):
    from cat_dspy.lm.servers import stop

    port = server_conftest.free_port()
    log = tmp_path_factory.mktemp("fake-server") / "server.log"
    server = server_conftest.start_server(request.config, [sys.executable, "fake_server.py", str(port)],
                                          f"http://127.0.0.1:{{port}}/v1", log, timeout=60)
    yield server
    stop([server.process])
'''

DIES_IN_A_TEST = '''
import urllib.request


def test_models_answer(server_url):
    with urllib.request.urlopen(server_url + "/models", timeout=10) as reply:
        assert reply.status == 200


def test_first_decode(server_url):
    request = urllib.request.Request(server_url + "/chat/completions", data=b"{}", method="POST")
    urllib.request.urlopen(request, timeout=10)


def test_later_one(server_url):
    urllib.request.urlopen(server_url + "/models", timeout=10)


def test_later_two(server_url):
    urllib.request.urlopen(server_url + "/models", timeout=10)
'''

DIES_BETWEEN_TESTS = '''
import os
import signal


def test_crashes_it(live_server):
    os.kill(live_server.process.pid, signal.SIGSEGV)
    live_server.process.wait(10)


def test_next(server_url):
    pass


def test_after(server_url):
    pass
'''


DIES_AT_START = '''
def test_one(server_url):
    pass


def test_two(server_url):
    pass
'''

CASES = {"dies_in_a_test": DIES_IN_A_TEST, "dies_between_tests": DIES_BETWEEN_TESTS, "dies_at_start": DIES_AT_START}


def inner_session(tmp_path: Path, tests: str, **env: str) -> tuple[str, str]:
    """Run ``tests`` in a fresh pytest session with the fake server; returns its summary line and whole output."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "fake_server.py").write_text(FAKE_SERVER)
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(tests)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "test_inner.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output  # the session fails
    return output.strip().splitlines()[-1], output


@pytest.mark.parametrize("case", CASES)
def test_a_dead_server_fails_once_with_its_signal_and_log(tmp_path: Path, case: str) -> None:
    env = {"FAKE_CRASH_AT_START": "1"} if case == "dies_at_start" else {}
    summary, output = inner_session(tmp_path, CASES[case], **env)
    if case == "dies_in_a_test":
        # the test during which it died fails, its report leads with the death; the later ones skip, saying why
        assert "1 failed, 1 passed, 2 skipped" in summary, output
        assert "FAILED test_inner.py::test_first_decode" in output
        assert "see the failure of test_inner.py::test_first_decode" in output
    elif case == "dies_between_tests":
        # found dead before the next test: that test errors at set-up with the death; the last one skips
        assert "1 passed, 1 skipped, 1 error" in summary, output
        assert "ERROR test_inner.py::test_next" in output
        assert "see the failure of test_inner.py::test_next" in output
    else:
        # never came up: the first test errors with the reason, the other skips
        assert "1 skipped, 1 error" in summary, output
        assert "ERROR test_inner.py::test_one" in output
        assert "did not start (server exited with code -11" in output
    assert "was killed by signal 11 (SIGSEGV)" in output
    assert "ggml-org/llama.cpp#20824" in output  # the likely cause, for a segfault
    # Reported once, not once per test (counted in the reports: the short summary repeats the message in full under
    # CI=true, where pytest does not truncate it).
    reports = output.split("short test summary info")[0]
    assert reports.count("was killed by signal") == 1, output
    assert START_LINE in output  # the tail of the server's own log
    assert (LOG_LINE in output) == (case == "dies_in_a_test")
