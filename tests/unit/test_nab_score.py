"""evaluation.nab_score against numenta/NAB's own scorer tests (inputs and expected values
ported; the NAB test each case comes from is named), plus a case computed by hand."""

import random

import numpy as np
import pandas as pd
import pytest

from evaluation.nab_score import (
    PROFILES,
    CostMatrix,
    FamilyScore,
    probation_length,
    raw_score,
    scaled_sigmoid,
    score_series,
    window_spans,
)

ONES = CostMatrix(tp=1.0, fp=1.0, fn=1.0)  # NAB's integration tests' cost matrix
UNIT = CostMatrix(tp=1.1, fp=0.11, fn=1.2)  # tests/unit/scorer_test.py's COST_MATRIX


def detections(length: int, *rows: int) -> np.ndarray:
    flags = np.zeros(length, dtype=bool)
    flags[list(rows)] = True
    return flags


def generated_window(length: int, count: int, size: int) -> list[tuple[int, int]]:
    """nab/test_helpers.py generateWindows, as row spans."""
    gap = int(round((length - count * size) / float(count + 1)))
    return [(gap * (i + 1) + size * i, gap * (i + 1) + size * i + size - 1) for i in range(count)]


# --- tests/unit/scorer_test.py (7 rows, 5 minutes apart, COST_MATRIX tp 1.1, fp 0.11, fn 1.2)

def test_unit_null():
    assert raw_score(detections(5), [], UNIT) == pytest.approx(0.0)


def test_unit_false_positives():
    assert raw_score(detections(5, 1, 3), [], UNIT) == pytest.approx(-2.0 * 0.11)


def test_unit_false_negatives():
    assert raw_score(detections(7), [(1, 2), (4, 5)], UNIT) == pytest.approx(-2.0 * 1.2)


def test_unit_false_positives_in_probationary():
    assert raw_score(detections(5, 1, 3), [], UNIT, probation=4) == pytest.approx(0.0)


def test_unit_false_positives_before_and_after_probationary():
    assert raw_score(detections(5, 1, 3), [], UNIT, probation=3) == pytest.approx(-1.0 * 0.11)


FIRST_WINDOW = 0.8482836399575131 * 1.1 / 0.9866142981514305  # NAB's hard-coded sigmoids
SECOND_WINDOW = 0.9866142981514305 * 1.1 / 0.9866142981514305


def test_unit_true_positives_1():
    assert raw_score(detections(7, 2), [(1, 2)], UNIT) == pytest.approx(FIRST_WINDOW)


def test_unit_true_positives_1_with_fn():
    assert raw_score(detections(7, 2), [(1, 2), (4, 5)], UNIT) == pytest.approx(FIRST_WINDOW - 1.2)


def test_unit_true_positives_2_and_3():
    assert raw_score(detections(7, 4), [(4, 5)], UNIT) == pytest.approx(SECOND_WINDOW)
    assert raw_score(detections(7, 4, 5), [(4, 5)], UNIT) == pytest.approx(SECOND_WINDOW)


def test_unit_true_positives_multiple():
    assert (raw_score(detections(7, 2, 4), [(1, 2), (4, 5)], UNIT)
            == pytest.approx(FIRST_WINDOW + SECOND_WINDOW))


# --- tests/integration/scorer_test.py (cost matrix of ones) -----------------------------------

def test_integration_null_case():
    assert raw_score(detections(10), [], ONES) == 0.0


def test_integration_reward_low_false_negatives():
    spans = generated_window(100, 1, 10)
    fn_heavy = CostMatrix(tp=1.0, fp=0.055, fn=2.0)
    assert raw_score(detections(100), spans, ONES) == 0.5 * raw_score(detections(100), spans, fn_heavy)


def test_integration_reward_low_false_positives():
    fp_heavy = CostMatrix(tp=1.0, fp=2.0, fn=0.5)
    assert raw_score(detections(100, 0), [], ONES) == 0.5 * raw_score(detections(100, 0), [], fp_heavy)


