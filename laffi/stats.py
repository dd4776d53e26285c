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


def roc_auc(scores: list[float], positive: list[bool]) -> float | None:
    """Area under the ROC curve of `scores` for telling positives from negatives: the probability that a random
    positive scores above a random negative, ties counting one half (Mann-Whitney U / (n_pos x n_neg)). None when
    either class is empty. Here: no-answer scores against "the question is unanswerable" (0.5 = no separation)."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return None
    # Rank-sum with average ranks for ties: O(n log n).
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, p in zip(ranks, positive, strict=True) if p)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
