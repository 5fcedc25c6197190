"""Seed history, submit typical and extreme events through HTTP, and read the verdicts."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pytest
from helpers import problem, wait_for

from core import keys

T0 = 1_790_000_000  # epoch seconds


def seed(client, event_type: str, n: int = 400, seed: int = 7) -> tuple[dict, np.ndarray]:
    """n events of history with amount ~ N(100, 10) and items ~ N(5, 1); returns the job."""
    rng = np.random.default_rng(seed)
    amounts = rng.normal(100, 10, n)
    items = rng.normal(5, 1, n)
    # Spread over three days: the model earns time_of_day (two full days needed), and no
    # time of day is new to it.
    events = [{"timestamp": T0 + i * 3 * 86_400 // n,
               "payload": {"amount": float(a), "cart": {"items": float(b)}}}
              for i, (a, b) in enumerate(zip(amounts, items))]
    response = client.post(f"/v1/event-types/{event_type}/history", json={"events": events})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["status_url"])
    assert job["status"] == "succeeded", job
    return job, np.column_stack([amounts, items])


def validate(client, event_type: str, payload: dict, **extra) -> dict:
    response = client.post("/v1/events/validate", json={
        "event_type": event_type, "payload": payload, "timestamp": "2026-11-23T12:00:00Z",
        **extra})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["Location"] == body["status_url"] == f"/v1/jobs/{body['job_id']}"
    return wait_for(client, body["status_url"])


def test_history_import_seeds_baseline_and_trains_model(alpha, event_type):
    job, values = seed(alpha, event_type)
    assert job["summary"]["events"] == 400
    assert job["summary"]["fields"] == ["amount", "cart.items"]
    assert job["summary"]["model"]["rows"] == 400

    baseline = alpha.get(f"/v1/event-types/{event_type}/baseline").json()
    by_field = {f["field"]: f for f in baseline["fields"]}
    assert by_field["amount"]["count"] == 400
    assert by_field["amount"]["mean"] == pytest.approx(values[:, 0].mean(), rel=1e-12)
    assert by_field["amount"]["std"] == pytest.approx(values[:, 0].std(), rel=1e-12)
    assert by_field["cart.items"]["std"] == pytest.approx(values[:, 1].std(), rel=1e-12)

    model = alpha.get(f"/v1/event-types/{event_type}/model").json()
    assert model["version"] == 1
    assert model["features"] == ["amount", "cart.items", "@time_of_day.sin", "@time_of_day.cos"]
    assert model["derived_features"] == ["time_of_day"]
    assert model["rows"] == 400
    listed = {t["event_type"]: t for t in alpha.get("/v1/event-types").json()["event_types"]}
    assert listed[event_type] == {"event_type": event_type, "events": 400, "model_version": 1}


def test_typical_event_is_valid_and_extreme_event_is_flagged_with_figures(alpha, event_type):
    _, values = seed(alpha, event_type)
    mean, std = values[:, 0].mean(), values[:, 0].std()

    typical = validate(alpha, event_type, {"amount": 101.0, "cart": {"items": 5.0}},
                       event_id="order-1")
    assert typical["status"] == "succeeded"
    assert typical["summary"] == {"events": 1, "valid": 1, "invalid": 0, "warnings": {}}
    [result] = typical["results"]
    assert result["valid"] is True
    assert result["event_id"] == "order-1"
    assert result["warnings"] == []
    assert result["processed_at"]
    assert 0 < result["anomaly_score"] < 0.6
    assert result["model_version"] == 1

    extreme = validate(alpha, event_type, {"amount": 400.0, "cart": {"items": 5.0}})
    [result] = extreme["results"]
    assert result["valid"] is False
    [out_of_range] = [w for w in result["warnings"] if w["code"] == "out_of_range"]
    assert out_of_range["field"] == "amount"
    assert out_of_range["value"] == 400.0
    # The baseline now also holds the typical event accepted above.
    assert out_of_range["mean"] == pytest.approx((values[:, 0].sum() + 101.0) / 401, rel=1e-9)
    assert out_of_range["std"] == pytest.approx(np.append(values[:, 0], 101.0).std(), rel=1e-9)
    assert out_of_range["z"] == pytest.approx(
        (400 - out_of_range["mean"]) / out_of_range["std"], rel=1e-9)
    assert out_of_range["z"] > 25
    assert "standard deviations" in out_of_range["message"]
    assert abs(out_of_range["mean"] - mean) < 1 and abs(out_of_range["std"] - std) < 1
    assert extreme["summary"]["invalid"] == 1


def test_multivariate_anomaly_is_flagged_by_the_model_with_contributors(alpha, event_type):
    seed(alpha, event_type)
    # Each value within 3 sigma, but both at the edge at once: rare for the model, not for z.
    job = validate(alpha, event_type, {"amount": 124.0, "cart": {"items": 7.4}})
    [result] = job["results"]
    assert [w["code"] for w in result["warnings"]] == ["anomaly"]
    [anomaly] = result["warnings"]
    assert anomaly["score"] == result["anomaly_score"] > anomaly["threshold"]
    # The two fields pushed the score most (time of day may follow, far behind).
    assert {c["field"] for c in anomaly["contributors"][:2]} == {"amount", "cart.items"}


def test_invalid_events_do_not_move_the_baseline(alpha, event_type):
    seed(alpha, event_type)
    before = alpha.get(f"/v1/event-types/{event_type}/baseline").json()
    validate(alpha, event_type, {"amount": 10_000.0, "cart": {"items": 5.0}})
    after = alpha.get(f"/v1/event-types/{event_type}/baseline").json()
    assert after == before


def test_cold_start_is_said_not_failed(alpha, event_type):
    job = validate(alpha, event_type, {"amount": 5.0, "note": "text is ignored", "ok": True})
    [result] = job["results"]
    assert result["valid"] is True
    codes = {note["code"]: note for note in result["notes"]}
    assert codes["insufficient_history"]["field"] == "amount"
    assert codes["insufficient_history"]["count"] == 0
    assert codes["insufficient_history"]["needed"] == 30
    assert "no_model" in codes
    assert result["anomaly_score"] is None
    # Accepted: it now counts toward the history.
    baseline = alpha.get(f"/v1/event-types/{event_type}/baseline").json()
    assert baseline["fields"] == [{"field": "amount", "count": 1, "mean": 5.0, "std": 0.0,
                                   "checked": False, "z_threshold": {
                                       "threshold": pytest.approx(3.6153, abs=1e-4),
                                       "source": "gaussian: no calibration yet",
                                       "implied_rate": None}}]


def test_no_model_note_says_when_a_model_is_being_trained(alpha, event_type, redis_server,
                                                          settings):
    """Before a model exists, the note says whether one is coming: with too little history,
    how much is needed; while a training (or a history import, which trains) holds the
    type's training lock, that a model is being trained."""
    def no_model_message() -> str:
        [result] = validate(alpha, event_type, {"amount": 5.0})["results"]
        return {note["code"]: note for note in result["notes"]}["no_model"]["message"]

    message = no_model_message()
    assert f"trained once {settings.model_min_rows} events of history exist (0 so far)" \
        in message
    r = redis_server.client()
    lock = keys.training_lock("alpha", event_type)
    r.set(lock, "a training in progress", ex=60)  # as tasks.models.schedule_training does
    try:
        message = no_model_message()
    finally:
        r.delete(lock)
    assert "one is being trained on its history (1 events so far)" in message
    assert "trained once" not in message


