"""covidseg.evaluation.statistics: bootstrap confidence intervals and paired differences."""
import numpy as np
import pytest

from covidseg.evaluation.statistics import mean_with_ci, paired_difference


def test_constant_values_have_a_zero_width_interval():
    estimate = mean_with_ci([0.7] * 10)
    assert (estimate.mean, estimate.low, estimate.high, estimate.n) == pytest.approx((0.7, 0.7, 0.7, 10))


def test_the_interval_covers_the_mean_and_shrinks_with_more_cases():
    rng = np.random.default_rng(1)
    small, large = mean_with_ci(rng.normal(0.6, 0.1, 10)), mean_with_ci(rng.normal(0.6, 0.1, 200))
    for estimate in (small, large):
        assert estimate.low < estimate.mean < estimate.high
        assert estimate.low < 0.6 < estimate.high
    assert large.high - large.low < small.high - small.low


def test_undefined_values_are_left_out_and_counted():
    estimate = mean_with_ci([1.0, float("nan"), 3.0])
    assert estimate.n == 2 and estimate.mean == pytest.approx(2.0)
    assert mean_with_ci([float("nan")]).n == 0 and str(mean_with_ci([])) == "n/a"


def test_reproducible_for_a_seed():
    values = np.random.default_rng(2).random(15)
    assert mean_with_ci(values, seed=3) == mean_with_ci(values, seed=3)


def test_identical_models_show_no_difference():
    a = np.random.default_rng(3).random(12)
    difference = paired_difference(a, a.copy())
    assert (difference.mean, difference.low, difference.high) == (0, 0, 0)
    assert difference.p_wilcoxon == 1.0 and not difference.significant
    assert difference.verdict() == "no significant difference"


def test_a_consistent_gain_is_significant_and_a_noisy_one_is_not():
    rng = np.random.default_rng(4)
    base = rng.random(20)
    better = paired_difference(base + 0.05 + rng.normal(0, 0.01, 20), base)
    assert better.significant and better.low > 0 and better.p_wilcoxon < 0.01
    assert better.verdict() == "significantly higher"
    noisy = paired_difference(base + rng.normal(0, 0.2, 20), base)
    assert noisy.low < 0 < noisy.high and noisy.verdict() == "no significant difference"
    worse = paired_difference(base, base + 0.05)
    assert worse.verdict() == "significantly lower"


def test_a_single_case_is_never_significant():
    """One case gives a bootstrap interval of width 0; the signed-rank test keeps it from being called a gain."""
    difference = paired_difference([0.9], [0.5])
    assert difference.low == difference.high == pytest.approx(0.4)
    assert not difference.significant and difference.verdict() == "no significant difference"


def test_pairs_must_cover_the_same_cases():
    with pytest.raises(ValueError, match="same cases"):
        paired_difference([1, 2, 3], [1, 2])
