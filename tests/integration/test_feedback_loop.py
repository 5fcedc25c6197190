"""The feedback loop through the running service: per-type settings, feedback on verdicts,
replay and backtest, with bad input answered clearly."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import problem, wait_for

T0 = 1_790_000_000
WILD = 400.0  # about 30 standard deviations above N(100, 10)


def import_history(client, event_type: str, seed: int = 3, n: int = 600) -> None:
    rng = np.random.default_rng(seed)
    events = [{"timestamp": T0 + 60 * i, "payload": {"amount": float(x), "items": int(k)}}
              for i, (x, k) in enumerate(zip(rng.normal(100, 10, n), rng.integers(1, 5, n)))]
    response = client.post(f"/v1/event-types/{event_type}/history", json={"events": events})
    assert response.status_code == 202, response.text
    assert wait_for(client, response.json()["status_url"])["status"] == "succeeded"


def validate(client, event_type: str, amounts: list[float], start: float) -> dict:
    events = [{"event_type": event_type, "timestamp": start + 60 * i,
               "payload": {"amount": x, "items": 2}} for i, x in enumerate(amounts)]
    response = client.post("/v1/jobs", json={"events": events})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["status_url"])
    assert job["status"] == "succeeded", job
    return job


def run(client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 202, response.text
    return wait_for(client, response.json()["status_url"], timeout_s=120)


def amount_n(client, event_type: str) -> int:
    fields = client.get(f"/v1/event-types/{event_type}/baseline").json()["fields"]
    return next(f["count"] for f in fields if f["field"] == "amount")


@pytest.fixture
def judged(alpha, event_type) -> dict:
    """A type with history, and a job of ordinary amounts with one wild one at index 2."""
    import_history(alpha, event_type)
    job = validate(alpha, event_type, [101.0, 97.0, WILD, 99.0], start=T0 + 60 * 700)
    assert [r["valid"] for r in job["results"]] == [True, True, False, True]
    return job


def test_settings_are_validated_versioned_per_tenant_and_named_by_verdicts(alpha, beta,
                                                                          event_type):
    url = f"/v1/event-types/{event_type}/settings"
    fresh = alpha.get(url).json()
    assert fresh["version"] == 0 and fresh["overrides"] == {}
    assert fresh["settings"] == fresh["defaults"] and fresh["settings"]["z_threshold"] is None

    body = problem(alpha.put(url, json={"alert_rate": 2}), 422)
    assert "alert_rate" in body["errors"]["json"]
    body = problem(alpha.put(url, json={"z_treshold": 4}), 422)
    assert "z_treshold" in body["errors"]["json"]
    body = problem(alpha.put(url, json={"baseline_mode": "median"}), 422)
    assert "baseline_mode" in body["errors"]["json"]
    assert alpha.get(url).json()["version"] == 0  # nothing refused was stored

    import_history(alpha, event_type)
    response = alpha.put(url, json={"z_threshold": 6.0, "ignore_fields": ["items"]})
    assert response.status_code == 200, response.text
    saved = response.json()
    assert saved["version"] == 1 and saved["settings"]["z_threshold"] == 6.0
    assert saved["overrides"] == {"ignore_fields": ["items"], "z_threshold": 6.0}
    assert saved["changes"][0]["before"] == {} and saved["changes"][0]["after"] == \
        saved["overrides"]
    # The same PUT again is no new version; a stale If-Match is refused.
    assert alpha.put(url, json={"z_threshold": 6.0, "ignore_fields": ["items"]}
                     ).json()["version"] == 1
    problem(alpha.put(url, json={"z_threshold": 5.0}, headers={"If-Match": "0"}), 412)
    # Another tenant's type of the same name keeps the environment's settings.
    assert beta.get(url).json()["version"] == 0

    # 5 standard deviations: flagged by the default calibrated threshold (about 3.6-4),
    # not by the type's 6. items=1000 is ignored, so it flags nothing either.
    events = [{"event_type": event_type, "timestamp": T0 + 60 * 800,
               "payload": {"amount": 150.0, "items": 1000}}]
    response = alpha.post("/v1/jobs", json={"events": events})
    [result] = wait_for(alpha, response.json()["status_url"])["results"]
    assert result["settings_version"] == 1
    # (The model may still find it unusual: only the z-rule's threshold is the type's.)
    assert not [w for w in result["warnings"] if w["code"] == "out_of_range"], result
    assert "items" not in result["baseline"]


def test_feedback_moves_a_false_alarm_into_the_baseline_once(alpha, beta, event_type, judged):
    job_id = judged["job_id"]
    url = f"/v1/jobs/{job_id}/results/2/feedback"
    before = amount_n(alpha, event_type)
    figures = alpha.get(f"/v1/event-types/{event_type}/baseline").json()["fields"]

    given = alpha.post(url, json={"label": "false_alarm", "note": "load test"})
    assert given.status_code == 200, given.text
    assert given.json()["in_history"] and given.json()["changed"]
    assert amount_n(alpha, event_type) == before + 1
    # Retried, and posted concurrently: still counted once.
    assert not alpha.post(url, json={"label": "false_alarm", "note": "load test"}
                          ).json()["changed"]
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(
        alpha.post(url, json={"label": "false_alarm", "note": "again"}).status_code))
        for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 8
    assert amount_n(alpha, event_type) == before + 1

    # Withdrawn: out again. A valid event confirmed as an anomaly leaves the baseline.
    assert not alpha.post(url, json={"label": None}).json()["in_history"]
    assert amount_n(alpha, event_type) == before
    # Taken out exactly: the moments are those before it joined.
    for old, new in zip(figures, alpha.get(f"/v1/event-types/{event_type}/baseline"
                                           ).json()["fields"]):
        assert new["mean"] == pytest.approx(old["mean"], rel=1e-12)
        assert new["std"] == pytest.approx(old["std"], rel=1e-9)
    confirmed = alpha.post(f"/v1/jobs/{job_id}/results/0/feedback",
                           json={"label": "confirmed"}).json()
    assert not confirmed["in_history"] and amount_n(alpha, event_type) == before - 1

    summary = alpha.get(f"/v1/event-types/{event_type}/feedback").json()
    assert (summary["false_alarm"], summary["confirmed"]) == (0, 1)
    audit = summary["audit"]
    assert [e["after"] and e["after"]["label"] for e in audit[:2]] == ["confirmed", None]
    assert audit[1]["before"]["label"] == "false_alarm"
    assert all(e["by"].startswith("key:") for e in audit)

    problem(alpha.post(f"/v1/jobs/{job_id}/results/9/feedback", json={"label": "confirmed"}),
            404)
    problem(beta.post(url, json={"label": "false_alarm"}), 404)
    body = problem(alpha.post(url, json={"label": "wrong"}), 422)
    assert "label" in body["errors"]["json"]


def test_replay_and_backtest_change_nothing_but_report_the_change(alpha, event_type, judged):
    settings_url = f"/v1/event-types/{event_type}/settings"
    baseline_before = alpha.get(f"/v1/event-types/{event_type}/baseline").json()

    # The judged job's events, replayed with what judged them: the same verdicts.
    replay = run(alpha, f"/v1/event-types/{event_type}/revalidate", {"since": T0 + 60 * 700})
    assert replay["status"] == "succeeded", replay
    assert replay["summary"]["after"]["events"] == 4
    assert replay["summary"]["changed"] == 0
    assert replay["summary"]["before"]["flagged"] == replay["summary"]["after"]["flagged"] >= 1

    # amount no longer checked (neither the z-rule nor the model looks at it).
    proposed = {"ignore_fields": ["amount"]}
    test = run(alpha, f"/v1/event-types/{event_type}/backtest",
               {"settings": proposed, "since": T0 + 60 * 700})
    assert test["status"] == "succeeded", test
    summary = test["summary"]
    assert summary["current"]["events"] == summary["proposed"]["events"] == 4
    assert summary["current"]["by_rule"].get("out_of_range") == 1
    assert summary["proposed"]["flagged"] == 0
    assert summary["proposed"]["settings"]["ignore_fields"] == ["amount"]
    wild = [e for e in summary["changed_events"] if e["values"]["amount"] == WILD]
    assert wild and not wild[0]["current"]["valid"] and wild[0]["proposed"]["valid"]
    assert wild[0]["current"]["warnings"][0]["z"] > 20

    # Nothing moved: baselines, settings, the verdict stored.
    assert alpha.get(f"/v1/event-types/{event_type}/baseline").json() == baseline_before
    assert alpha.get(settings_url).json()["version"] == 0

    # Applied (and the model retrained with it now), then replayed: the wild event's
    # verdict changes, with its figures.
    assert alpha.put(settings_url, json=proposed).status_code == 200
    assert run(alpha, f"/v1/event-types/{event_type}/model", {})["status"] == "succeeded"
    replay = run(alpha, f"/v1/event-types/{event_type}/revalidate", {"since": T0 + 60 * 700})
    changed = replay["summary"]["changed_events"]
    assert [(e["values"]["amount"], e["before"]["valid"]) for e in changed
            if e["after"]["valid"]] == [(WILD, False)]
    assert replay["summary"]["settings_version"] == 1


def test_backtest_and_replay_refuse_what_cannot_be_done(alpha, event_type):
    problem(alpha.post(f"/v1/event-types/{event_type}/backtest",
                       json={"settings": {"z_threshold": 4}}), 409)
    problem(alpha.post(f"/v1/event-types/{event_type}/revalidate", json={}), 409)
    body = problem(alpha.post(f"/v1/event-types/{event_type}/backtest",
                              json={"settings": {"alert_rate": -1}}), 422)
    assert "settings" in body["errors"]["json"]
    body = problem(alpha.post(f"/v1/event-types/{event_type}/revalidate",
                              json={"since": T0 + 10, "until": T0}), 422)
    assert "until" in body["errors"]["json"]
