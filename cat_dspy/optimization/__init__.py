"""Optimizing the CaT prompts with DSPy optimizers: labelled metrics, ``optimize`` (``compile``), program files."""
