"""`make eval`'s bookkeeping (evaluation/nab.py) on tiny synthetic series, without a stack."""

import argparse

import numpy as np
import pandas as pd
import pytest

from evaluation import nab
from evaluation.nab_score import PROFILES

TIMES = pd.Series(pd.date_range("2015-03-01", periods=20, freq="5min"))


def at(row: int) -> str:
    return str(TIMES[row])


# Rows 0-3 are history. Windows: rows 1-2 (wholly in the history), 8-10 and 15-16.
WINDOWS = [[at(1), at(2)], [at(8), at(10)], [at(15), at(16)]]


def flags(*rows: int) -> np.ndarray:
    out = np.zeros(len(TIMES), dtype=bool)
    out[list(rows)] = True
    return out


def test_tally_counts_judged_windows_and_false_alarms_outside_them():
    # 0 and 3: history rows (no verdict; ignored); 9: inside the second window; 13: a false alarm.
    t = nab.tally(TIMES, flags(0, 3, 9, 13), WINDOWS, history=4)
    assert (t.windows_flagged, t.windows, t.windows_in_history) == (1, 2, 1)
    # 16 replayed rows, 5 of them inside windows.
    assert (t.false_alarms, t.events_outside) == (1, 11)
    assert t.per_1000 == pytest.approx(1000 / 11)
    assert t.window_share == pytest.approx(0.5)


def test_tally_nab_scores_skip_the_history():
    t = nab.tally(TIMES, flags(0, 1, 3, 8, 15), WINDOWS, history=4)
    for profile, cost in PROFILES.items():
        score = t.nab[profile]
        # Two judged windows, both caught at their first row: a perfect score, whatever was
        # flagged in the history part (rows 0, 1 and 3, one of them inside a window).
        assert (score.null, score.perfect) == (-2 * cost.fn, 2 * cost.tp)
        assert score.normalised == pytest.approx(100.0)


def test_tally_without_windows_has_no_window_share_and_no_nab_score():
    t = nab.tally(TIMES, flags(5, 6), [], history=4)
    assert (t.windows, t.window_share, t.false_alarms, t.events_outside) == (0, None, 2, 16)
    assert t.nab["standard"].normalised is None
    assert t.nab["standard"].raw == pytest.approx(-2 * 0.11)


def test_tallies_add_up_across_series():
    a = nab.tally(TIMES, flags(9, 13), WINDOWS, history=4)
    b = nab.tally(TIMES, flags(5), [], history=4)
    total = a + b
    assert (total.windows_flagged, total.windows, total.windows_in_history) == (1, 2, 1)
    assert (total.false_alarms, total.events_outside) == (2, 27)
    assert total.nab["standard"].raw == pytest.approx(a.nab["standard"].raw + b.nab["standard"].raw)


def test_report_prints_each_family_both_detectors_and_the_total():
    with_windows = nab.tally(TIMES, flags(8, 13), WINDOWS, history=4)
    without = nab.tally(TIMES, flags(5), [], history=4)
    results = [nab.SeriesResult("realTweets", "realTweets/a.csv", with_windows, without, 1.0),
               nab.SeriesResult("artificialNoAnomaly", "artificialNoAnomaly/b.csv", without, without,
                                1.0)]
    lines = nab.report(results)
    assert lines[0].split()[:3] == ["family", "(series)", "detector"]
    tweets, no_anomaly, total = lines[1], lines[3], lines[5]
    assert tweets.startswith("realTweets (1)") and "1/2" in tweets and "50%" in tweets
    # One window caught at its first row (+1), one missed (-1), a false alarm 1.5 widths after
    # a 3-row window (0.11 x S(1.5) = -0.1099): 100 * (-0.1099 + 2) / (2 + 2).
    assert tweets.split()[-2] == "47.3"
    assert no_anomaly.startswith("artificialNoAnomaly (1)") and no_anomaly.count("n/a") == 3
    assert f"{1000 / 16:.2f}" in no_anomaly
    assert total.startswith("ALL") and "1/2" in total
    assert lines[2].split()[0] == "3-sigma"


