"""A large job's life as a client sees it: its events deflated while it waits; progress while
it runs; once finished, nothing in Redis that outlives VIGIL_JOB_TTL, its verdicts deflated,
and not its events (nothing reads them once the job has finished)."""

from __future__ import annotations

import json
import time

from helpers import wait_for

from core import keys
from tasks.store import job_data, jobs
from tasks.validate import CHUNK

T0 = 1_790_000_000


def test_progress_is_visible_while_a_large_job_runs(alpha, event_type):
    n = 10 * CHUNK  # ten chunks, progress written after each
    events = [{"event_type": event_type, "timestamp": T0 + i,
               "payload": {"amount": 100.0 + i % 7}} for i in range(n)]
    response = alpha.post("/v1/jobs", json={"events": events})
    assert response.status_code == 202, response.text
    status_url = response.json()["status_url"]
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = alpha.get(status_url).json()
        seen.append((job["status"], job["progress"]["done"]))
        assert job["progress"]["total"] == n
        if job["status"] in ("succeeded", "failed"):
            break
    assert seen[-1] == ("succeeded", n), seen[-5:]
    done = [d for _, d in seen]
    assert done == sorted(done), "progress went backwards"
    # Polled back to back, a job of ten chunks is caught between its first and last one.
    assert any(status == "running" and 0 < d < n for status, d in seen), sorted(set(seen))


def test_a_finished_job_expires_whole_and_keeps_its_verdicts_compact(alpha, event_type,
                                                                     redis_server, settings):
    # VIGIL_JOB_TTL is set for the test session (conftest), so a TTL at the 24 h default
    # would fail the bound below: the setting is what is used.
    assert settings.job_ttl_s == 7200
    n = CHUNK + CHUNK // 2  # two chunks: two merged batches and partial results on the way
    events = [{"event_type": event_type, "timestamp": T0 + i, "event_id": f"e{i}",
               "payload": {"amount": 100.0 + i % 7, "cart": {"items": 5.0}}} for i in range(n)]
    response = alpha.post("/v1/jobs", json={"events": events})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    job = wait_for(alpha, response.json()["status_url"])
    assert job["status"] == "succeeded" and len(job["results"]) == n

    r = redis_server.client()
    left = {key.decode(): r.ttl(key) for key in r.scan_iter(match=f"*{job_id}*", count=1000)}
    assert keys.job("alpha", job_id) in left and keys.job_results("alpha", job_id) in left
    assert keys.job_events("alpha", job_id) not in left
    assert keys.job_partial("alpha", job_id) not in left
    # Every key of the job expires (-1 would be never), within the configured TTL.
    assert all(settings.job_ttl_s - 120 < ttl <= settings.job_ttl_s for ttl in left.values()), left

    stored = r.get(keys.job_results("alpha", job_id))
    as_json = json.dumps(job["results"], separators=(",", ":")).encode()
    assert len(stored) < len(as_json) / 4, (len(stored), len(as_json))


def test_a_queued_jobs_events_wait_compact_and_come_back_whole(redis_server, settings,
                                                               event_type):
    r = redis_server.client()
    events = [{"event_type": event_type, "timestamp": T0 + i, "event_id": f"e-{i}",
               "payload": {"amount": 100.0 + i % 7, "cart": {"items": i % 5}}}
              for i in range(CHUNK)]
    job_id = jobs.create_job(r, settings, "alpha", kind="validate", events=events)
    stored = r.get(keys.job_events("alpha", job_id))
    assert len(stored) < len(json.dumps(events)) / 4, "a large job's events are not deflated"
    assert job_data.get_events(r, "alpha", job_id) == events
    assert job_data.get_many_events(r, "alpha", [job_id]) == [events]
    # A single event stays plain JSON: deflating it would cost the submit path more than it saves.
    one = jobs.create_job(r, settings, "alpha", kind="validate", events=events[:1])
    assert r.get(keys.job_events("alpha", one)).startswith(b"[")
    assert job_data.get_events(r, "alpha", one) == events[:1]
    r.delete(keys.job("alpha", job_id), keys.job("alpha", one), keys.job_events("alpha", job_id),
             keys.job_events("alpha", one))
