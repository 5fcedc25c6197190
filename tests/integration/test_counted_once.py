"""Whatever fails while judging, every event is counted once: merged and reported, or neither.

A model that cannot score fails nothing (the z-check judges alone, and says so); a type that
cannot be judged fails only its own jobs of a micro-batch; a batch job that fails after some
of its chunks merged reports those, and names the events a client must resend.

The faults are real where they can be (a corrupt model blob, a stored event that cannot be
read, judged by the real workers); a model whose scoring raises is put in a worker's model
cache in process (tasks.models._cache), as a fault, not a stand-in for what is checked.
"""

from __future__ import annotations

import uuid

import pytest
import redis
from helpers import wait_for

from tasks import create_celery, inbox, validate
from tasks.models import _cache
from tasks.store import baselines, jobs, model_blobs

T0 = 1_790_000_000
TENANT = "alpha"


def steady(i: int) -> float:
    """Values well inside each other's spread (100-109): valid against any baseline of them."""
    return 100.0 + i % 10


def event(event_type: str, i: int, x: float | None = None, **extra) -> dict:
    return {"event_type": event_type, "timestamp": T0 + i, "event_id": f"e{i}",
            "payload": {"x": steady(i) if x is None else x}, **extra}


def count(r: redis.Redis, event_type: str) -> int:
    """n of the field's all-time baseline: how many events moved it."""
    baseline = baselines.load_baseline(r, TENANT, event_type)
    return baseline["x"].n if "x" in baseline else 0


def seed(alpha, event_type: str, n: int = 40) -> None:
    """n events of history (fewer than the 50 a model needs: none is trained)."""
    response = alpha.post(f"/v1/event-types/{event_type}/history", json={"events": [
        {"timestamp": T0 - 100_000 + i, "payload": {"x": steady(i)}} for i in range(n)]})
    assert response.status_code == 202, response.text
    assert wait_for(alpha, response.json()["status_url"])["status"] == "succeeded"


@pytest.fixture
def r(redis_server) -> redis.Redis:
    return redis_server.client()


def test_a_model_that_cannot_be_loaded_fails_nothing(alpha, r, event_type):
    """A corrupt model blob (v1) in Redis: single events and batch jobs are judged by the
    z-check alone by the real workers, each verdict noting why, and are merged once."""
    seed(alpha, event_type)
    model_blobs.save_model(r, TENANT, event_type, b"not a model file", {"features": ["x"]}, 0)
    single = [alpha.post("/v1/events/validate", json=event(event_type, i, x)).json()["job_id"]
              for i, x in ((1, 104.0), (2, 500.0))]
    batch = alpha.post("/v1/jobs", json={"events": [event(event_type, 3, 105.0),
                                                    event(event_type, 4, 900.0)]})
    jobs = [wait_for(alpha, f"/v1/jobs/{j}") for j in [*single, batch.json()["job_id"]]]
    assert [job["status"] for job in jobs] == ["succeeded"] * 3, [job["error"] for job in jobs]
    results = [result for job in jobs for result in job["results"]]
    assert [result["valid"] for result in results] == [True, False, True, False]
    assert [w["code"] for w in results[1]["warnings"]] == ["out_of_range"]
    for result in results:
        assert result["anomaly_score"] is None
        notes = [note for note in result["notes"] if note["code"] == "model_error"]
        assert len(notes) == 1, result["notes"]
        assert notes[0]["message"].startswith("the anomaly model v1 could not score this event: ")
        assert notes[0]["message"].endswith("; judged by the z-check alone")
    assert count(r, event_type) == 40 + 2  # the two valid events, once each


class ScoringFails:
    """A fitted model's face (threshold_, features_) whose scoring raises."""
    threshold_ = 0.5
    features_ = ["x"]

    def score(self, frame):
        raise RuntimeError("scoring exploded")

    explain = score


def test_a_model_whose_scoring_raises_fails_nothing(r, settings, event_type):
    history = {f"h{uuid.uuid4().hex}": [event(event_type, i) for i in range(40)]}
    validate.judge_jobs(r, settings, TENANT, history)
    model_blobs.save_model(r, TENANT, event_type, b"unused", {"features": ["x"]}, 0)
    _cache[(settings.redis_url, TENANT, event_type)] = (1, ScoringFails())
    try:
        job = uuid.uuid4().hex
        judged = validate.judge_jobs(r, settings, TENANT, {job: [
            event(event_type, 50, 104.0), event(event_type, 51, 500.0)]})
    finally:
        del _cache[(settings.redis_url, TENANT, event_type)]
    assert judged.failed == {}
    assert [result["valid"] for result in judged[job]] == [True, False]
    for result in judged[job]:
        assert result["anomaly_score"] is None
        assert {"code": "model_error", "message": "the anomaly model v1 could not score this "
                "event: RuntimeError: scoring exploded; judged by the z-check alone"} \
            in result["notes"]
    assert count(r, event_type) == 41


