"""Shared test set-up: isolated caches and MLflow stores, offline LiteLLM, the shared data dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The datasets folder laid beside the checkout (``../shared/data``), if present."""
    for base in (REPO, *REPO.parents):
        candidate = base / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not present")
    return path


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
