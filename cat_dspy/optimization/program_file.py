"""Saved CaT programs: DSPy JSON of every prompt (instructions, demos) plus a ``cat_dspy`` entry saying how it was made.

``cat-dspy optimize`` writes them; ``solve``, ``eval`` and ``train`` load them with ``--program PATH``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["load_program", "save_program"]

logger = logging.getLogger(__name__)


def save_program(program: Any, path: str | Path, meta: dict[str, Any]) -> Path:
    """``program.save(path)`` (DSPy JSON) plus a ``cat_dspy`` entry describing how it was made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    state = json.loads(path.read_text())
    state["cat_dspy"] = meta
    path.write_text(json.dumps(state, indent=2, ensure_ascii=False))
    return path


def load_program(program: Any, path: str | Path) -> Any:
    """``program.load(path)``, warning when the file was made for another mode or synthesis form."""
    meta = json.loads(Path(path).read_text()).get("cat_dspy") or {}
    for key in ("mode", "question_aware", "extraction"):
        ours = program.synthesize.question_aware if key == "question_aware" else getattr(program, key)
        if key in meta and meta[key] != ours:
            logger.warning("%s was optimized with %s=%s, loaded into %s=%s", path, key, meta[key], key, ours)
    program.load(str(path))
    return program
