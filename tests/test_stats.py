"""Bootstrap statistics on cases with known answers."""

import pytest

from laffi.stats import bootstrap_ci, paired_bootstrap


def test_constant_values_have_a_point_interval():
    assert bootstrap_ci([0.5] * 20) == (0.5, 0.5)


def test_interval_contains_the_mean_and_narrows_with_more_data():
    small = [1.0, 0.0] * 10
    large = [1.0, 0.0] * 500
    lo_s, hi_s = bootstrap_ci(small, seed=1)
    lo_l, hi_l = bootstrap_ci(large, seed=1)
    assert lo_s < 0.5 < hi_s and lo_l < 0.5 < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3
    assert (hi_l - lo_l) == pytest.approx(2 * 1.96 * 0.5 / 1000**0.5, rel=0.2)  # normal approximation


def test_paired_bootstrap_detects_a_clear_difference_and_not_a_null_one():
    a = [1.0] * 60 + [0.0] * 40
    b = [1.0] * 40 + [0.0] * 60
    clear = paired_bootstrap(a, b, seed=2)
    assert clear["mean_diff"] == pytest.approx(0.2) and clear["p_value"] < 0.01 and clear["ci_low"] > 0
    same = paired_bootstrap(a, list(a), seed=2)
    assert same["mean_diff"] == 0 and same["p_value"] == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [])


def test_roc_auc_counts_ordered_pairs_and_half_ties():
    from laffi.stats import roc_auc

    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75  # scikit-learn's documented example
    assert roc_auc([0.5, 0.5, 0.2], [True, False, False]) == 0.75  # one pair above, one tie
    assert roc_auc([0.9, 0.1], [False, True]) == 0.0 and roc_auc([1.0], [True]) is None
    import random

    rng = random.Random(0)
    scores = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(60)]
    labels = [rng.random() < 0.4 for _ in range(60)]
    marked = list(zip(scores, labels, strict=True))
    pairs = [(s, t) for s, a in marked if a for t, b in marked if not b]
    brute = sum(1.0 if s > t else 0.5 if s == t else 0.0 for s, t in pairs) / len(pairs)
    assert abs(roc_auc(scores, labels) - brute) < 1e-12
