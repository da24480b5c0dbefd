"""Shared test set-up: isolated caches and MLflow stores, offline LiteLLM, benchmark data, required components.

Tests that need the real benchmark files carry ``@pytest.mark.needs_data(...)`` and skip, naming the files, on a
checkout with no ``../shared/data`` (and no ``$CAT_DSPY_DATA``: the suite points it at ``../shared/data`` beside the
checkout when that folder exists and the variable is unset); CI sets ``$CAT_DSPY_REQUIRE_DATA`` so that there
they fail instead. Code paths that only need *some* data in a named set's format use :func:`tiny_gsm8k`.

Tests that need a component the README installs (llama.cpp and its server, the embedded model, peft, optuna,
mkdocs) skip where it is missing, through :func:`missing_component` (or ``pytest.importorskip`` of its module); CI sets
``$CAT_DSPY_REQUIRE_COMPONENTS`` so that such a skip is a failure there, and ``local`` cannot quietly run on torch.

Every test starts with its own MLflow store, a copy of one migrated store (:func:`mlflow_template`: migrating a
fresh sqlite store costs seconds, a copy nothing), and its own in-memory DSPy cache (a test marked
``dspy_disk_cache`` gets a disk cache in its ``tmp_path``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from components import COMPONENTS, REQUIRE_COMPONENTS, component_of_skip, components_required

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


XDIST_GROUPS = {
    # pytest-xdist (`make test`: -n 2 --dist loadgroup) runs the tests of one group one after the other, on one worker
    "server": ("tests/server/",),  # one llama.cpp server for all of them (a session fixture: once per worker)
    "trainers": (  # tests that train in process (`cat_dspy_cli`): TRL's imports (~20 s) paid once, on one worker
        "tests/integration/test_train.py::test_cpu_smoke", "tests/integration/test_sft_embedded.py",
        "tests/integration/test_reward_arms_embedded.py::test_gold_arm",
        "tests/integration/test_reward_arms_embedded.py::test_min_ppl_arm",
    ),
    "processes": (  # tests that spawn training or eval processes, each loading the model or TRL itself
        "tests/integration/test_train.py::test_trl_cli", "tests/robustness/test_crash_resume.py",
        "tests/distributed/", "tests/integration/test_readme.py",
    ),
}
"""xdist groups by node id prefix (a test matching none is scheduled on its own); :func:`pytest_xdist_make_scheduler`
reads them, and the tests marked ``exclusive`` (:data:`EXCLUSIVE`) form one more group, ``exclusive``."""


EXCLUSIVE = (
    # tests that need the machine to themselves: they measure wall time against a limit, or run llama.cpp on 2
    # threads (which spin-wait on each other: 10x slower while another process computes); see `_exclusive`
    "tests/robustness/test_hostile_math.py", "tests/robustness/test_faults.py::test_wrapper_faults",
    "tests/unit/test_answers.py::test_extract_is_linear", "tests/unit/test_answers.py::test_hostile_expression",
    "tests/unit/test_answers.py::test_many_threads", "tests/unit/test_extraction.py::test_new_rules_stay_linear",
    "tests/unit/test_parsing.py::test_criteria_huge", "tests/unit/test_parsing.py::test_verdicts_huge",
    "tests/integration/test_llamacpp_embedded.py::test_a_synthesis_sized_prompt",
)
"""Tests (node id prefixes) marked ``exclusive``."""


def xdist_group(nodeid: str) -> str | None:
    """The :data:`XDIST_GROUPS` group of a test (``exclusive`` for one of :data:`EXCLUSIVE`), or None.

    Examples:
        >>> xdist_group("tests/server/test_faults.py::test_x"), xdist_group("tests/unit/test_modules.py::test_y")
        ('server', None)
    """
    if nodeid.startswith(EXCLUSIVE):
        return "exclusive"
    return next((group for group, prefixes in XDIST_GROUPS.items() if nodeid.startswith(prefixes)), None)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: unknown where it is not loaded (-p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadgroup``: pytest-xdist's scheduler by scopes, the scope of a test being its :func:`xdist_group`
    (each group runs on one worker, its tests one after the other) or the test itself. The groups come from the
    node ids, not from ``xdist_group`` marks: pytest 9.2 ignores the node-id suffix through which xdist 3.8
    passes marks on (pytest-dev/pytest-xdist#1386), so the marks would silently stop grouping."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid) or nodeid

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``needs_data`` are skipped (reported at the test, with the files it needs) where those files
    are not on this machine; with ``$CAT_DSPY_REQUIRE_DATA`` they are kept, and fail in :func:`pytest_runtest_setup`.
    Tests of :data:`EXCLUSIVE` get the ``exclusive`` mark."""
    for item in items:
        if item.nodeid.startswith(EXCLUSIVE):
            item.add_marker(pytest.mark.exclusive)
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