def test_a_validate_jobs_event_type_is_its_events_when_they_share_one(alpha, event_type):
    single = alpha.post("/v1/events/validate", json={
        "event_type": event_type, "payload": {"amount": 1.0}, "timestamp": T0}).json()
    same = alpha.post("/v1/jobs", json={"events": [
        {"event_type": event_type, "payload": {"amount": 1.0}, "timestamp": T0 + i}
        for i in range(3)]}).json()
    mixed = alpha.post("/v1/jobs", json={"events": [
        {"event_type": name, "payload": {"amount": 1.0}, "timestamp": T0}
        for name in (event_type, event_type + "-other")]}).json()
    assert wait_for(alpha, single["status_url"])["event_type"] == event_type
    assert wait_for(alpha, same["status_url"])["event_type"] == event_type
    assert wait_for(alpha, mixed["status_url"])["event_type"] is None


def test_batch_job_and_results_csv(alpha, event_type):
    seed(alpha, event_type)
    events = [{"event_type": event_type, "timestamp": T0 + i, "event_id": f"e{i}",
               "payload": {"amount": 100.0 + i, "cart": {"items": 5.0}}} for i in range(20)]
    events.append({"event_type": event_type, "timestamp": T0, "event_id": "bad",
                   "payload": {"amount": -500.0, "cart": {"items": 5.0}}})
    response = alpha.post("/v1/jobs", json={"events": events})
    assert response.status_code == 202
    job = wait_for(alpha, response.json()["status_url"])
    assert job["progress"] == {"done": 21, "total": 21}
    assert job["summary"]["events"] == 21 and job["summary"]["invalid"] >= 1
    assert [r["index"] for r in job["results"]] == list(range(21))
    assert job["results"][-1]["valid"] is False

    csv = alpha.get(f"{response.json()['status_url']}/results.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("index,event_id,event_type,timestamp,valid,anomaly_score")
    assert len(lines) == 22
    # As JSON writes them: lowercase booleans; timestamps ISO-8601 UTC, not epoch floats.
    sent_at = datetime.fromtimestamp(T0, UTC).isoformat().replace("+00:00", "Z")
    assert lines[-1].startswith(f"20,bad,{event_type},{sent_at},false,")
    assert lines[1].split(",")[:5] == ["0", "e0", event_type, sent_at, "true" if
                                       job["results"][0]["valid"] else "false"]
    assert "True" not in csv.text and "False" not in csv.text


def test_csv_history_and_csv_jobs(alpha, event_type):
    rng = np.random.default_rng(3)
    rows = "\n".join(f"{T0 + i * 60},{v:.4f}" for i, v in enumerate(rng.normal(50, 5, 2000)))
    response = alpha.post(f"/v1/event-types/{event_type}/history",
                          content=f"timestamp,latency_ms\n{rows}\n",
                          headers={"Content-Type": "text/csv"})
    assert response.status_code == 202, response.text
    job = wait_for(alpha, response.json()["status_url"])
    assert job["summary"]["events"] == 2000 and job["summary"]["model"]["rows"] == 2000

    body = (f"event_type,timestamp,event_id,latency_ms\n{event_type},2026-11-23T12:00:00Z,a,51\n"
            f"{event_type},1790000000,b,95\n")
    response = alpha.post("/v1/jobs", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 202, response.text
    job = wait_for(alpha, response.json()["status_url"])
    assert [(r["event_id"], r["valid"]) for r in job["results"]] == [("a", True), ("b", False)]


def test_on_demand_training_makes_a_new_version(alpha, event_type):
    seed(alpha, event_type)
    response = alpha.post(f"/v1/event-types/{event_type}/model")
    assert response.status_code == 202
    job = wait_for(alpha, response.json()["status_url"])
    assert job["status"] == "succeeded" and job["summary"]["model"]["version"] == 2
    assert alpha.get(f"/v1/event-types/{event_type}/model").json()["version"] == 2


def test_training_without_history_fails_with_a_reason(alpha, event_type):
    response = alpha.post(f"/v1/event-types/{event_type}/model")
    job = wait_for(alpha, response.json()["status_url"])
    assert job["status"] == "failed"
    assert job["error"] == "0 events of history; the anomaly model needs 50"


def test_single_events_arriving_together_are_scored_in_micro_batches(alpha, event_type):
    from concurrent.futures import ThreadPoolExecutor

    seed(alpha, event_type)

    def one(i: int) -> str:
        response = alpha.post("/v1/events/validate", json={
            "event_type": event_type, "timestamp": T0 + i, "event_id": f"s{i}",
            "payload": {"amount": 400.0 if i == 7 else 100.0, "cart": {"items": 5.0}}})
        assert response.status_code == 202
        return response.json()["status_url"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        urls = list(pool.map(one, range(60)))
    jobs = [wait_for(alpha, url) for url in urls]
    results = [job["results"][0] for job in jobs]
    assert [r["event_id"] for r in results] == [f"s{i}" for i in range(60)]
    assert [r["valid"] for r in results] == [i != 7 for i in range(60)]
    # Scored together: fewer distinct batches (processed_at) than events.
    assert len({r["processed_at"] for r in results}) < 60
    baseline = alpha.get(f"/v1/event-types/{event_type}/baseline").json()
    assert {f["field"]: f["count"] for f in baseline["fields"]} == {"amount": 459,
                                                                     "cart.items": 459}


def test_single_events_claimed_by_a_worker_that_died_are_judged_once_the_claim_lapses(
        alpha, event_type, settings):
    """Jobs a worker took from the inbox and never finished (it died) go back to the inbox
    when the sweep (beat) finds their claim lapsed, and are judged once."""
    import redis

    from core import keys
    from tasks import create_celery, inbox
    from tasks.store import jobs

    seed(alpha, event_type)
    r = redis.Redis.from_url(settings.redis_url)
    events = [{"event_type": event_type, "timestamp": T0 + i, "event_id": f"d{i}",
               "payload": {"amount": 100.0, "cart": {"items": 5.0}}} for i in range(5)]
    # Stored and appended as the API does, but without waking the worker: a worker that
    # died claimed them (its claim lapsed a second ago) before judging any.
    job_ids = [jobs.create_inbox_job(r, settings, "alpha", event)[0] for event in events]
    inbox.join_ring(r, "alpha")
    claimed = inbox.claim(r, 1000, time.time() - 1, {})
    assert {j for _, j in claimed} >= set(job_ids)
    assert all(alpha.get(f"/v1/jobs/{j}").json()["status"] == "queued" for j in job_ids)

    create_celery(settings).send_task("vigil.sweep_events")  # what beat sends every 5 s
    answers = [wait_for(alpha, f"/v1/jobs/{j}") for j in job_ids]
    assert [job["status"] for job in answers] == ["succeeded"] * 5
    assert [job["results"][0]["event_id"] for job in answers] == [f"d{i}" for i in range(5)]
    assert [jobs.get_job(r, "alpha", j)["attempts"] for j in job_ids] == [1] * 5  # judged once
    baseline = alpha.get(f"/v1/event-types/{event_type}/baseline").json()
    assert {f["field"]: f["count"] for f in baseline["fields"]} == {"amount": 405,
                                                                     "cart.items": 405}
    assert r.zcard(keys.tenant_inbox_claimed("alpha")) == 0


def test_verdicts_of_many_single_events_are_read_in_one_request(alpha, beta, event_type):
    """GET /v1/jobs?ids= returns the asked jobs in the order asked, each with its results once
    finished; ids that are unknown or another tenant's are left out."""
    seed(alpha, event_type)
    ids = [alpha.post("/v1/events/validate", json={
        "event_type": event_type, "timestamp": T0 + i, "event_id": f"b{i}",
        "payload": {"amount": 400.0 if i == 1 else 100.0, "cart": {"items": 5.0}}}).json()["job_id"]
        for i in range(3)]
    other = beta.post("/v1/events/validate", json={
        "event_type": event_type, "timestamp": T0, "payload": {"amount": 1.0}}).json()["job_id"]
    asked = [ids[2], "0" * 32, ids[0], other, ids[1], ids[0]]
    deadline = time.monotonic() + 30
    while True:
        response = alpha.get("/v1/jobs", params={"ids": ",".join(asked)})
        assert response.status_code == 200, response.text
        jobs = response.json()["jobs"]
        if all(job["status"] == "succeeded" for job in jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [job["job_id"] for job in jobs] == [ids[2], ids[0], ids[1]]
    assert [job["status"] for job in jobs] == ["succeeded"] * 3
    assert [(job["results"][0]["event_id"], job["results"][0]["valid"]) for job in jobs] == [
        ("b2", True), ("b0", True), ("b1", False)]
    assert jobs[0] == alpha.get(f"/v1/jobs/{ids[2]}").json()  # the same document as one GET


def test_reading_jobs_by_id_refuses_malformed_ids_and_too_many(alpha):
    body = problem(alpha.get("/v1/jobs", params={"ids": "not-a-job-id"}), 422)
    assert "32 hexadecimal digits" in str(body["errors"])
    body = problem(alpha.get("/v1/jobs", params={"ids": ",".join(["a" * 32] * 101)}), 422)
    assert "1 to 100 jobs" in str(body["errors"])
    assert alpha.get("/v1/jobs", params={"ids": "a" * 32}).json() == {"jobs": []}


def test_a_single_event_message_of_the_earlier_design_is_still_judged(alpha, event_type,
                                                                      settings):
    """Upgrading: a message sent per event before the inbox existed (task args tenant and
    job id) still gets its job judged."""
    import redis

    from tasks import create_celery
    from tasks.store import jobs

    job_id = jobs.create_job(redis.Redis.from_url(settings.redis_url), settings, "alpha",
                              kind="validate", events=[{
                                  "event_type": event_type, "timestamp": T0, "event_id": "old",
                                  "payload": {"amount": 100.0}}])
    create_celery(settings).send_task("vigil.validate_events", args=["alpha", job_id])
    job = wait_for(alpha, f"/v1/jobs/{job_id}")
    assert job["status"] == "succeeded" and job["results"][0]["event_id"] == "old"
