"""Every command the README shows runs as written.

The README's fenced ``bash`` and ``python`` blocks are parsed and run, each in a fresh process on the embedded model
(``cat-dspy`` is this checkout's CLI, run as ``python -m cat_dspy``). A block that needs what a test run does not
have says so in a comment on the line before it, ``<!-- needs: gpu -->``, and is skipped by that name; ``text``
blocks are output, and the demo's is checked against a real run of the demo's command. The docs site builds with
``mkdocs build --strict``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from components import missing_component

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NEEDS = {  # the markers a block may carry, and why a test run skips such a block
    "setup": "sets up a fresh clone (creates .venv, builds llama.cpp) and runs the whole suite",
    "gpu": "trains a 4B model: needs a GPU and a model download",
    "network": "downloads a model or data set",
    "api-key": "calls a hosted API: needs its key and the network",
    "server": "needs an OpenAI-compatible server running at the URL it names",
    "minutes": "runs for minutes on a CPU (training, a 50-question eval) or does not exit (a UI server)",
}
BLOCK = re.compile(r"(?:<!-- needs: (?P<needs>[\w-]+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)\n```", re.S)


def blocks() -> list[tuple[str, str | None, str, int]]:
    """(language, needs marker or None, body, line number) of every fenced block of the README."""
    text = README.read_text()
    return [(m["lang"], m["needs"], m["body"], text.count("\n", 0, m.start()) + 1) for m in BLOCK.finditer(text)]


def commands(body: str) -> list[str]:
    """The commands of a bash block: one per line, comments dropped."""
    lines = (line.split("  #")[0].strip() for line in body.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def argv(command: str) -> list[str]:
    """A README command as run here: ``cat-dspy`` (or ``.venv/bin/cat-dspy``) and ``python`` are this
    interpreter running this checkout."""
    words = shlex.split(command)
    if words[0] in ("cat-dspy", ".venv/bin/cat-dspy"):
        return [sys.executable, "-m", "cat_dspy", *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    raise AssertionError(f"README command {command!r}: mark its block with <!-- needs: ... --> or run it here")


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DSPY_CACHEDIR": str(tmp_path / "dspy")}
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def test_every_block_is_run_or_marked_with_a_known_need():
    found = blocks()
    assert found, "no fenced block in the README"
    for lang, needs, body, line in found:
        assert lang in ("bash", "python", "text"), f"README line {line}: a block without a known language"
        assert needs is None or needs in NEEDS, f"README line {line}: unknown marker {needs!r} (known: {set(NEEDS)})"
        if lang == "bash" and needs is None:
            for command in commands(body):
                argv(command)  # every unmarked command is one this test can run
    assert {"gpu", "setup"} <= {needs for _, needs, _, _ in found}  # the training snippet and `make` are marked


CASES = [pytest.param(lang, needs, body, id=f"line{line}-{lang}") for lang, needs, body, line in blocks()
         if lang in ("bash", "python")]


@pytest.mark.parametrize(("lang", "needs", "body"), CASES)
def test_readme_block_runs_as_written(lang, needs, body, tmp_path):
    if needs:
        pytest.skip(f"needs: {needs} ({NEEDS[needs]})")
    if lang == "python":
        (tmp_path / "snippet.py").write_text(body)
        done = run([sys.executable, "snippet.py"], tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        return
    for command in commands(body):
        if " solve " in command and "--api-base" not in command:
            continue  # the demo's command: run (twice) and its output checked by test_the_demo_prints_...
        done = run(argv(command), tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stderr[-4000:]}"


def test_the_demo_prints_what_the_readme_shows(tmp_path):
    """The demo's command prints the lines the README's excerpt shows, with no library INFO lines; run again, its
    calls are answered from DSPy's cache and the compute summary says so."""
    demo = next(c for lang, needs, body, _ in blocks() if lang == "bash" and not needs
                for c in commands(body) if " solve " in c)
    excerpt = next(body for lang, _, body, _ in blocks() if lang == "text")
    makefile = (ROOT / "Makefile").read_text()
    question = re.search(r"^QUESTION \?= (.+)$", makefile, re.M).group(1)
    demo_args = re.search(r"^DEMO_ARGS \?= (.+)$", makefile, re.M).group(1).split()
    assert shlex.split(demo)[1:] == ["solve", question, *demo_args], "the README's demo is not `make demo`'s command"
    first = run(argv(demo), tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    kinds = ("reference (anchor synthesis)", "reference answer:", "compute (solve", "  policy ", "  anchor ",
             "  total ", " rollouts agree with the reference answer")
    for kind in kinds:
        assert kind in excerpt and kind in first.stdout, kind
    assert not re.search(r"^\S+ \S+ INFO ", first.stderr, re.M), first.stderr  # no MLflow/LiteLLM INFO chatter
    assert "{'policy'" not in first.stdout and "from DSPy's cache" not in first.stdout
    again = run(argv(demo), tmp_path)
    assert again.returncode == 0 and "4 calls (4 from DSPy's cache)" in again.stdout, again.stdout[-2000:]


def test_the_docs_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        missing_component("mkdocs", "mkdocs is not installed (requirements.txt installs it; pip install -e '.[docs]')")
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert all(f'id="{name}"' in api for name in ("cat_dspy.modules.cat.CaT", "cat_dspy.lm.models.make_lm",
                                                   "cat_dspy.rl.reward.CaTReward"))
