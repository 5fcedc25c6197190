"""Moments merge exactly like numpy on the concatenation; z-scores against a baseline."""

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from ml.stats import MAX_MAGNITUDE, Moments, baseline_frame, frame_moments, zscores


def assert_matches_numpy(m, values, rel=1e-9):
    assert m.n == values.size
    assert m.mean == pytest.approx(np.mean(values), rel=rel)
    assert m.variance == pytest.approx(np.var(values), rel=rel)


@pytest.mark.parametrize("seed", range(5))
def test_merge_of_two_parts_equals_numpy_on_concatenation(seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(loc=rng.uniform(-50, 50), scale=rng.uniform(0.1, 20), size=500)
    for cut in (0, 1, int(rng.integers(2, 499)), 499, 500):  # includes empty sides
        left, right = values[:cut], values[cut:]
        assert_matches_numpy(Moments.of(left).merge(Moments.of(right)), values)


def test_merge_with_large_offset_stays_exact_where_naive_formula_fails():
    rng = np.random.default_rng(42)
    values = 1e9 + rng.normal(size=10_000)
    naive = (values ** 2).sum() / values.size - values.mean() ** 2
    assert abs(naive - np.var(values)) / np.var(values) > 1e-2  # the trap is real
    for cut in (0, 3, 5000, 9999, 10_000):
        merged = Moments.of(values[:cut]).merge(Moments.of(values[cut:]))
        assert merged.n == values.size
        assert merged.variance == pytest.approx(np.var(values), rel=1e-6)
        assert merged.mean == pytest.approx(np.mean(values), rel=1e-12)


def test_merge_order_does_not_matter_over_ten_chunks():
    rng = np.random.default_rng(7)
    values = 1e6 + rng.normal(scale=3.0, size=3000)
    chunks = np.split(values, np.sort(rng.choice(np.arange(1, 3000), size=9, replace=False)))
    parts = [Moments.of(c) for c in chunks]

    left = Moments()
    for p in parts:
        left = left.merge(p)
    right = Moments()
    for p in reversed(parts):
        right = p.merge(right)
    shuffled = Moments()
    for i in rng.permutation(len(parts)):
        shuffled = shuffled.merge(parts[i])
    pairs = parts
    while len(pairs) > 1:  # tree-wise
        pairs = [pairs[i].merge(pairs[i + 1]) if i + 1 < len(pairs) else pairs[i]
                 for i in range(0, len(pairs), 2)]

    for m in (left, right, shuffled, pairs[0]):
        assert_matches_numpy(m, values, rel=1e-9)


def test_of_ignores_nan_and_inf():
    m = Moments.of(np.array([1.0, np.nan, 2.0, np.inf, 3.0, -np.inf]))
    assert (m.n, m.mean, m.variance) == (3, 2.0, pytest.approx(2 / 3))
    empty = Moments.of([np.nan, np.inf])
    assert empty.n == 0 and np.isnan(empty.variance) and np.isnan(empty.std)


def test_frame_moments_skips_all_nan_columns():
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": [np.nan] * 3})
    moments = frame_moments(frame)
    assert set(moments) == {"a"}
    assert (moments["a"].n, moments["a"].mean) == (2, 2.0)


def test_zscores_edge_cases():
    history_y = np.array([1.0, 2.0, 3.0, 4.0])
    baseline = baseline_frame({"x": Moments.of([5.0, 5.0, 5.0]), "y": Moments.of(history_y)})
    values = pd.DataFrame({"x": [5.0, 6.0, 4.0, np.nan], "y": [2.5, np.nan, 10.0, 4.0],
                           "w": [1.0, 2.0, 3.0, 4.0]})

    z = zscores(values, baseline)

    assert list(z.columns) == ["x", "y", "w"]
    # Constant history: equal scores 0, anything else is infinitely far, with its sign.
    assert z["x"].tolist()[:3] == [0.0, np.inf, -np.inf]
    assert np.isnan(z.at[3, "x"])  # missing stays NaN even against a constant history
    # Normal case: (x - mean) / population std; a missing cell stays NaN.
    mean, std = history_y.mean(), history_y.std()
    assert z.at[0, "y"] == pytest.approx((2.5 - mean) / std)
    assert np.isnan(z.at[1, "y"])
    assert z.at[2, "y"] == pytest.approx((10.0 - mean) / std)
    # No baseline row for the field: a NaN column.
    assert z["w"].isna().all()


def test_zscores_without_any_baseline_is_all_nan():
    values = pd.DataFrame({"a": [1.0, 2.0]})
    z = zscores(values, baseline_frame({}))
    assert z.shape == values.shape and z.isna().all().all()


def test_scalar_zscore_matches_the_frame_version():
    from ml.stats import zscore

    cases = [(7.0, 5.0, 2.0), (5.0, 5.0, 0.0), (6.0, 5.0, 0.0), (4.0, 5.0, 0.0),
             (0.1, 0.10000000000000003, 2.8e-17), (0.2, 0.10000000000000003, 2.8e-17),
             (-3.0, 1.0, 0.5)]
    for value, mean, std in cases:
        frame = zscores(pd.DataFrame({"f": [value]}),
                        pd.DataFrame({"n": [10], "mean": [mean], "std": [std]}, index=["f"]))
        assert zscore(value, mean, std) == frame.iat[0, 0], (value, mean, std)


def _exact_variance(values: np.ndarray) -> Fraction:
    exact = [Fraction(float(v)) for v in values]
    mean = sum(exact) / len(exact)
    return sum((x - mean) ** 2 for x in exact) / len(exact)


@pytest.mark.parametrize("offset", [1e8, 1e10, 1e13])
def test_merged_variance_far_from_zero_matches_exact_arithmetic(offset):
    """offset/spread >= 1e8: merging means as plain floats lost up to 4e-5 of the variance
    at 1e13 (against exact rational arithmetic on the same floats); about a reference, the
    merge keeps float precision."""
    rng = np.random.default_rng(int(np.log10(offset)))
    batches = [offset + rng.normal(0, 1, int(rng.integers(1, 50))) for _ in range(200)]
    merged = Moments()
    for values in batches:
        merged = merged.merge(Moments.of(values))
    everything = np.concatenate(batches)
    exact = _exact_variance(everything)
    assert merged.n == everything.size
    assert abs(Fraction(merged.variance) - exact) / exact <= 1e-10
    exact_mean = sum(map(Fraction, everything)) / everything.size
    assert abs(Fraction(merged.mean) - exact_mean) <= Fraction(np.spacing(offset))


def test_moments_built_from_n_mean_m2_still_mean_what_they_did():
    old = Moments(4, 2.5, 5.0)  # as stored before references were kept
    assert (old.n, old.mean, old.m2, old.variance, old.std) == (4, 2.5, 5.0, 1.25, 1.25 ** 0.5)
    assert (old.ref, old.offset) == (2.5, 0.0)
    merged = old.merge(Moments.of(np.array([5.0, 6.0])))
    assert_matches_numpy(merged, np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), rel=1e-15)


