"""Level shifts: the run logic (ml.level_shift) and what it does to a chunk's verdicts
(tasks.level_shifts.find_shifts, pure: frames and verdicts in and out)."""

import numpy as np
import pandas as pd
import pytest

from ml.level_shift import Run, first_shift, reseed
from ml.stats import Moments
from tasks.level_shifts import find_shifts, marks
from tasks.verdicts import Judge, judge_events

K = 5


def test_k_values_in_a_row_on_one_side_make_a_shift_at_the_kth():
    scan = first_shift([0, 1, 1, 1, 1, 1, 1], [100, 160, 161, 159, 162, 158, 160], Run(), K)
    assert scan.position == 5
    assert scan.completed == (160, 161, 159, 162, 158)
    assert scan.run == Run()  # the next run starts with the next value


def test_a_value_in_range_or_on_the_other_side_ends_the_run():
    assert first_shift([1, 1, 1, 1, 0, 1, 1, 1, 1], [9.0] * 9, Run(), K).position is None
    scan = first_shift([1, 1, 1, 1, -1, -1, -1, -1], [9.0] * 8, Run(), K)
    assert scan.position is None and scan.run == Run(-1, (9.0,) * 4)


def test_alternating_sides_never_make_a_shift():
    sides = [1, -1] * 50
    scan = first_shift(sides, [1000.0 if s > 0 else -1000.0 for s in sides], Run(), K)
    assert scan.position is None and len(scan.run.values) == 1


def test_a_single_wild_value_is_a_run_of_one():
    scan = first_shift([0, 1, 0], [100.0, 1000.0, 100.0], Run(), K)
    assert scan.position is None and scan.run == Run()


def test_events_without_the_field_neither_extend_nor_end_a_run():
    scan = first_shift([1, None, 1, None, 1], [7.0, np.nan, 8.0, np.nan, 9.0], Run(1, (5.0, 6.0)), K)
    assert scan.position == 4 and scan.completed == (5.0, 6.0, 7.0, 8.0, 9.0)


def test_the_run_carries_over_between_chunks():
    first = first_shift([1, 1, 1], [150.0, 151.0, 152.0], Run(), K)
    assert first.position is None and first.run == Run(1, (150.0, 151.0, 152.0))
    second = first_shift([1, 1], [153.0, 154.0], Run.from_dict(first.run.as_dict()), K)
    assert second.position == 1 and second.completed == (150.0, 151.0, 152.0, 153.0, 154.0)


def test_off_below_two():
    assert first_shift([1] * 20, [9.0] * 20, Run(), 0) == first_shift([1] * 20, [9.0] * 20,
                                                                       Run(), 1)
    assert first_shift([1] * 20, [9.0] * 20, Run(), 0).position is None


def test_reseed_takes_the_runs_mean_and_the_larger_variance():
    assert reseed([158.0, 160.0, 162.0], previous_var=25.0) == (160.0, 25.0)
    mean, var = reseed([150.0, 160.0, 170.0], previous_var=1.0)
    assert mean == 160.0 and var == pytest.approx(np.var([150.0, 160.0, 170.0]))


# --- a chunk's verdicts ---------------------------------------------------------------------

RULES = Judge(z_threshold=4.0, min_history=30, model_min_rows=50, baseline_mode="both")
HISTORY = np.random.default_rng(3).normal(100.0, 5.0, size=1000)
BASELINE = {"x": Moments.of(HISTORY)}
RECENT = {"x": Moments.of(HISTORY)}


def chunk(values, runs=None, rules=RULES):
    frame = pd.DataFrame({"x": values})
    verdicts = judge_events(frame, BASELINE, rules, recent=RECENT)
    return frame, verdicts, find_shifts(frame, verdicts, BASELINE, RECENT, rules, runs or {}, K)


def test_a_sustained_shift_is_one_level_shift_then_the_new_level_is_valid():
    values = [100.0, 99.0] + list(np.random.default_rng(4).normal(160.0, 5.0, size=300))
    _, verdicts, shifts = chunk(values)

    invalid = [i for i, v in enumerate(verdicts) if not v["valid"]]
    assert invalid == [2, 3, 4, 5, 6]  # the run; then quiet
    codes = [[w["code"] for w in v["warnings"]] for v in verdicts]
    assert codes[6] == ["out_of_range", "level_shift"]
    assert sum(c.count("level_shift") for c in codes) == 1
    warning = verdicts[6]["warnings"][1]
    assert warning["field"] == "x" and warning["run"] == K and warning["value"] == values[6]
    assert warning["before"] == pytest.approx({"mean": RECENT["x"].mean, "std": RECENT["x"].std})
    assert warning["after"]["mean"] == pytest.approx(np.mean(values[2:7]))
    assert warning["after"]["std"] >= RECENT["x"].std
    [shift] = shifts.reseeds
    assert shift.row == 6 and shift.field == "x" and shift.mean == pytest.approx(np.mean(values[2:7]))
    assert shifts.runs == {} and not shifts.changed  # no run before, none after