def test_integration_scoring_all_metrics():
    spans = generated_window(100, 2, 5)
    left = spans[0][0]
    # TP, an additional TP in the same window, an FP after it; the second window missed.
    assert raw_score(detections(100, left, left + 1, left + 7), spans, ONES) == pytest.approx(-0.9540,
                                                                                              abs=1e-4)


def test_integration_false_positive_scaling():
    # Random detections (10 of 100 rows, a 10-row window) with fpWeight 0.11 average about -x/2.
    spans = generated_window(100, 1, 10)
    cost = CostMatrix(tp=1.0, fp=0.11, fn=1.0)
    rng = random.Random(0)
    scores = [raw_score(detections(100, *rng.sample(range(100), 10)), spans, cost) for _ in range(20)]
    assert -1.5 <= sum(scores) / len(scores) <= 0.5


# --- tests/integration/true_positive_test.py ------------------------------------------------

def test_first_true_positive_within_window_scores_tp_weight():
    spans = generated_window(10, 1, 2)
    assert raw_score(detections(10, spans[0][0]), spans, ONES) == 1.0


def test_earlier_true_positive_is_better():
    spans = generated_window(10, 1, 2)
    (left, right), = spans
    assert raw_score(detections(10, left), spans, ONES) > raw_score(detections(10, right), spans, ONES)


def test_only_the_first_true_positive_within_a_window_counts():
    spans = generated_window(10, 1, 2)
    (left, right), = spans
    assert raw_score(detections(10, left), spans, ONES) == raw_score(detections(10, left, right), spans,
                                                                     ONES)


def test_true_positives_with_different_window_sizes_score_alike():
    two, three = generated_window(10, 1, 2), generated_window(10, 1, 3)
    assert (raw_score(detections(10, two[0][0]), two, ONES)
            == raw_score(detections(10, three[0][0]), three, ONES))


def test_true_positive_at_right_edge_of_window():
    spans = generated_window(1000, 1, 100)
    right = spans[0][1]
    at_edge = raw_score(detections(1000, right), spans, ONES)
    just_after = raw_score(detections(1000, right + 1), spans, ONES)  # an FP, and the window missed
    assert at_edge + just_after + 1 == pytest.approx(0.0, abs=1e-3)


# --- tests/integration/false_positive_test.py -----------------------------------------------

def test_false_positive_means_negative_score():
    assert raw_score(detections(1000, 0), generated_window(1000, 1, 10), ONES) < 0


def test_two_false_positives_are_worse_than_one():
    spans = generated_window(1000, 1, 10)
    assert raw_score(detections(1000, 0, 1), spans, ONES) < raw_score(detections(1000, 0), spans, ONES)


def test_one_false_positive_without_window_costs_fp_weight():
    assert raw_score(detections(1000, 0), [], ONES) == -1.0


def test_earlier_false_positive_after_window_is_better():
    spans = generated_window(10, 1, 2)
    right = spans[0][1]
    assert (raw_score(detections(10, right + 1), spans, ONES)
            > raw_score(detections(10, right + 2), spans, ONES))


# --- tests/integration/sweeper_test.py ------------------------------------------------------

@pytest.mark.parametrize(("rows", "share", "expected"), [
    (100, 0.0, 0), (100, 1.0, 100), (100, 0.1, 10), (100, 0.15, 15), (5000, 0.1, 500),
    (6000, 0.1, 500),  # capped at share * 5000
])
def test_probation_length(rows, share, expected):
    assert probation_length(rows, share) == expected


def test_each_row_scores_positive_in_a_window_and_negative_outside():
    # testCalcSweepScoreWindowScoreInteraction: a row's own contribution, against the null
    # detector: positive inside a window, negative outside, none in the probationary period.
    spans, cost, probation = [(30, 39), (75, 95)], PROFILES["standard"], probation_length(100, 0.1)
    null = raw_score(detections(100), spans, cost, probation)
    for row in range(100):
        change = raw_score(detections(100, row), spans, cost, probation) - null
        if row < probation:
            assert change == 0
        elif any(left <= row <= right for left, right in spans):
            assert change > 0
        else:
            assert change < 0