def test_values_at_the_magnitude_limit_merge_to_finite_moments():
    values = np.array([MAX_MAGNITUDE, -MAX_MAGNITUDE, MAX_MAGNITUDE, 0.0])
    merged = Moments()
    for value in values:
        merged = merged.merge(Moments.of(np.array([value])))
    merged = merged.merge(Moments.of(values))
    everything = np.concatenate([values, values])
    assert np.isfinite([merged.mean, merged.m2, merged.std]).all()
    assert_matches_numpy(merged, everything, rel=1e-12)


def test_a_merge_that_would_overflow_is_refused():
    history = Moments.of(np.random.default_rng(1).normal(100, 10, 50))
    with pytest.raises(OverflowError, match="1e\\+100"):
        history.merge(Moments.of(np.array([1e308, 1e308])))


@pytest.mark.parametrize("mean, std, z", [
    (1e12, 100.0, 8.9),     # was judged valid: 890 fell within 1e-9 * 1e12 of the mean
    (1e12, 100.0, 15.0),    # mean + 1500: was +inf ("every value ... was 1e+12")
    (1e12, 508.0, 2.17),    # was +inf: std 508 counted as no spread at all
    (1.8e18, 1e9, 5.0),     # nanosecond timestamps
    (1e9, 0.01, 5.0),       # a meter reading with a small spread
])
def test_large_offset_small_spread_scores_its_true_z(mean, std, z):
    from ml.stats import zscore

    value = mean + z * std
    true_z = float((Fraction(value) - Fraction(mean)) / Fraction(std))
    frame = zscores(pd.DataFrame({"f": [value]}),
                    pd.DataFrame({"n": [100], "mean": [mean], "std": [std]}, index=["f"]))
    assert frame.iat[0, 0] == pytest.approx(true_z, rel=1e-12)
    assert zscore(value, mean, std) == frame.iat[0, 0]