def _fail_component_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a report skipped by ``pytest.importorskip`` of a README component into a failure naming it, when
    ``$CAT_DSPY_REQUIRE_COMPONENTS`` is set."""
    if not report.skipped or not components_required() or not isinstance(report.longrepr, tuple):
        return
    path, line, reason = report.longrepr
    module = component_of_skip(str(reason))
    if module is None or hasattr(report, "wasxfail"):
        return
    report.outcome = "failed"
    report.longrepr = (f"{path}:{line}: {COMPONENTS[module]} is not installed ({reason}); "
                       f"{REQUIRE_COMPONENTS} is set, so this is not skipped")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """With ``$CAT_DSPY_REQUIRE_COMPONENTS`` set, a test skipped by ``pytest.importorskip`` of a README component
    (in the test or in a fixture) fails instead, naming the component."""
    outcome = yield
    _fail_component_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same for a whole module skipped at import by ``pytest.importorskip`` of a component: a collection error."""
    outcome = yield
    _fail_component_skip(outcome.get_result())


_HELD: list = []
"""The open turnstile and lock files while this worker holds the run to itself (a run of exclusive tests)."""


def _release_exclusive() -> None:
    import fcntl

    turnstile, lock = _HELD
    fcntl.flock(lock, fcntl.LOCK_UN)
    fcntl.flock(turnstile, fcntl.LOCK_UN)
    turnstile.close()
    lock.close()
    _HELD.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After the last of consecutive ``exclusive`` tests on this worker, let the other workers run again (the
    ``exclusive`` xdist group runs them one after the other, so the others wait once for all of them)."""
    yield
    if _HELD and (nextitem is None or nextitem.get_closest_marker("exclusive") is None):
        _release_exclusive()


@pytest.fixture(autouse=True)
def _exclusive(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under pytest-xdist, a test marked ``exclusive`` runs while no other worker runs a test: every test holds a
    shared lock of the run (a file lock), an exclusive test the lock itself. A turnstile lock in front keeps
    workers from starting new tests while an exclusive one waits for the running ones to finish. Consecutive
    exclusive tests keep the lock from one to the next (:func:`pytest_runtest_protocol` releases it)."""
    import fcntl

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:  # one process: nothing runs beside the test
        yield
        return
    folder = Path(request.config._tmp_path_factory.getbasetemp()).parent  # type: ignore[attr-defined]
    paths = folder / f"exclusive-{run}.turnstile", folder / f"exclusive-{run}.lock"
    if request.node.get_closest_marker("exclusive") is not None:
        if not _HELD:
            turnstile, lock = open(paths[0], "a"), open(paths[1], "a")
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            fcntl.flock(lock, fcntl.LOCK_EX)
            _HELD.extend((turnstile, lock))
        yield
        return
    with open(paths[0], "a") as turnstile, open(paths[1], "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_TEMPLATE: dict[str, Path] = {}


def mlflow_template(config: pytest.Config) -> Path:
    """An MLflow sqlite store with its tables created, to copy per test (migrating one costs seconds, a copy ~1 ms).

    Created once (in a subprocess, under a file lock, so parallel workers build it once) and kept in pytest's cache
    folder, keyed by the versions of MLflow and of the database libraries; without a cache folder, in the session's
    temp folder.
    """
    if "path" in _TEMPLATE:
        return _TEMPLATE["path"]
    from filelock import FileLock

    versions = "-".join(importlib.metadata.version(p) for p in ("mlflow", "sqlalchemy", "alembic"))
    cache = getattr(config, "cache", None)
    if cache is not None:
        folder = Path(cache.mkdir(f"mlflow-template-{versions}"))
    else:
        folder = Path(config._tmp_path_factory.getbasetemp()) / f"mlflow-template-{versions}"  # type: ignore[attr-defined]
        folder.mkdir(parents=True, exist_ok=True)
    template = folder / "mlflow.db"
    with FileLock(str(folder / "create.lock")):
        if not template.is_file():
            partial = folder / f"creating-{os.getpid()}.db"
            code = ("from mlflow.tracking import MlflowClient; import sys; "
                    "MlflowClient('sqlite:///' + sys.argv[1]).search_experiments()")
            subprocess.run([sys.executable, "-c", code, str(partial)], check=True, capture_output=True, timeout=600,
                           env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{partial}"})
            os.replace(partial, template)
    _TEMPLATE["path"] = template
    return template


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama (built here, no real weights) with a 300-token byte-level BPE tokenizer and a ChatML
    template: the tiny policy of the fast local-engine and TRL tests."""
    import torch
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tokenizer_models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = Tokenizer(tokenizer_models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["What is 2+2? The answer is 4.", "Natalia sold clips to 48 of her friends.", "#### 72"] * 20
    tokenizer.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    hf.chat_template = TINY_CHAT_TEMPLATE
    hf.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(hf),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,  # room for a synthesis prompt of this byte-level tokenizer
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=hf.bos_token_id,
        eos_token_id=hf.eos_token_id,
        pad_token_id=hf.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _isolated_stores(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own MLflow store (a copy of :func:`mlflow_template`) and DSPy cache (in memory; on disk in
    ``tmp_path`` for a test marked ``dspy_disk_cache``); nothing leaks between tests."""
    import dspy

    shutil.copyfile(mlflow_template(request.config), tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):  # set by mlflow/TRL in-process
        monkeypatch.delenv(name, raising=False)
    if "mlflow" in sys.modules:  # an earlier test's set_tracking_uri()/set_experiment() would otherwise leak in
        sys.modules["mlflow"].set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
        monkeypatch.setattr(sys.modules["mlflow"].tracking.fluent, "_active_experiment_id", None)
    monkeypatch.chdir(tmp_path)
    if request.node.get_closest_marker("dspy_disk_cache"):
        dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True,
                             disk_cache_dir=str(tmp_path / "dspy_cache"))
    else:  # opening a disk cache costs ~0.1-0.6 s a test
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None)
    yield


