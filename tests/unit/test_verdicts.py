"""judge_events: per-event verdicts with the figures behind every warning."""

import json

import numpy as np
import pandas as pd
import pytest

from ml.anomaly import AnomalyModel
from ml.stats import Moments, frame_moments
from tasks.verdicts import Judge, judge_events

RULES = Judge(z_threshold=3.0, min_history=30, model_min_rows=50)
HISTORY = np.random.default_rng(11).normal(100.0, 10.0, size=500)


def judge(rows, baseline, rules=RULES, **kwargs):
    return judge_events(pd.DataFrame(rows), baseline, rules, **kwargs)


def test_value_beyond_three_std_gets_one_out_of_range_warning():
    mean, std = HISTORY.mean(), HISTORY.std()
    value = mean + 4.2 * std
    [verdict] = judge({"amount": [value]}, {"amount": Moments.of(HISTORY)})

    assert verdict["valid"] is False
    [warning] = verdict["warnings"]
    assert warning["code"] == "out_of_range" and warning["field"] == "amount"
    assert warning["value"] == value
    assert warning["mean"] == pytest.approx(mean)
    assert warning["std"] == pytest.approx(std)
    assert warning["z"] == pytest.approx(4.2)
    assert warning["expected_range"] == pytest.approx([mean - 3 * std, mean + 3 * std])
    assert "amount" in warning["message"]


def test_value_within_range_is_valid():
    [verdict] = judge({"amount": [HISTORY.mean() + 2.9 * HISTORY.std()]},
                      {"amount": Moments.of(HISTORY)})
    assert verdict["valid"] is True and verdict["warnings"] == []


def test_custom_threshold_changes_the_verdict():
    rows = {"amount": [HISTORY.mean() + 2.5 * HISTORY.std()]}
    baseline = {"amount": Moments.of(HISTORY)}
    assert judge(rows, baseline)[0]["valid"] is True
    [verdict] = judge(rows, baseline, Judge(z_threshold=2.0, min_history=30, model_min_rows=50))
    assert verdict["valid"] is False
    assert verdict["warnings"][0]["expected_range"] == pytest.approx(
        [HISTORY.mean() - 2 * HISTORY.std(), HISTORY.mean() + 2 * HISTORY.std()])


def test_short_history_is_noted_not_checked():
    baseline = {"young": Moments.of([1.0, 2.0, 3.0, 4.0, 5.0])}
    verdicts = judge({"young": [1e9, np.nan], "unseen": [7.0, np.nan]}, baseline)

    assert [v["valid"] for v in verdicts] == [True, True]
    assert [v["warnings"] for v in verdicts] == [[], []]
    notes = {n["field"]: n for n in verdicts[0]["notes"] if n["code"] == "insufficient_history"}
    assert (notes["young"]["count"], notes["young"]["needed"]) == (5, 30)
    assert (notes["unseen"]["count"], notes["unseen"]["needed"]) == (0, 30)
    # A field the event does not carry gets no note.
    assert not [n for n in verdicts[1]["notes"] if n["code"] == "insufficient_history"]


def test_without_model_a_no_model_note_and_no_score():
    [verdict] = judge({"amount": [100.0]}, {"amount": Moments.of(HISTORY)})
    assert [n["code"] for n in verdict["notes"]] == ["no_model"]
    assert verdict["anomaly_score"] is None


def test_with_model_extreme_row_gets_anomaly_warning_and_typical_row_only_a_score():
    rng = np.random.default_rng(3)
    history = pd.DataFrame(rng.multivariate_normal([0, 0, 0], np.eye(3) + 0.5, size=2000),
                           columns=["a", "b", "c"])
    model = AnomalyModel().fit(history)

    typical, extreme = judge({"a": [0.0, 10.0], "b": [0.0, 10.0], "c": [0.0, 10.0]},
                             frame_moments(history), model=model, model_version=4)

    [anomaly] = [w for w in extreme["warnings"] if w["code"] == "anomaly"]
    assert extreme["valid"] is False
    assert anomaly["score"] > anomaly["threshold"] == pytest.approx(model.threshold_)
    assert anomaly["score"] == extreme["anomaly_score"]
    assert anomaly["model_version"] == 4 and "(v4)" in anomaly["message"]
    assert anomaly["contributors"] and all(c["contribution"] > 0 for c in anomaly["contributors"])
    assert {c["field"] for c in anomaly["contributors"]} <= {"a", "b", "c"}

    assert typical["valid"] is True and typical["warnings"] == []
    assert 0 < typical["anomaly_score"] < model.threshold_
    assert not [n for n in typical["notes"] if n["code"] == "no_model"]