def test_naive_flags_are_three_sigma_of_the_history():
    history = np.array([9.0, 11.0] * 50)  # mean 10, std 1
    assert nab.naive_flags(history, np.array([10.0, 12.9, 13.1, 6.8])).tolist() == [
        False, False, True, True]


class RecordingClient:
    """Answers like the API (each event invalid when its value is over 100) and records calls:
    this checks what the replay sends and how it lines verdicts up, not the service."""

    def __init__(self):
        self.history, self.jobs, self.docs = None, [], {}

    def import_history(self, event_type, events):
        self.history = (event_type, events)
        self.docs["h"] = {"status": "succeeded"}
        return {"job_id": "h"}

    def submit(self, events):
        job_id = f"j{len(self.jobs)}"
        self.jobs.append(events)
        self.docs[job_id] = {"status": "succeeded",
                             "results": [{"valid": e["payload"]["value"] <= 100} for e in events]}
        return {"job_id": job_id}

    def job(self, job_id):
        return self.docs[job_id]


def test_replay_imports_the_first_15_percent_and_aligns_flags_with_rows():
    values = np.arange(40, dtype=float)
    values[[10, 25, 39]] = 500.0  # 10 is in the history part (the first 6 rows), 25 and 39 are not
    values[2] = 700.0
    frame = pd.DataFrame({"timestamp": pd.date_range("2015-03-01", periods=40, freq="5min"),
                          "value": values})
    client = RecordingClient()
    out = nab.replay(client, frame, "t", batch=7)
    event_type, history = client.history
    assert event_type == "t" and len(history) == 6  # int(40 * 0.15)
    assert history[0] == {"timestamp": 1425168000, "payload": {"value": 0.0}}
    assert [len(job) for job in client.jobs] == [7, 7, 7, 7, 6]
    sent = [e for job in client.jobs for e in job]
    assert [e["payload"]["value"] for e in sent] == values[6:].tolist()  # in the file's order
    assert np.flatnonzero(out).tolist() == [10, 25, 39]  # row 2 was history: no verdict


def test_env_option_takes_name_value_pairs():
    args = nab.parse_args(["--env", "VIGIL_ALERT_RATE=0.002", "--env", "VIGIL_Z_THRESHOLD=4",
                           "--family", "realTweets"])
    assert dict(args.env) == {"VIGIL_ALERT_RATE": "0.002", "VIGIL_Z_THRESHOLD": "4"}
    assert (args.family, args.batch) == (["realTweets"], 250)
    with pytest.raises(argparse.ArgumentTypeError):
        nab.env_setting("VIGIL_Z_THRESHOLD")


def test_the_eval_stack_runs_with_the_defaults_not_the_callers_settings():
    from evaluation.stack import stack_env

    shell = {"PATH": "/bin", "VIGIL_Z_THRESHOLD": "5", "VIGIL_ANOMALY_CONTAMINATION": "0.001"}
    env = stack_env(shell, {"VIGIL_ALERT_RATE": "0.002"}, inherit_settings=False)
    assert env["PATH"] == "/bin" and env["VIGIL_ALERT_RATE"] == "0.002"
    assert "VIGIL_Z_THRESHOLD" not in env and "VIGIL_ANOMALY_CONTAMINATION" not in env
    assert stack_env(shell)["VIGIL_Z_THRESHOLD"] == "5"  # make soak keeps inheriting them


def test_gaussian_report_states_the_bound_from_the_alert_rate():
    streams = [nab.StreamResult("N(100,10)", 20_000, 30)]
    lines = nab.gaussian_report(streams, alert_rate=0.001)
    assert "bound 2 x VIGIL_ALERT_RATE = 2.00 per 1,000" in lines[0]
    assert lines[1].split()[-2:] == ["20000", "1.50"]
    assert "no VIGIL_ALERT_RATE" in nab.gaussian_report(streams, alert_rate=None)[0]
