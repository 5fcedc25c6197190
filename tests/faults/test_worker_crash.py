"""Workers die mid-job (SIGKILL, as the OOM killer or a lost node does).

What a user relies on: an accepted job still finishes (at-least-once delivery: late acks,
redelivery of unacknowledged messages), its events move the baselines exactly once (per-batch
markers), the verdicts it reports are the ones it merged, and a job that kills its worker every
time ends `failed` with a reason instead of being redelivered forever.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fault_helpers import (
    BIG_JOB,
    VISIBILITY_TIMEOUT_S,
    FaultStack,
    FaultWorker,
    Timeout,
    accepted,
    epoch,
    get_job,
    wait_finished,
    wait_until,
)

EVENTS = BIG_JOB
T0 = 1_790_000_000


def import_history(client, event_type: str, values: list[float]) -> str:
    rows = [{"timestamp": T0 + 60 * i, "payload": {"x": x}} for i, x in enumerate(values)]
    return accepted(client.post(f"/v1/event-types/{event_type}/history", json={"events": rows}))


def baseline_count(client, event_type: str, field: str = "x") -> int:
    response = client.get(f"/v1/event-types/{event_type}/baseline")
    assert response.status_code == 200, response.text
    return next(f["count"] for f in response.json()["fields"] if f["field"] == field)


def submit(client, event_type: str, values: list[float]) -> str:
    # Spread over the ~10,000 s of the day the history covers, so the model's time-of-day
    # feature sees nothing new.
    events = [{"event_type": event_type, "timestamp": T0 + 86_400 + i * 10_000 / len(values),
               "event_id": f"e-{i}", "payload": {"x": x}} for i, x in enumerate(values)]
    return accepted(client.post("/v1/jobs", json={"events": events}))


def mid_run(job: dict, min_done: int) -> bool:
    """Running, and at least ``min_done`` events judged and merged, but not all of them."""
    if job["status"] in ("succeeded", "failed", "cancelled"):
        raise RuntimeError(f"job {job['job_id']} finished before the fault was injected; "
                           "make it bigger")
    done, total = job["progress"]["done"], job["progress"]["total"]
    return job["status"] == "running" and min_done <= done < total


def visible_at(job: dict) -> float:
    """When the Redis transport treats the job's unacknowledged message as abandoned (older
    than the visibility timeout): a worker's restore sweep after that puts it back."""
    return epoch(job["started_at"]) + VISIBILITY_TIMEOUT_S + 1.0


# History of x evenly spread over [90, 110]: mean 100, std 5.8.
def spread(n: int) -> list[float]:
    return [90 + 20 * i / (n - 1) for i in range(n)]


# "checkout": 200 rows of history (so it has an anomaly model), then events that sit well
# inside the history, whose verdicts do not depend on when in the job they are judged.
STEADY = [95 + (i % 101) / 10 for i in range(EVENTS)]
# "pay": 40 rows of history (no model under VIGIL_MODEL_MIN_ROWS=50: only the z-check, with
# the Gaussian threshold of the alert budget, 3.62: verdicts this test can predict). Its first
# batch (CHUNK = 1000 events in time order) holds 980 values over [100, 116] (valid against the
# history) and, at the odd positions from 961 on, 20 at 125: z = 4.3, invalid (each between
# ordinary values: 5 in a row would be a level shift). Once the 980 are merged the baseline is
# about 107.7 +- 5.2, where 125 is z = 3.3: judged again, those 20 would be valid. The rest of
# the job is like the 980 and valid either way.
WILD = [f"e-{i}" for i in range(961, 1000, 2)]
SHIFTED = [100 + 16 * (i % 49) / 48 for i in range(960)] \
    + [x for i in range(20) for x in (100 + 16 * (i % 49) / 48, 125.0)] \
    + [100 + 16 * (i % 49) / 48 for i in range(EVENTS - 1000)]


