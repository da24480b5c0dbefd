"""Evaluation: CaT against the selection baselines, graded against gold; ``evaluate`` is the Python entry."""
