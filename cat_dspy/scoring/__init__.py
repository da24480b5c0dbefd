"""Scoring without an LM: answer extraction and equivalence, lenient parsing, the pure rewards, statistics.

Nothing here imports DSPy, torch or an LM client (tests/unit/test_layers.py checks it).
"""