@pytest.fixture(scope="module")
def sigkilled(fault_stack: FaultStack) -> dict:
    """Two large jobs running side by side; their worker is SIGKILLed as a whole (main process
    and pool) once each has merged a batch or more; a new worker starts; both finish."""
    stack = fault_stack
    (worker,) = stack.ensure_workers("worker")
    client = stack.client()
    for job_id in [import_history(client, "checkout", spread(200)),
                   import_history(client, "pay", spread(40))]:
        assert wait_finished(client, job_id, 30, stack)["status"] == "succeeded"
    counts_before = {t: baseline_count(client, t) for t in ("checkout", "pay")}

    # Submitted side by side: one after the other, the first could finish while the second
    # (100,000 events) is still being uploaded.
    with ThreadPoolExecutor(2) as pool:
        submitted = {t: pool.submit(submit, stack.client(), t, values)
                     for t, values in (("checkout", STEADY), ("pay", SHIFTED))}
        jobs = {t: future.result() for t, future in submitted.items()}
    running = wait_until(
        lambda: (docs := {t: get_job(client, j) for t, j in jobs.items()})
        and all(mid_run(doc, 1000) for doc in docs.values()) and docs,
        30, "both jobs running with at least one batch merged", interval_s=0.01)
    worker.kill()
    at_kill = {t: get_job(client, j) for t, j in jobs.items()}
    for doc in at_kill.values():
        if doc["status"] != "running":
            raise RuntimeError(f"job finished before its worker was killed: {doc}")

    # With the Redis transport the unacknowledged messages come back once older than the
    # visibility timeout, at a worker's restore sweep: one runs as a worker starts. (Kombu
    # sweeps again only every unacked_restore_interval * unacked_restore_throttle = 100 s.)
    time.sleep(max(0.0, max(visible_at(doc) for doc in running.values()) - time.time()))
    stack.start_worker("worker")
    finished = {t: wait_finished(client, j, 40, stack) for t, j in jobs.items()}
    return {"client": client, "running": running, "at_kill": at_kill, "finished": finished,
            "counts_before": counts_before,
            "counts_after": {t: baseline_count(client, t) for t in jobs}}


def test_job_survives_sigkill_of_its_worker_and_counts_events_once(sigkilled):
    running, job = sigkilled["running"]["checkout"], sigkilled["finished"]["checkout"]
    assert sigkilled["at_kill"]["checkout"]["progress"]["done"] < EVENTS

    assert job["status"] == "succeeded", job
    assert job["started_at"] != running["started_at"], "the job was not run again"
    assert job["summary"]["events"] == EVENTS
    assert [r["event_id"] for r in job["results"]] == [f"e-{i}" for i in range(EVENTS)]
    assert job["summary"]["valid"] > 0.9 * EVENTS
    # Exactly once: the history plus the accepted events of this job, none of them twice.
    assert sigkilled["counts_before"]["checkout"] == 200
    assert sigkilled["counts_after"]["checkout"] == 200 + job["summary"]["valid"]


def test_redelivered_job_reports_the_verdicts_it_merged(sigkilled):
    """A redelivery must not judge again the batches merged before the crash: against
    baselines that now include them, their verdicts would differ from what was merged."""
    job = sigkilled["finished"]["pay"]
    assert job["status"] == "succeeded", job
    assert job["started_at"] != sigkilled["running"]["pay"]["started_at"], "not redelivered"
    merged = sigkilled["counts_after"]["pay"] - sigkilled["counts_before"]["pay"]
    wild = [r for r in job["results"] if r["event_id"] in WILD]
    # Before the crash the first batch was judged against the history alone: the 20 events at
    # 125 were invalid and stayed out of the baseline. The job must say so...
    assert [r["valid"] for r in wild] == [False] * 20, \
        "events kept out of the baseline are reported valid"
    # ...and what it reports as accepted is what moved the baseline.
    assert merged == job["summary"]["valid"], (
        f"the baseline grew by {merged} but the job reports {job['summary']['valid']} valid events")