# --- by hand ---------------------------------------------------------------------------------

def test_hand_computed_series():
    # 20 rows, one window at rows 5-9 (width 5), rows 0-1 probationary. Detections:
    #  1: in the probationary period, not scored;
    #  3: FP before any window: -fp;
    #  7: TP at position -(9 - 7 + 1) / 5 = -0.6: S(-0.6) = 2/(1+e^-3) - 1 = 0.905148,
    #     / S(-1) = 0.986614 -> 0.917429 x tp;
    #  8: a second detection in the window, not counted;
    # 12: FP (12 - 9) / (5 - 1) = 0.75 after the window: S(0.75) = 2/(1+e^3.75) - 1 = -0.954045;
    # 19: FP 2.5 widths after: S(2.5) = 2/(1+e^12.5) - 1 = -0.999993.
    flags, spans = detections(20, 1, 3, 7, 8, 12, 19), [(5, 9)]
    standard = 0.917429 - 0.11 + 0.11 * -0.954045 + 0.11 * -0.999993
    low_fp = 0.917429 - 0.22 + 0.22 * -0.954045 + 0.22 * -0.999993
    assert raw_score(flags, spans, PROFILES["standard"], probation=2) == pytest.approx(standard, abs=1e-5)
    assert raw_score(flags, spans, PROFILES["reward_low_FP_rate"], probation=2) == pytest.approx(
        low_fp, abs=1e-5)
    # Normalised: null = -1 (the window missed), perfect = +1: 100 * (0.592485 + 1) / 2.
    score = score_series(flags, spans, PROFILES["standard"], probation=2)
    assert (score.null, score.perfect) == (-1.0, 1.0)
    assert score.normalised == pytest.approx(79.6242, abs=1e-3)


def test_scaled_sigmoid_landmarks():
    # The values nab/sweeper.py's docstring gives.
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.5) == -1.0


def test_profiles_are_nab_config_profiles_json():
    expected = {"standard": CostMatrix(1.0, 0.11, 1.0),
                "reward_low_FP_rate": CostMatrix(1.0, 0.22, 1.0),
                "reward_low_FN_rate": CostMatrix(1.0, 0.11, 2.0)}
    assert expected == PROFILES


# --- normalisation and windows ---------------------------------------------------------------

def test_perfect_is_a_detection_at_each_window_start_and_null_is_none():
    spans = [(10, 19), (40, 59), (80, 84)]
    for cost in PROFILES.values():
        score = score_series(detections(100), spans, cost, probation=5)
        assert score.raw == score.null == -3 * cost.fn
        starts = score_series(detections(100, 10, 40, 80), spans, cost, probation=5)
        assert starts.raw == pytest.approx(starts.perfect) == pytest.approx(3 * cost.tp)
        assert starts.normalised == pytest.approx(100.0)
        assert score.normalised == pytest.approx(0.0)


def test_windows_wholly_in_probation_are_not_scored():
    score = score_series(detections(100, 50), [(5, 9), (40, 59)], ONES, probation=20)
    assert (score.null, score.perfect) == (-1.0, 1.0)  # only the second window counts


def test_family_sums_before_normalising_and_no_windows_is_undefined():
    a = score_series(detections(50, 10), [(10, 14)], ONES)  # perfect
    b = score_series(detections(50), [(10, 14)], ONES)  # missed
    assert (a + b).normalised == pytest.approx(50.0)
    assert score_series(detections(50, 3), [], ONES).normalised is None
    assert FamilyScore().normalised is None


def test_window_spans_by_timestamp_limits():
    times = pd.Series(pd.date_range("2014-01-01", periods=10, freq="5min"))
    # Limits between rows still select the rows inside; a window with no row is left out.
    spans = window_spans(times, [["2014-01-01 00:12:00", "2014-01-01 00:26:00"],
                                 ["2014-01-01 00:00:00.000000", "2014-01-01 00:05:00.000000"],
                                 ["2015-01-01", "2015-01-02"]])
    assert spans == [(0, 1), (3, 5)]
