"""One tenant's backlog does not hold up another's work (tasks.inbox, tasks.job_queue).

A private stack (this directory's harness: the test decides when workers start), tenants alpha
(weight 3, VIGIL_TENANT_WEIGHTS) and beta (weight 1). Each test queues its work while no worker
runs, then starts one, so the order the work is taken in is the scheduler's alone.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fault_helpers import FaultStack, accepted, wait_until

from core import keys
from tasks import create_celery, job_queue
from tasks.store import jobs as job_store

T0 = 1_790_000_000


@pytest.fixture(scope="module")
def stack(fault_stack_factory) -> FaultStack:
    return fault_stack_factory(VIGIL_TENANT_WEIGHTS="alpha:3")


def events(event_type: str, n: int, first: int = 0) -> list[dict]:
    return [{"event_type": event_type, "timestamp": T0 + first + i, "event_id": f"e-{first + i}",
             "payload": {"x": 100.0 + i % 7}} for i in range(n)]


def submit_jobs(stack: FaultStack, tenant: str, jobs: int, per_job: int) -> list[str]:
    client = stack.client(tenant)
    return [accepted(client.post("/v1/jobs", json={"events": events("fair", per_job, k * per_job)}))
            for k in range(jobs)]


def finished(stack: FaultStack, tenant: str, job_ids: list[str]) -> list[dict]:
    """The jobs from the store (server-side times as epoch seconds), once all finished."""
    r = stack.redis.client()

    def done() -> list[dict] | None:
        found = job_store.get_jobs(r, tenant, job_ids)
        return found if all(j["status"] in job_store.FINISHED for j in found) else None
    return wait_until(done, 120, f"{tenant}'s jobs finished", 0.2)


def test_a_small_job_is_run_before_another_tenants_backlog_of_jobs(stack):
    stack.stop_workers()
    backlog = submit_jobs(stack, "alpha", 10, 500)
    [small] = submit_jobs(stack, "beta", 1, 5)  # queued last: first in, first out, it would run last
    stack.start_worker("worker", concurrency=1)  # one at a time: started in the order taken
    alpha = finished(stack, "alpha", backlog)
    [beta] = finished(stack, "beta", [small])
    assert all(j["status"] == "succeeded" for j in [*alpha, beta])
    after = [j for j in alpha if j["started_at"] > beta["started_at"]]
    # The scheduler's order: alpha's first job (tenants tie; alpha sorts first), then beta's.
    assert len(after) == 9


def test_weights_are_honoured_in_the_order_jobs_are_run(stack):
    stack.stop_workers()
    alpha_ids = submit_jobs(stack, "alpha", 8, 300)
    beta_ids = submit_jobs(stack, "beta", 8, 300)
    stack.start_worker("worker", concurrency=1)
    jobs = [(j["started_at"], tenant) for tenant, ids in (("alpha", alpha_ids), ("beta", beta_ids))
            for j in finished(stack, tenant, ids)]
    order = [tenant for _, tenant in sorted(jobs)]
    # alpha weighs 3, beta 1: three of alpha's for each of beta's while both have jobs waiting.
    assert order[:8].count("alpha") == 6 and order[:4].count("alpha") == 3
    assert order[-4:] == ["beta"] * 4  # alpha's ran out: beta alone


def test_single_events_of_a_tenant_are_judged_before_another_tenants_backlog(stack):
    stack.stop_workers()
    local = threading.local()

    def one(tenant: str, i: int) -> str:
        if not hasattr(local, tenant):
            setattr(local, tenant, stack.client(tenant))
        return accepted(getattr(local, tenant).post("/v1/events/validate",
                                                    json=events("single", 1, i)[0]))

    with ThreadPoolExecutor(8) as pool:
        backlog = list(pool.map(lambda i: one("alpha", i), range(600)))
    few = [one("beta", i) for i in range(5)]
    stack.start_worker("events")
    alpha = finished(stack, "alpha", backlog)
    beta = finished(stack, "beta", few)
    assert all(j["status"] == "succeeded" for j in [*alpha, *beta])
    # The first round takes beta's 5 and 495 of alpha's 600 (a batch is 500): alpha's other
    # 105, queued before beta's, are judged after them.
    last_of_beta = max(j["finished_at"] for j in beta)
    assert sum(j["finished_at"] > last_of_beta for j in alpha) >= 105


def test_a_job_whose_message_was_lost_is_run_after_the_sweep_finds_the_queue_stalled(stack):
    """A Redis broker that fails over may lose a message it had taken: the job is stored and
    queued with no message to run it. Beat's sweep sends one again once jobs wait and none
    was handed out for STALL_S (here: that time is set as past)."""
    stack.stop_workers()
    [job_id] = submit_jobs(stack, "beta", 1, 5)
    r = stack.redis.client()
    assert r.delete("celery") == 1  # the default queue's messages in the broker: lost
    stack.start_workers("worker", "events")
    stale = time.time() - 2 * job_queue.STALL_S
    r.set(keys.jobs_handed_at(), repr(stale))
    create_celery(stack.settings).send_task("vigil.sweep_jobs")
    [job] = finished(stack, "beta", [job_id])
    assert job["status"] == "succeeded"
