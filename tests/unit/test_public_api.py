"""The package's public names: what ``dir(cat_dspy)`` and editors see, each resolving to the real object, with
``import cat_dspy`` (and resolving them all) importing no training stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cat_dspy

ENV = os.environ | {"PYTHONPATH": str(Path(cat_dspy.__file__).resolve().parents[1])}  # this checkout's package

PUBLIC = {"CaT", "Rollout", "Synthesize", "ProposeRubric", "Judge", "FreeTextAdapter", "make_lm", "CaTReward",
          "CaTRewardConfig", "evaluate", "load_dataset"}


def test_dir_shows_every_public_name_and_each_resolves():
    assert set(cat_dspy.__all__) == PUBLIC == set(cat_dspy._EXPORTS)
    assert PUBLIC <= set(dir(cat_dspy)) and not {"os", "importlib"} & set(dir(cat_dspy))
    for name in PUBLIC:
        obj = getattr(cat_dspy, name)
        assert obj.__name__ == name and obj.__module__.startswith("cat_dspy."), name
    from cat_dspy.modules import CaT
    from cat_dspy.rl.reward import CaTReward

    assert cat_dspy.CaT is CaT and cat_dspy.CaTReward is CaTReward


def test_importing_the_package_and_its_names_imports_no_torch():
    code = ("import sys, cat_dspy; [getattr(cat_dspy, n) for n in cat_dspy.__all__]; "
            "print(sorted(m for m in ('torch', 'trl', 'transformers', 'accelerate', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=ENV).stdout
    assert out.strip() == "[]"


def test_python_dash_m_cat_dspy_is_the_cli():
    done = subprocess.run([sys.executable, "-m", "cat_dspy", "--help"], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0 and "solve" in done.stdout and "usage: cat-dspy" in done.stdout
