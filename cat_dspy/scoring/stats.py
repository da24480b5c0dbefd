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


def interval95(mean: float | None, se: float | None, n: int) -> tuple[float | None, float | None]:
    """A 95 % interval ``mean ± q·se``: q is Student's t quantile with n − 1 degrees of freedom (few seeds), which
    tends to 1.96 for many questions; (None, None) without a mean or with fewer than two values.

    Examples:
        >>> lo, hi = interval95(0.1, 0.02, 200)
        >>> round(lo, 4), round(hi, 4)
        (0.0606, 0.1394)
        >>> [round(x, 3) for x in interval95(0.1, 0.02, 3)]  # 3 seeds: t(2) = 4.303
        [0.014, 0.186]
        >>> interval95(0.5, 0.0, 1)
        (None, None)
    """
    if mean is None or se is None or n < 2:
        return None, None
    from scipy.stats import t

    q = float(t.ppf(0.975, n - 1))
    return mean - q * se, mean + q * se


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | None]:
    """The mean of ``a − b`` over paired values (the same questions, or the same seeds), its standard error and
    95 % interval (:func:`interval95`).

    Examples:
        >>> d = paired_difference([1, 1, 0, 1], [0, 1, 0, 0])
        >>> d["n"], d["mean"], round(d["se"], 4), [round(x, 3) for x in (d["lo"], d["hi"])]
        (4, 0.5, 0.2887, [-0.419, 1.419])
        >>> paired_difference([], [])["mean"] is None
        True
    """
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} vs {len(b)}")
    mean, se = mean_stderr([x - y for x, y in zip(a, b, strict=True)])
    lo, hi = interval95(mean, se, len(a))
    return {"n": len(a), "mean": mean, "se": se, "lo": lo, "hi": hi}


def _z(power: float, alpha: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)


def detectable_difference(difference: dict[str, float | int | None], power: float = 0.8,
                          alpha: float = 0.05) -> float | None:
    """The smallest true difference a two-sided paired test at level ``alpha`` detects with probability ``power``
    at the pairs measured, given their spread: (z₁₋α/₂ + z_power) · se (the normal approximation; with few pairs
    t's heavier tails make it larger). None with fewer than two pairs.

    Examples:
        >>> round(detectable_difference({"n": 3, "mean": 0.01, "se": 0.05}), 3)  # 3 seeds, se 0.05: 0.140
        0.14
    """
    n, se = difference.get("n") or 0, difference.get("se")
    return None if n < 2 or se is None else _z(power, alpha) * float(se)


def pairs_for_power(difference: dict[str, float | int | None], effect: float, power: float = 0.8,
                    alpha: float = 0.05) -> int | None:
    """How many pairs (seeds, questions) a two-sided paired test at level ``alpha`` needs to detect a true
    difference of ``effect`` with probability ``power``, given the measured spread: ⌈((z₁₋α/₂ + z_power) · sd /
    effect)²⌉ with sd = se · √n from :func:`paired_difference` (the normal approximation). The spread is measured;
    the effect is chosen, never the measured difference (whose "power" says only how close to 0 it fell). None with
    fewer than two pairs.

    Examples:
        >>> pairs_for_power({"n": 3, "mean": 0.0, "se": 0.05}, effect=0.05)  # sd 0.087: about 24 seeds
        24
        >>> pairs_for_power({"n": 1, "mean": 0.1, "se": 0.0}, effect=0.05) is None
        True
    """
    n, se = difference.get("n") or 0, difference.get("se")
    if n < 2 or se is None or effect <= 0:
        return None
    sd = float(se) * math.sqrt(n)
    return max(2, math.ceil((_z(power, alpha) * sd / effect) ** 2))
