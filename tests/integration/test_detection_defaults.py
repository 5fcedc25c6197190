"""Detection with the shipped defaults, through the running service: the alert budget
(VIGIL_ALERT_RATE, thresholds calibrated per field on the type's own history) and
time-of-day features only once a history spans two days."""

from __future__ import annotations

import numpy as np
from helpers import wait_for

from ml.calibration import gaussian_z

T0 = 1_790_000_000  # epoch seconds
ALERT_RATE = 0.001  # the default
GAUSSIAN_Z = gaussian_z(0.3 * ALERT_RATE)  # the z-rule's share of it, before calibration


def import_history(client, event_type: str, values: np.ndarray, span_s: float) -> dict:
    events = [{"timestamp": T0 + i * span_s / len(values), "payload": {"value": float(x)}}
              for i, x in enumerate(values)]
    response = client.post(f"/v1/event-types/{event_type}/history", json={"events": events})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["status_url"])
    assert job["status"] == "succeeded", job
    return client.get(f"/v1/event-types/{event_type}/model").json()


def judge(client, event_type: str, values: np.ndarray, start: float) -> list[dict]:
    """The verdicts of these values, sent in time order as jobs of 5,000, each awaited."""
    results = []
    for first in range(0, len(values), 5000):
        events = [{"event_type": event_type, "timestamp": start + (first + i) * 10.0,
                   "payload": {"value": float(x)}}
                  for i, x in enumerate(values[first:first + 5000])]
        response = client.post("/v1/jobs", json={"events": events})
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["status_url"], timeout_s=120)
        assert job["status"] == "succeeded", job
        results += job["results"]
    return results


def test_short_span_history_uses_no_time_of_day_and_keeps_the_alert_budget(alpha, event_type):
    """1,000 events over 17 minutes, then 5,000 of the same N(100, 10) a day and a half
    later (another time of day). With time_of_day always on this flagged about 10% (issue 15).
    Expected flags: about 5 (0.001 of 5,000); the bound, 15, is 3x: for a Poisson count of
    mean 5 that is exceeded with probability 7e-5, and the seed is fixed (the workers judge
    the same values in the same order each run), so it does not flake."""
    rng = np.random.default_rng(11)
    model = import_history(alpha, event_type, rng.normal(100, 10, 1000), span_s=17 * 60)
    assert model["derived_features"] == [] and model["features"] == ["value"]
    assert model["derived_features_why"] == {
        "time_of_day": "off: history spans 0.0118 days; needs 2",
        "delta": "off: not in VIGIL_DERIVED_FEATURES"}
    assert model["alert_rate"] == ALERT_RATE
    assert model["contamination"] == 0.7 * ALERT_RATE
    value = model["z_thresholds"]["value"]
    assert value["source"] == "calibrated on 970 values (peaks over threshold)"
    # At most two of the 970 replayed values beyond it (about 0.3 expected: a coarse figure).
    assert value["threshold"] >= GAUSSIAN_Z and value["implied_rate"] * 970 <= 2

    results = judge(alpha, event_type, rng.normal(100, 10, 5000), start=T0 + 1.5 * 86_400)
    flagged = [r for r in results if not r["valid"]]
    print(f"flagged {len(flagged)} of {len(results)}: "
          f"{sorted({w['code'] for r in flagged for w in r['warnings']})}")
    assert len(flagged) <= 3 * ALERT_RATE * len(results)

    baseline = alpha.get(f"/v1/event-types/{event_type}/baseline").json()
    assert baseline["alert_rate"] == ALERT_RATE
    [field] = baseline["fields"]
    assert field["z_threshold"] == value


def test_heavy_tailed_type_gets_its_own_threshold_and_keeps_the_budget(alpha, event_type):
    """Lognormal values: the Gaussian z (3.6) would flag about 1% of them (30x the z-rule's
    share); calibrated on the history, the threshold is far higher and the share flagged of
    10,000 fresh values stays within 3x the alert rate (expected about 15: 6 by the z-rule,
    1.4-2.2x its share in the unit replay, and about 7-10 by the model; the bound, 30, is
    exceeded by a Poisson count of mean 15 with probability 1e-4, and the seed is fixed)."""
    rng = np.random.default_rng(12)
    model = import_history(alpha, event_type, rng.lognormal(3, 0.6, 5000), span_s=3600)
    value = model["z_thresholds"]["value"]
    assert value["source"].startswith("calibrated on 4970 values")
    assert value["threshold"] > GAUSSIAN_Z + 2
    assert value["implied_rate"] * 4970 <= 10  # about 1.5 expected (0.0003 of 4,970)
    assert 0 < model["implied_rate"] <= 2 * model["contamination"]

    results = judge(alpha, event_type, rng.lognormal(3, 0.6, 10_000), start=T0 + 86_400)
    flagged = [r for r in results if not r["valid"]]
    by_z = [r for r in flagged if any(w["code"] == "out_of_range" for w in r["warnings"])]
    print(f"flagged {len(flagged)} of {len(results)}, {len(by_z)} out of range")
    assert len(flagged) <= 3 * ALERT_RATE * len(results)

    # The warning names the threshold it was judged by: the calibrated one.
    [extreme] = judge(alpha, event_type, np.array([1e4]), start=T0 + 3 * 86_400)
    [warning] = [w for w in extreme["warnings"] if w["code"] == "out_of_range"]
    assert warning["threshold"] == value["threshold"]
    assert f"its threshold is {value['threshold']:.3g} standard deviations" in warning["message"]


def test_history_over_two_days_earns_time_of_day(alpha, event_type):
    rng = np.random.default_rng(13)
    model = import_history(alpha, event_type, rng.normal(100, 10, 400), span_s=3 * 86_400)
    assert model["derived_features"] == ["time_of_day"]
    assert model["features"] == ["value", "@time_of_day.sin", "@time_of_day.cos"]
    assert model["derived_features_why"]["time_of_day"] == "on: history spans 2.99 days (needs 2)"
