"""Test support shipped with the package, as DSPy ships ``dspy.utils.DummyLM``.

:mod:`cat_dspy.testing.scripted`: a real DSPy engine answering from a script (``scripted_lm``);
:mod:`cat_dspy.testing.faults`: fault injection around any engine (timeouts, errors, garbage).
"""

from cat_dspy.testing.scripted import AsyncScriptedEngine, ScriptedEngine, prompt_text, scripted_lm

__all__ = ["AsyncScriptedEngine", "ScriptedEngine", "prompt_text", "scripted_lm"]
