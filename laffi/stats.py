"""Bootstrap confidence intervals and paired bootstrap tests over questions (pure Python + random; no numpy needed).

Per-question F1 values come from `metrics.score_one`; resampling questions with replacement (seeded) gives the spread
of the mean F1 one would see on another sample of questions like these.
"""

from __future__ import annotations

import random


def _means_of_resamples(values: list[float], n_resamples: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    n = len(values)
    return [sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_resamples)]


def bootstrap_ci(
    values: list[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    means = sorted(_means_of_resamples(values, n_resamples, seed))
    lo = means[int((1 - level) / 2 * n_resamples)]
    hi = means[min(n_resamples - 1, int((1 + level) / 2 * n_resamples))]
    return lo, hi


def paired_bootstrap(a: list[float], b: list[float], n_resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean difference a - b on the same questions, its 95 % interval, and a two-sided bootstrap p-value.

    The p-value is twice the share of resampled mean differences on the far side of zero (capped at 1)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    means = _means_of_resamples(diffs, n_resamples, seed)
    observed = sum(diffs) / len(diffs)
    below = sum(m <= 0 for m in means) / n_resamples
    above = sum(m >= 0 for m in means) / n_resamples
    lo, hi = bootstrap_ci(diffs, n_resamples, seed)
    return {"mean_diff": observed, "ci_low": lo, "ci_high": hi, "p_value": min(1.0, 2 * min(below, above))}
