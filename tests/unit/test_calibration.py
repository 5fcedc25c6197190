"""ml.calibration: z thresholds calibrated to a flag rate on a field's own history, and
time-of-day features only once a history spans two days."""

import numpy as np
import pytest

from ml.calibration import (
    MIN_CALIBRATION_VALUES,
    calibrate,
    gaussian_z,
    replay_absz,
    seasonality,
    tail_threshold,
)

ALPHA = 1 - 0.5 ** (1 / 1000)  # the default half-life, 1,000 events
RATE = 0.0003                   # the z-rule's share of the default alert budget
RULES = {"min_history": 30, "alpha": ALPHA, "clip": 3.0}


def fresh_rate(history: np.ndarray, fresh: np.ndarray, threshold: float) -> float:
    """Share of ``fresh`` flagged when judged after ``history``, the baselines moving on."""
    absz = replay_absz(np.concatenate([history, fresh]), **RULES)[-len(fresh):]
    return float(np.mean(absz > threshold))


def test_gaussian_z_is_two_sided():
    assert gaussian_z(0.05) == pytest.approx(1.95996, abs=1e-4)
    assert gaussian_z(RATE) == pytest.approx(3.615, abs=1e-3)


def test_replay_scores_each_value_against_the_values_before_it():
    x = np.random.default_rng(1).normal(5.0, 2.0, 200)
    absz = replay_absz(x, mode="all_time", **RULES)
    expected = [abs(x[i] - x[:i].mean()) / x[:i].std() for i in range(30, 200)]
    np.testing.assert_allclose(absz, expected, rtol=1e-9)
    # "both" is the milder of the two baselines, as the z-rule flags only when both agree.
    both, recent = replay_absz(x, **RULES), replay_absz(x, mode="recent", **RULES)
    np.testing.assert_allclose(both, np.minimum(absz, recent))


def test_recent_baseline_is_kept_as_the_service_keeps_it():
    """Weight max(1/n, alpha) and clipping once warm: with a large alpha a level shift is
    learnt within a few values, so the recent |z| of the new level falls back."""
    x = np.concatenate([np.random.default_rng(2).normal(0, 1, 100), np.full(60, 20.0)])
    recent = replay_absz(x, mode="recent", min_history=30, alpha=0.5, clip=3.0)
    assert recent[100 - 30] > 10          # the first value of the new level
    assert recent[-1] < 1                 # learnt: the recent baseline followed it


def test_gaussian_history_gets_about_the_gaussian_threshold():
    rng = np.random.default_rng(0)
    history = rng.normal(100, 10, 10_000)
    c = calibrate(history, RATE, **RULES)
    assert gaussian_z(RATE) <= c.threshold < gaussian_z(RATE) + 0.6
    assert c.values == 10_000 - 30 and c.method == "peaks over threshold"
    assert c.implied_rate <= 2 * RATE
    assert fresh_rate(history, rng.normal(100, 10, 100_000), c.threshold) <= 2 * RATE


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavy_tailed_history_gets_a_higher_threshold_that_holds_on_fresh_values(seed):
    """Lognormal: 1.4-2.2x the target on fresh values in eight seeds (the exponential tail
    extrapolation under-reaches a tail heavier than exponential a little); the Gaussian
    threshold (3.6) would flag over 30x the target."""
    rng = np.random.default_rng(seed)
    history = rng.lognormal(3, 0.6, 10_000)
    c = calibrate(history, RATE, **RULES)
    assert c.threshold > gaussian_z(RATE) + 2
    fresh = rng.lognormal(3, 0.6, 100_000)
    assert fresh_rate(history, fresh, gaussian_z(RATE)) > 30 * RATE
    assert fresh_rate(history, fresh, c.threshold) <= 2.5 * RATE


def test_student_t3_threshold_is_higher_and_bounds_the_rate():
    """A power-law tail (t, 3 degrees of freedom): the exponential extrapolation is reached
    2.4-3.5x the target in eight seeds, not within 2x (said in docs/detection.md); still a tenth of
    what the Gaussian threshold flags."""
    rng = np.random.default_rng(0)
    history = 100 + 10 * rng.standard_t(3, 10_000)
    c = calibrate(history, RATE, **RULES)
    assert c.threshold > gaussian_z(RATE) + 2
    fresh = 100 + 10 * rng.standard_t(3, 100_000)
    assert fresh_rate(history, fresh, c.threshold) <= 4 * RATE
    assert fresh_rate(history, fresh, gaussian_z(RATE)) > 10 * fresh_rate(history, fresh,
                                                                           c.threshold)


def test_empirical_quantile_when_enough_values_lie_beyond_it():
    absz = np.abs(np.random.default_rng(3).standard_t(3, 50_000))
    threshold, method = tail_threshold(absz, 0.001)
    assert method == "quantile" and threshold == pytest.approx(np.quantile(absz, 0.999))


def test_light_tails_keep_the_gaussian_floor_and_short_histories_the_gaussian_z():
    uniform = np.random.default_rng(4).uniform(0, 1, 5000)
    assert calibrate(uniform, RATE, **RULES).method == "gaussian floor"
    short = calibrate(np.random.default_rng(5).normal(0, 1, MIN_CALIBRATION_VALUES), RATE, **RULES)
    assert (short.threshold, short.method) == (gaussian_z(RATE), "gaussian")


def test_infinite_z_after_a_constant_stretch_is_left_out_of_the_threshold():
    x = np.concatenate([np.zeros(100), np.random.default_rng(6).normal(0, 1, 2000)])
    c = calibrate(x, RATE, **RULES)
    assert np.isfinite(c.threshold) and c.threshold < 6
    assert c.implied_rate > 0  # the first value off the constant history: what the rule flags


def test_fixed_threshold_is_kept_and_its_rate_measured():
    x = np.random.default_rng(7).normal(0, 1, 5000)
    c = calibrate(x, RATE, fixed=2.0, **RULES)
    assert (c.threshold, c.method) == (2.0, "fixed")
    assert c.implied_rate == pytest.approx(0.0455, abs=0.01)


def test_time_of_day_is_earned_by_two_full_days():
    start = 1_700_000_000.0
    short = start + np.linspace(0, 17 * 60, 1000)  # 17 minutes
    earned, why = seasonality(short)
    assert not earned and why == "history spans 0.0118 days; needs 2"
    earned, why = seasonality(start + np.linspace(0, 1.9 * 86_400, 1000))
    assert not earned
    earned, why = seasonality(start + np.linspace(0, 2.5 * 86_400, 1000))
    assert earned and why == "history spans 2.5 days (needs 2)"