def test_in_a_micro_batch_a_type_that_cannot_be_judged_fails_only_its_jobs(alpha, r, settings,
                                                                           event_type):
    """One micro-batch (stored as the API does, then the real events worker woken once):
    type `good`'s jobs are judged and merged first, then type `bad` cannot be read. Only the
    `bad` jobs fail, having merged nothing; the `good` ones succeed, counted once."""
    good, bad = f"{event_type}-good", f"{event_type}-bad"
    events = [event(good, i) for i in range(5)] + [
        event(bad, 10), event(bad, 11, payload="not an object"), event(bad, 12)]
    job_ids = [jobs.create_inbox_job(r, settings, TENANT, e)[0] for e in events]
    inbox.join_ring(r, TENANT)  # as the API does after the first append
    create_celery(settings).send_task(inbox.WAKE_TASK)  # once all wait: one claim takes them
    answers = [wait_for(alpha, f"/v1/jobs/{j}") for j in job_ids]
    assert [job["status"] for job in answers] == ["succeeded"] * 5 + ["failed"] * 3, \
        [job["error"] for job in answers]
    assert [job["results"][0]["event_id"] for job in answers[:5]] == [f"e{i}" for i in range(5)]
    for job in answers[5:]:
        assert "results" not in job and job["summary"] is None
        assert job["error"].startswith("the job's events could not be judged (AttributeError: ")
        assert job["error"].endswith("); none of them was merged into the baselines: "
                                     "resend the whole job.")
    assert count(r, good) == 5
    assert baselines.load_baseline(r, TENANT, bad) == {}
    # The client resends the failed ones (fixed), and nothing is counted twice.
    resent = [alpha.post("/v1/events/validate", json=event(bad, i)).json()["job_id"]
              for i in (10, 11, 12)]
    assert [wait_for(alpha, f"/v1/jobs/{j}")["status"] for j in resent] == ["succeeded"] * 3
    assert count(r, bad) == 3 and count(r, good) == 5


def chunked_job(event_type: str, n: int, bad_at: int) -> list[dict]:
    """n events in time order, the one at ``bad_at`` stored unreadable."""
    return [event(event_type, i, **({"payload": "not an object"} if i == bad_at else {}))
            for i in range(n)]


def test_a_batch_job_failing_after_chunks_merged_reports_them(alpha, r, settings, event_type):
    """2,500 events judged by the real jobs worker in chunks of 1,000; the third chunk
    cannot be read. The job fails, reporting the 2,000 events it merged (counted once) and
    naming the 500 to resend."""
    events = chunked_job(event_type, 2500, bad_at=2100)
    job_id = jobs.create_job(r, settings, TENANT, kind="validate", events=events)
    create_celery(settings).send_task("vigil.validate_job", args=[TENANT, job_id])
    job = wait_for(alpha, f"/v1/jobs/{job_id}", timeout_s=90)
    assert job["status"] == "failed"
    assert job["error"].startswith("500 of 2500 events could not be judged (AttributeError: ")
    assert "the events at index 2000-2499 were not judged and did not move the baselines; " \
           "resend only those. `results` holds the verdicts of the 2000 events that were " \
           "judged and merged." in job["error"]
    assert [result["index"] for result in job["results"]] == list(range(2000))
    assert job["summary"]["events"] == 2000 and job["summary"]["valid"] == 2000
    assert count(r, event_type) == 2000
    assert baselines.history_count(r, TENANT, event_type) == 2000


def test_a_redelivered_failing_job_reuses_what_it_merged(monkeypatch, r, settings, event_type):
    """The same job judged again (a redelivery after its worker died): the chunks it merged
    are reported from their stored verdicts and not merged again; the rest fails again."""
    monkeypatch.setattr(validate, "CHUNK", 10)
    job = uuid.uuid4().hex
    events = chunked_job(event_type, 25, bad_at=21)
    first = validate.judge_jobs(r, settings, TENANT, {job: events})
    again = validate.judge_jobs(r, settings, TENANT, {job: events})
    assert first[job] == again[job]  # the same verdicts, processed_at included: reused
    assert [result["index"] for result in again[job]] == list(range(20))
    assert "the events at index 20-24 were not judged" in again.failed[job]
    assert count(r, event_type) == 20
