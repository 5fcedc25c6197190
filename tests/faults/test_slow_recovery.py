"""How long recovery takes when nothing restarts a worker (about 35 s).

With the Redis transport an unacknowledged message comes back only at a restore sweep once it
is older than VIGIL_VISIBILITY_TIMEOUT. A worker sweeps when it (re)connects and then
periodically; kombu's defaults scan only every ~100 s (interval 10 s x throttle 10), whatever
the visibility timeout, so core/config.py sets the sweep to every min(10, timeout/2) s.
"""

from __future__ import annotations

import time

from fault_helpers import (
    BIG_JOB,
    VISIBILITY_TIMEOUT_S,
    FaultWorker,
    accepted,
    epoch,
    get_job,
    wait_until,
)

EVENTS = BIG_JOB
T0 = 1_790_000_000


def big_job(client, event_type: str) -> str:
    events = [{"event_type": event_type, "timestamp": T0 + i, "payload": {"x": 95 + (i % 101) / 10}}
              for i in range(EVENTS)]
    return accepted(client.post("/v1/jobs", json={"events": events}))


def finished_by(client, job_ids: list[str], deadline: float) -> list[dict]:
    while True:
        jobs = [get_job(client, job_id) for job_id in job_ids]
        if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs) \
                or time.monotonic() > deadline:
            return jobs
        time.sleep(0.2)


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def busy_worker(workers: list[FaultWorker]) -> FaultWorker:
    """The worker whose pool is using the CPU (the one running the job)."""
    children = {w.hostname: w.pool_children() for w in workers}
    before = {h: cpu_ticks(pids) for h, pids in children.items()}
    time.sleep(0.2)
    return max(workers, key=lambda w: cpu_ticks(children[w.hostname]) - before[w.hostname])


def test_dead_workers_job_is_taken_over_by_a_running_worker(fault_stack_factory):
    stack = fault_stack_factory()  # VIGIL_VISIBILITY_TIMEOUT=5
    workers = stack.start_workers("worker", "worker", concurrency=1)
    client = stack.client()
    job_id = big_job(client, "takeover")
    running = wait_until(lambda: (job := get_job(client, job_id))["status"] == "running" and job,
                         30, "the job running", 0.01)
    doomed = busy_worker(workers)
    (survivor,) = [w for w in workers if w is not doomed]
    doomed.kill()  # SIGKILL, main process and pool; the other worker is idle and keeps running
    at_kill = get_job(client, job_id)
    time.sleep(1.0)
    if get_job(client, job_id)["progress"] != at_kill["progress"] or at_kill["status"] != "running":
        raise RuntimeError("the job was not running on the worker that was killed")

    # Redelivery is due VIGIL_VISIBILITY_TIMEOUT after the delivery; allow a sweep interval more.
    due = epoch(running["started_at"]) + VISIBILITY_TIMEOUT_S
    (job,) = finished_by(client, [job_id], time.monotonic() + (due - time.time()) + 15)
    assert survivor.alive
    assert job["status"] == "succeeded", (
        f"{VISIBILITY_TIMEOUT_S + 15} s after its worker died the job is still {job['status']}, "
        "with another worker idle")
