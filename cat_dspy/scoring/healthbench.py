"""HealthBench's physician-rubric score, as ``openai/simple-evals`` computes it (``healthbench_eval.py``): the points
of the met items over the total positive points (negative-point items subtract, so an example can score below 0);
the benchmark score is the mean of the example scores clipped to [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def rubric_item_text(item: dict[str, Any]) -> str:
    """A rubric item as simple-evals shows it to the grader: ``[points] criterion``.

    Examples:
        >>> rubric_item_text({"criterion": "Advises rest.", "points": 5})
        '[5] Advises rest.'
    """
    return f"[{item['points']}] {item['criterion']}"


def healthbench_score(rubrics: Sequence[dict[str, Any]], met: Sequence[bool]) -> float | None:
    """One example's score: points of the met items ÷ total positive points (simple-evals ``calculate_score``).

    Negative-point items subtract when met, so a score can fall below 0; it is not clipped here (the benchmark
    clips the *mean*). None when the rubric has no positive points.

    Examples:
        >>> items = [{"points": 5}, {"points": 3}, {"points": -4}]
        >>> healthbench_score(items, [True, False, False]), healthbench_score(items, [True, True, True])
        (0.625, 0.5)
        >>> healthbench_score(items, [False, False, True]), healthbench_score([{"points": -1}], [True])
        (-0.5, None)
    """
    if len(rubrics) != len(met):
        raise ValueError(f"{len(rubrics)} rubric items but {len(met)} verdicts")
    possible = sum(float(item["points"]) for item in rubrics if float(item["points"]) > 0)
    if possible <= 0:
        return None
    achieved = sum(float(item["points"]) for item, ok in zip(rubrics, met, strict=True) if ok)
    return achieved / possible


def clipped_mean(scores: Sequence[float | None]) -> float | None:
    """The benchmark score: the mean of the example scores (None skipped), clipped to [0, 1].

    Examples:
        >>> clipped_mean([0.5, -1.0, None]), clipped_mean([1.0, 1.0]), clipped_mean([None])
        (0.0, 1.0, None)
    """
    values = [float(s) for s in scores if s is not None]
    if not values:
        return None
    return min(1.0, max(0.0, sum(values) / len(values)))
