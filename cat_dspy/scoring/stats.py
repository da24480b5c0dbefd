"""Statistics of scores: the one mean / standard-error helper every report uses.

An empty sample has no mean: (None, None), never a made-up 0 that reads like a measured score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_stderr(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (sample standard deviation / √n; 0 for a single value).

    Examples:
        >>> mean, se = mean_stderr([1.0, 0.0, 1.0, 0.0])
        >>> mean, round(se, 4)
        (0.5, 0.2887)
        >>> mean_stderr([1.0]), mean_stderr([])
        ((1.0, 0.0), (None, None))
    """
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