@pytest.fixture
def cat_dspy_cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Run the ``cat-dspy`` console script in this process: ``cat_dspy_cli(*argv, **env)`` -> its stdout and stderr
    (it must exit 0). Its heavy imports (torch, TRL, MLflow) are paid once per worker, not once per command; the
    environment variables given are set for the rest of the test."""
    from cat_dspy import cli

    def run(*argv: object, **env: str) -> str:
        for name, value in {"TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", **env}.items():
            monkeypatch.setenv(name, value)
        capfd.readouterr()
        code = cli.main([str(a) for a in argv])
        out, err = capfd.readouterr()
        assert code == 0, (out[-3000:], err[-6000:])
        return out + err

    return run


@pytest.fixture
def fresh_word_warning(monkeypatch):
    """The once-per-process warning that lengths are counted in words (:func:`cat_dspy.scoring.rewards.word_lengths`)
    not given yet, so that a test sees it whatever ran before."""
    from cat_dspy.scoring import rewards

    monkeypatch.setattr(rewards, "_word_lengths_warned", False)


class JsonServer:
    """A stub HTTP endpoint on a free local port: every POST is answered with ``reply(body)`` as JSON.

    ``url`` is its ``/v1`` base URL (an OpenAI-compatible server for LiteLLM); ``bodies`` holds the requests' JSON
    bodies in arrival order, the current one already appended when ``reply`` runs, and ``requests`` each request's
    ``(path, headers)`` in the same order.
    """

    def __init__(self, reply: Callable[[dict], dict]):
        self.bodies: list[dict] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        lock, stub = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    stub.bodies.append(body)
                    stub.requests.append((self.path, dict(self.headers.items())))
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