def test_without_the_shift_the_new_level_stays_invalid():
    """What the re-judging changes: the same chunk judged with the run ignored."""
    values = [100.0, 99.0] + list(np.random.default_rng(4).normal(160.0, 5.0, size=300))
    verdicts = judge_events(pd.DataFrame({"x": values}), BASELINE, RULES, recent=RECENT)
    assert sum(not v["valid"] for v in verdicts) == 300


def test_a_single_wild_value_makes_no_shift():
    _, verdicts, shifts = chunk([100.0, 1000.0, 101.0, 99.0])
    assert [v["valid"] for v in verdicts] == [True, False, True, True]
    assert shifts.reseeds == [] and not shifts.changed


def test_alternating_wild_values_make_no_shift():
    _, verdicts, shifts = chunk([1000.0, -800.0] * 10)
    assert all(not v["valid"] for v in verdicts)
    assert not any(w["code"] == "level_shift" for v in verdicts for w in v["warnings"])
    assert shifts.reseeds == [] and shifts.runs == {"x": Run(-1, (-800.0,))}


def test_a_run_left_open_is_kept_and_completed_by_the_next_chunk():
    _, _, first = chunk([100.0, 170.0, 171.0, 172.0])
    assert first.changed and first.runs == {"x": Run(1, (170.0, 171.0, 172.0))}
    _, verdicts, second = chunk([173.0, 174.0, 175.0], runs=first.runs)
    assert [v["valid"] for v in verdicts] == [False, False, True]
    assert [w["code"] for w in verdicts[1]["warnings"]] == ["out_of_range", "level_shift"]
    assert second.reseeds[0].row == 1
    assert second.reseeds[0].mean == pytest.approx(172.0)
    assert second.runs == {"x": Run()} and second.changed  # the run ended: deleted


def test_a_second_shift_in_the_same_chunk_is_found_after_the_first():
    values = [160.0] * 10 + [230.0] * 10
    _, verdicts, shifts = chunk(values)
    assert [s.row for s in shifts.reseeds] == [4, 14]
    assert [i for i, v in enumerate(verdicts) if not v["valid"]] == [0, 1, 2, 3, 4,
                                                                     10, 11, 12, 13, 14]
    assert shifts.reseeds[1].mean == pytest.approx(230.0)


def test_marks_place_a_shift_among_a_batchs_values_of_its_field():
    _, _, shifts = chunk([160.0] * 6)
    [shift] = shifts.reseeds
    assert shift.row == 4
    matrix = np.array([[1.0, 1.0], [np.nan, 1.0], [2.0, 1.0], [3.0, 1.0], [5.0, 1.0],
                       [6.0, 1.0]])
    # Row 4 holds the 4th value of x in the batch (row 1 has none): position 3.
    assert marks(shifts, matrix, ["x", "y"], [0, 1, 2, 3, 4, 5]) == {
        "x": [(3, shift.mean, shift.var)]}
    assert marks(shifts, matrix, ["x", "y"], [1, 4]) == {"x": [(0, shift.mean, shift.var)]}
    assert marks(shifts, matrix, ["x", "y"], [0, 2, 3]) == {}  # not in that batch


def test_the_setting_is_off_at_zero_and_at_least_two_otherwise():
    from core.config import ConfigError, Settings
    from tasks.level_shifts import follow

    assert Settings.from_env({}).level_shift_run == 5
    assert Settings.from_env({"VIGIL_LEVEL_SHIFT_RUN": "3"}).level_shift_run == 3
    for bad in ("1", "-2"):
        with pytest.raises(ConfigError, match="VIGIL_LEVEL_SHIFT_RUN"):
            Settings.from_env({"VIGIL_LEVEL_SHIFT_RUN": bad})
    frame = pd.DataFrame({"x": [160.0] * 10})
    verdicts = judge_events(frame, BASELINE, RULES, recent=RECENT)
    off = Settings.from_env({"VIGIL_LEVEL_SHIFT_RUN": "0"})
    # Off, or a baseline mode the recent baseline does not judge in: nothing looked for
    # (no Redis needed: nothing is read).
    stamps = [0.0] * len(frame)
    assert follow(None, off, "t", "e", frame, stamps, verdicts, BASELINE, RECENT, RULES) is None
    all_time = Judge(z_threshold=4.0, min_history=30, model_min_rows=50)
    assert follow(None, Settings(), "t", "e", frame, stamps, verdicts, BASELINE, RECENT,
                  all_time) is None
