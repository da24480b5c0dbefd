"""``cat-dspy --help`` (and the help of every command that does not train) imports no torch, TRL or transformers:
the CLI's heavy imports happen inside the commands; and choosing the local runtime on a CPU imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "trl", "transformers", "accelerate", "mlflow")

PROBE = f"""
import contextlib, io, json, sys
from cat_dspy.cli import main

seen = {{}}
for argv in (["--help"], ["solve", "--help"], ["eval", "--help"], ["compare", "--help"], ["optimize", "--help"],
             ["serve", "--help"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    seen[" ".join(argv)] = {{"heavy": [m for m in {HEAVY!r} if m in sys.modules], "usage": "usage:" in out.getvalue()}}
print(json.dumps(seen))
"""


def test_help_imports_no_torch() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen) == 6
    for argv, found in seen.items():
        assert found["usage"], argv  # it printed its help
        assert found["heavy"] == [], f"`cat-dspy {argv}` imported {found['heavy']}"


RUNTIME_PROBE = """
import json, sys
from cat_dspy.lm import models

models.GPU_DRIVER_FILES = tuple(sys.argv[1:])
runtime = models.local_runtime("local")
torch = sys.modules.get("torch")
print(json.dumps({"runtime": runtime, "torch": torch is not None, "cuda": torch and torch.cuda.is_available()}))
"""


def test_choosing_the_local_runtime_imports_torch_only_where_a_gpu_driver_is() -> None:
    """``local`` picks llama.cpp on a CPU without importing torch (seconds of every ``solve``/``eval`` start);
    with a GPU driver's files present, torch is asked whether it sees a GPU."""
    import pytest

    pytest.importorskip("llama_cpp")
    seen = {}
    for case, files in (("no driver", []), ("driver", ["/dev/null"])):
        done = subprocess.run([sys.executable, "-c", RUNTIME_PROBE, *files], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env={"CAT_DSPY_RUNTIME": "auto", "PATH": ""})
        assert done.returncode == 0, done.stderr[-3000:]
        seen[case] = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["no driver"] == {"runtime": "llamacpp", "torch": False, "cuda": None}
    if sys.platform.startswith("linux"):  # torch decides: torch on a GPU it sees, else llama.cpp
        assert seen["driver"]["torch"] is True
        assert seen["driver"]["runtime"] == ("torch" if seen["driver"]["cuda"] else "llamacpp")
