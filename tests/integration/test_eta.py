"""eta_s and Retry-After (tasks.eta) against a real Redis, real workers and real HTTP: present
with nothing measured, and, under a real backlog, within FACTOR of the time the job took."""

from __future__ import annotations

import time
from datetime import datetime

import numpy as np
from helpers import wait_for, wait_until

from core import keys
from tasks import create_celery, eta
from tasks.eta import EVENTS, FALLBACK_EVENTS_PER_S, JOBS, RETRY_AFTER_MAX_S
from tasks.store import jobs

# The estimate must land within this factor of the job's actual time, either way. Measured
# on this shared 2-core machine (2026-12-02): eta/actual 0.83 and 1.20 with this backlog, 1.16
# to 2.28 with 6 jobs measured instead of 10 (the workers' warm-up weighed more in the
# minute measured). 3 leaves room for a noisy neighbour and still tells an estimate from a
# constant (the Retry-After: 1 it replaced is off by five or more here).
FACTOR = 3.0
# The backlog: about 10-20 s of work for the jobs worker on this machine.
JOBS_AHEAD = 30
EVENTS_PER_JOB = 10_000
PROBE_EVENTS = 2000
# Jobs of the backlog finished before the probe is sent: the rate is measured on them.
MEASURED_JOBS = 10
T0 = 1_790_000_000


def events(event_type: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"event_type": event_type, "timestamp": T0 + i,
             "payload": {"amount": float(a), "items": float(b)}}
            for i, (a, b) in enumerate(zip(rng.normal(100, 10, n), rng.normal(5, 1, n)))]


def retry_after(response) -> int:
    value = int(response.headers["Retry-After"])  # an integer, or this raises
    assert 1 <= value <= RETRY_AFTER_MAX_S
    return value


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_the_rate_is_measured_over_the_time_the_lane_was_busy(redis_server):
    """tasks.eta's busy time, from buckets as workers write them: per second, the time since
    the lane's previous bucket, at most the judging time recorded in it."""
    r, now = redis_server.client(), 1_800_000_000.5
    r.delete(keys.judged(EVENTS), keys.judging_ms(EVENTS))
    buckets = {
        now - 70: (500, 1000),  # out of the window
        now - 50: (100, 30),    # the first in the window: its judging time, 0.03 s
        now - 20: (10, 5),      # after 30 s idle: 0.005 s, not 30 s
        now - 19: (1000, 1800),  # two processes judging side by side: 1 s, not 1.8
        now - 16: (900, 2500),  # a chunk that took 2.5 s, since the bucket 3 s before
    }
    for second, (n, ms) in buckets.items():
        r.hset(keys.judged(EVENTS), str(int(second)), n)
        r.hset(keys.judging_ms(EVENTS), str(int(second)), ms)
    r.rpush(keys.tenant_inbox("alpha"), "x", "y")
    try:
        found = eta.backlog(r, "alpha", "0" * 32, now=now)
    finally:
        r.delete(keys.judged(EVENTS), keys.judging_ms(EVENTS))
        r.lrem(keys.tenant_inbox("alpha"), 0, "x")
        r.lrem(keys.tenant_inbox("alpha"), 0, "y")
    assert found == eta.Backlog(EVENTS, ahead=2, judged=2010, busy_s=0.03 + 0.005 + 1 + 2.5)


def test_eta_is_present_with_no_throughput_measured(alpha, redis_server, event_type):
    r = redis_server.client()
    # No history: as on an idle system whose last judging is over a minute old.
    r.delete(keys.judged(JOBS), keys.judged(EVENTS))
    single = alpha.post("/v1/events/validate", json=events(event_type, 1, 1)[0])
    batch = alpha.post("/v1/jobs", json={"events": events(event_type, 600, 2)})
    for response in (single, batch):
        assert response.status_code == 202, response.text
        assert response.json()["eta_s"] > 0
        retry_after(response)
    # The fallback throughput: 600 events ahead at least (the batch's own).
    assert batch.json()["eta_s"] >= round(600 / FALLBACK_EVENTS_PER_S[JOBS], 1)
    for response in (single, batch):
        wait_for(alpha, response.json()["status_url"])
        finished = alpha.get(response.json()["status_url"])
        assert "eta_s" not in finished.json() and "Retry-After" not in finished.headers


def test_under_a_real_backlog_the_eta_lands_within_a_factor_of_the_actual_time(
        alpha, redis_server, settings, event_type):
    # A model first, so every job ahead is judged the same way (no training midway).
    history = [{"timestamp": e["timestamp"] - 400, "payload": e["payload"]}
               for e in events(event_type, 400, 3)]
    seeded = alpha.post(f"/v1/event-types/{event_type}/history", json={"events": history})
    assert wait_for(alpha, seeded.json()["status_url"])["status"] == "succeeded"

    # The backlog, stored and enqueued as the API does after parsing: through HTTP, parsing
    # a 10,000-event body takes the API longer than the workers take to judge it, on two
    # cores, and no backlog would form.
    r, celery = redis_server.client(), create_celery(settings)
    batch = events(event_type, EVENTS_PER_JOB, 10)

    def enqueue(count: int) -> list[str]:
        urls = []
        for _ in range(count):
            job_id = jobs.create_job(r, settings, "alpha", kind="validate", events=batch)
            celery.send_task("vigil.validate_job", args=["alpha", job_id])
            urls.append(f"/v1/jobs/{job_id}")
        return urls

    def finished(urls: list[str]) -> int:
        """How many succeeded: read from Redis, a few times a second, as HTTP polling many
        times a second would take CPU from the workers while their rate is measured."""
        time.sleep(0.25)
        return sum(jobs.get_job(r, "alpha", url.rpartition("/")[2])["status"] == "succeeded"
                   for url in urls)

    # Both worker processes load the type's model first: their first job is slower.
    warm = enqueue(2)
    assert wait_until(lambda: finished(warm) == 2, 60)
    ahead = enqueue(JOBS_AHEAD)
    # Throughput measured on this backlog: wait until the workers finished a part of it.
    assert wait_until(lambda: finished(ahead[:MEASURED_JOBS]) == MEASURED_JOBS, 120), \
        "the backlog did not drain"

    probe = alpha.post("/v1/jobs", json={"events": events(event_type, PROBE_EVENTS, 99)})
    assert probe.status_code == 202, probe.text
    eta_s = probe.json()["eta_s"]
    print("backlog at the probe:", eta.backlog(r, "alpha", probe.json()["job_id"]))
    retry_after(probe)
    polled = alpha.get(probe.json()["status_url"])
    assert polled.json()["status"] == "queued"
    assert polled.json()["eta_s"] > 0
    retry_after(polled)

    job = wait_for(alpha, probe.json()["status_url"], timeout_s=240)
    assert job["status"] == "succeeded", job
    actual_s = epoch(job["finished_at"]) - epoch(job["created_at"])
    print(f"ahead {len(ahead)} x {EVENTS_PER_JOB}: eta_s {eta_s}, actual {actual_s:.1f} s, "
          f"eta/actual {eta_s / actual_s:.2f}")
    assert actual_s / FACTOR <= eta_s <= actual_s * FACTOR, (eta_s, actual_s)
