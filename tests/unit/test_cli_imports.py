"""``cat-dspy --help`` (and the help of every command that does not train) imports no torch, TRL or transformers:
the CLI's heavy imports happen inside the commands."""

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