def test_job_that_kills_its_worker_every_time_fails_with_a_reason(fault_stack: FaultStack):
    stack = fault_stack
    # SIGKILL of the pool process running the job, as the OOM killer does to a job that needs
    # too much memory: the worker's main process lives on and, with
    # task_reject_on_worker_lost, puts the message back at once.
    (worker,) = stack.ensure_workers("worker")
    client = stack.client()
    events = [{"event_type": "poison", "timestamp": T0 + i, "payload": {"x": float(i % 50)}}
              for i in range(EVENTS)]
    job_id = accepted(client.post("/v1/jobs", json={"events": events}))

    started_at = None
    for kill in range(3):
        def redelivered(previous=started_at):
            doc = get_job(client, job_id)
            return doc["started_at"] != previous and mid_run(doc, 0) and doc

        job = wait_until(redelivered, 30, f"delivery {kill + 1} of the job", 0.01)
        started_at = job["started_at"]
        assert worker.kill_pool_children(), "the worker had no pool process to kill"

    try:
        job = wait_finished(client, job_id, 30, stack)
    except Timeout:
        pytest.fail(f"the poison job never finished:\n{stack.logs()}")
    assert job["status"] == "failed", job
    assert "died" in job["error"] and "3 times" in job["error"], job["error"]
    assert not job.get("results")
    # Giving up is final, and the worker that survived it takes other work.
    assert worker.alive and worker.answers(timeout_s=2)
    ok = accepted(client.post("/v1/jobs", json={"events": [
        {"event_type": "poison", "timestamp": T0, "payload": {"x": 1.0}}]}))
    assert wait_finished(client, ok, 20, stack)["status"] == "succeeded"
    assert get_job(client, job_id)["status"] == "failed"


def test_single_events_survive_sigkill_of_the_events_worker_and_count_once(
        fault_stack: FaultStack):
    """The events worker is SIGKILLed (main process and pool) while it holds a claimed
    micro-batch: once the claim lapses, the sweep returns those jobs to the inbox and a new
    worker judges them; every event is judged and counted exactly once."""
    import redis

    from core import keys

    TENANT = "alpha"  # noqa: N806 - the stack's client's tenant
    claims = keys.tenant_inbox_claimed(TENANT)
    from tasks import create_celery

    stack = fault_stack
    stack.ensure_workers("worker")  # for the history import
    client = stack.client()
    assert wait_finished(client, import_history(client, "single", spread(40)), 30,
                         stack)["status"] == "succeeded"
    before = baseline_count(client, "single")
    r = redis.Redis.from_url(stack.settings.redis_url)
    for worker in [w for w in stack.workers if w.role == "events" and w.alive]:
        worker.stop()  # the inbox fills first, so the first claim is a full batch

    def one(i: int) -> str:
        return accepted(client.post("/v1/events/validate", json={
            "event_type": "single", "timestamp": T0 + 86_400 + i, "event_id": f"s-{i}",
            "payload": {"x": 100.0 + (i % 21) / 2 if i % 50 else 160.0}}))

    with ThreadPoolExecutor(8) as pool:
        job_ids = list(pool.map(one, range(2000)))
    # Killed as soon as it holds a claim. Should the kill land between two batches (no claim
    # at that instant; the inbox still holds the rest), the next worker is killed the same way.
    lost = 0
    for attempt in range(3):
        worker = FaultWorker(stack.env, stack.settings, stack.tmp / f"events-killed-{attempt}.log",
                             "events")
        stack.workers.append(worker)
        worker.spawn()  # not waiting until it answers: it drains the inbox as soon as it starts
        wait_until(lambda: r.zcard(claims) > 0, 60, "a claimed micro-batch", 0.001)
        worker.kill()
        lost = r.zcard(claims)
        if lost or not r.llen(keys.tenant_inbox(TENANT)):
            break
    assert lost > 0, "every kill landed between two batches; nothing was left to reclaim"

    stack.start_worker("events")
    celery = create_celery(stack.settings)

    def all_finished() -> list[dict] | None:
        celery.send_task("vigil.sweep_events")  # what beat sends every 5 s
        jobs = [job for k in range(0, len(job_ids), 100) for job in client.get(
            "/v1/jobs", params={"ids": ",".join(job_ids[k:k + 100])}).json()["jobs"]]
        return jobs if all(j["status"] in ("succeeded", "failed") for j in jobs) else None

    jobs = wait_until(all_finished, VISIBILITY_TIMEOUT_S + 60, "every single event judged", 1.0)
    assert [j["status"] for j in jobs] == ["succeeded"] * len(job_ids)
    valid = sum(j["results"][0]["valid"] for j in jobs)
    assert valid == len(job_ids) - len(job_ids) // 50  # the 160s are out of range
    assert baseline_count(client, "single") == before + valid  # each counted once
    assert r.zcard(claims) == 0 and r.llen(keys.tenant_inbox(TENANT)) == 0
