"""Shared test set-up: isolated caches and MLflow stores, offline LiteLLM, benchmark data.

Tests that need the real benchmark files carry ``@pytest.mark.needs_data(...)`` and skip, naming the files, on a
checkout with no ``../shared/data`` (and no ``$CAT_DSPY_DATA``: the suite points it at ``../shared/data`` beside the
checkout when that folder exists and the variable is unset); CI sets ``$CAT_DSPY_REQUIRE_DATA`` so that there
they fail instead. Code paths that only need *some* data in a named set's format use :func:`tiny_gsm8k`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
if (REPO.parent / "shared" / "data").is_dir():
    os.environ.setdefault("CAT_DSPY_DATA", str(REPO.parent / "shared" / "data"))  # the benchmark files beside us
REQUIRE_DATA = "CAT_DSPY_REQUIRE_DATA"  # set (CI): a test whose benchmark files are missing fails instead of skipping


def needed_files(node: pytest.Item) -> list[str]:
    """The benchmark files (relative to a data dir) that a test's ``needs_data`` markers ask for.

    ``@pytest.mark.needs_data("gsm8k", "math500", split=None)``: the named sets of :data:`cat_dspy.datasets.DATASETS`,
    in ``split`` (default: each set's default split).
    """
    from cat_dspy.datasets import DATASETS

    files = []
    for mark in node.iter_markers("needs_data"):
        for name in mark.args:
            spec = DATASETS[name]
            files.append(spec.files[mark.kwargs.get("split") or spec.default_split])
    return files


def benchmark_data_dir(files: list[str]) -> Path | None:
    """The first data dir holding every one of ``files``, looked up as :func:`cat_dspy.datasets.data_dirs` does
    (``--data-dir``, then ``$CAT_DSPY_DATA``)."""
    from cat_dspy.datasets import data_dirs

    return next((d for d in data_dirs() if d.is_dir() and all((d / f).is_file() for f in files)), None)


def missing_data_reason(files: list[str]) -> str:
    """Why a test is skipped: the files it needs, and how to point the tests at them."""
    from cat_dspy.datasets import ENV_VAR

    return (f"needs ../shared/data ({', '.join(files) or 'any benchmark'}); "
            f"set {ENV_VAR}=DIR to a folder holding {'them' if len(files) > 1 else 'it'}")


def missing_data(files: list[str]) -> None:
    """Skip the test for lack of benchmark files (fail instead where ``$CAT_DSPY_REQUIRE_DATA`` is set)."""
    reason = missing_data_reason(files)
    if os.environ.get(REQUIRE_DATA):
        pytest.fail(f"{reason} ({REQUIRE_DATA} is set, so this is not skipped)", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``needs_data`` are skipped (reported at the test, with the files it needs) where those files
    are not on this machine; with ``$CAT_DSPY_REQUIRE_DATA`` they are kept, and fail in :func:`pytest_runtest_setup`."""
    if os.environ.get(REQUIRE_DATA):
        return
    for item in items:
        files = needed_files(item)
        if files and benchmark_data_dir(files) is None:
            item.add_marker(pytest.mark.skip(reason=missing_data_reason(files)))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """With ``$CAT_DSPY_REQUIRE_DATA`` set, a ``needs_data`` test whose files are missing fails."""
    files = needed_files(item)
    if files and benchmark_data_dir(files) is None:
        missing_data(files)


@pytest.fixture
def data_dir(request: pytest.FixtureRequest) -> Path:
    """The folder holding the real benchmark files of the test's ``needs_data`` marker (skips where absent)."""
    files = needed_files(request.node)
    path = benchmark_data_dir(files)
    if path is None:
        missing_data(files)
    return path


@pytest.fixture
def tiny_gsm8k(tmp_path: Path) -> Path:
    """A data dir written by the test: ``gsm8k/train.jsonl`` (16) and ``gsm8k/test.jsonl`` (8), generated
    arithmetic in GSM8K's format (a worked solution ending in ``#### N``), for code paths that read the named set."""
    root = tmp_path / "tiny-data"
    (root / "gsm8k").mkdir(parents=True)
    for split, count, offset in (("train", 16, 0), ("test", 8, 40)):
        lines = []
        for i in range(offset, offset + count):
            a, b = 3 + i, 2 * i + 5
            lines.append(json.dumps({
                "question": f"Ann has {a} apples and buys {b} more. How many apples does she have now?",
                "answer": f"She has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}",
            }))
        (root / "gsm8k" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(autouse=True)
def _isolated_stores(tmp_path, monkeypatch):
    """Every test gets its own MLflow store and DSPy disk cache; nothing leaks between tests."""
    import dspy

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):  # set by mlflow/TRL in-process
        monkeypatch.delenv(name, raising=False)
    if "mlflow" in sys.modules:  # an earlier test's set_tracking_uri()/set_experiment() would otherwise leak in
        sys.modules["mlflow"].set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
        monkeypatch.setattr(sys.modules["mlflow"].tracking.fluent, "_active_experiment_id", None)
    monkeypatch.chdir(tmp_path)
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(tmp_path / "dspy_cache"))
    yield


@pytest.fixture
def fresh_word_warning(monkeypatch):
    """The once-per-process warning that lengths are counted in words (:func:`cat_dspy.scoring.rewards.word_lengths`)
    not given yet, so that a test sees it whatever ran before."""
    from cat_dspy.scoring import rewards

    monkeypatch.setattr(rewards, "_word_lengths_warned", False)


class JsonServer:
    """A stub HTTP endpoint on a free local port: every POST is answered with ``reply(body)`` as JSON.

    ``url`` is its ``/v1`` base URL (an OpenAI-compatible server for LiteLLM); ``bodies`` holds the requests' JSON
    bodies in arrival order, the current one already appended when ``reply`` runs.
    """

    def __init__(self, reply: Callable[[dict], dict]):
        self.bodies: list[dict] = []
        lock, stub = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    stub.bodies.append(body)
                    data = json.dumps(reply(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def json_server() -> Iterator[Callable[[Callable[[dict], dict]], JsonServer]]:
    """Start stub JSON endpoints: ``json_server(reply)`` -> a running :class:`JsonServer`, closed after the test."""
    servers: list[JsonServer] = []

    def start(reply: Callable[[dict], dict]) -> JsonServer:
        servers.append(JsonServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