def test_constant_history_and_a_different_value():
    baseline = {"fee": Moments.of(np.full(40, 5.0))}
    same, other = judge({"fee": [5.0, 6.0]}, baseline)

    assert same["valid"] is True
    [warning] = other["warnings"]
    assert warning["z"] is None and warning["std"] == 0.0
    assert "every value in its all-time history was 5" in warning["message"]
    json.dumps(other, allow_nan=False)  # the verdict is valid JSON: no Infinity anywhere


def test_constant_decimal_history_is_treated_as_constant():
    baseline = {"fee": Moments.of(np.full(30, 0.1))}
    [verdict] = judge({"fee": [0.2]}, baseline)
    assert verdict["warnings"][0]["z"] is None


def test_value_equal_to_a_constant_history_is_valid_at_any_threshold():
    baseline = {"fee": Moments.of([0.1, 0.1, 0.1]).merge(Moments.of([0.1]))}
    [verdict] = judge({"fee": [0.1]}, baseline, Judge(1.0, 2, 50))
    assert verdict["valid"] is True


def test_robust_mode_judges_by_median_and_mad():
    from ml.anomaly import AnomalyModel, robust_moments

    rng = np.random.default_rng(5)
    # Heavy tails: mostly ~N(10, 1), with 5% of values near 100 that inflate the std.
    history = np.where(rng.random(2000) < 0.05, rng.normal(100, 5, 2000), rng.normal(10, 1, 2000))
    frame = pd.DataFrame({"x": history})
    model = AnomalyModel().fit(frame)
    (n, median, spread), = robust_moments(model).values()
    assert median == pytest.approx(np.median(history))
    assert spread == pytest.approx(1.4826 * np.median(np.abs(history - np.median(history))))
    robust = {"x": Moments(n, median, spread * spread * n)}
    baseline = {"x": Moments.of(history)}
    value = pd.DataFrame({"x": [25.0]})
    # The mean and std, dragged by the tail, find 25 ordinary; the median and MAD do not.
    [by_mean] = judge_events(value, baseline, Judge(3.0, 30, 50, "all_time"))
    [by_median] = judge_events(value, baseline, Judge(3.0, 30, 50, "robust"), robust=robust)
    assert by_mean["valid"] is True
    assert by_median["valid"] is False
    [warning] = by_median["warnings"]
    assert warning["baseline"] == "robust"
    assert warning["mean"] == pytest.approx(median) and warning["std"] == pytest.approx(spread)
    assert "median/MAD" in warning["message"]


@pytest.mark.parametrize("center, spread", [
    (1e12, 100.0),     # the reviewer's field
    (1.8e18, 1e9),     # nanosecond timestamps
    (1e9, 0.01),       # meter readings: large offset, small spread
])
def test_large_offset_small_spread_fields_are_judged_by_their_spread(center, spread):
    """The rounding tolerance was 1e-9 of the mean: 1000 at 1e12, so a value 8.9 standard
    deviations out was valid, and a spread under 1000 counted as none at all."""
    history = center + np.random.default_rng(8).normal(0, spread, 1000)
    baseline = {"f": Moments.of(history)}
    mean, std = baseline["f"].mean, baseline["f"].std
    far, near, beyond = mean + 8.9 * std, mean + 2.17 * std, mean + 15 * std
    flagged, ordinary, very = judge({"f": [far, near, beyond]}, baseline)
    [warning] = flagged["warnings"]
    assert warning["z"] == pytest.approx(8.9, rel=1e-6)
    assert ordinary["valid"] is True
    [warning] = very["warnings"]
    assert warning["z"] == pytest.approx(15, rel=1e-6)
    assert "standard deviations" in warning["message"] and "every value" not in warning["message"]


def test_std_508_at_1e12_is_a_spread_not_rounding():
    history = 1e12 + np.random.default_rng(9).normal(0, 508, 1000)
    baseline = {"f": Moments.of(history)}
    [verdict] = judge({"f": [baseline["f"].mean + 2.17 * baseline["f"].std]}, baseline)
    assert verdict["valid"] is True
