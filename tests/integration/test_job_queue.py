"""The fair job queues in Redis (tasks.job_queue): which job is handed out next, weights,
redelivered messages, lapsed claims, and no tenant stranded outside the ring."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import uuid

import pytest
import redis
from helpers import EVENT

from core import keys
from tasks import job_queue
from tasks.store import jobs


@pytest.fixture
def r(redis_server, private_cluster) -> redis.Redis:
    """A database no worker of this session reads (they take jobs from database 0's queues)."""
    client = (private_cluster.client() if private_cluster else
              redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/10"))
    client.flushdb()
    return client


def queue_job(r: redis.Redis, settings, tenant: str, events: int) -> str:
    """Store and queue a job as the API does (without sending its message)."""
    job_id, first = jobs.create_queued_job(r, settings, tenant, kind="validate",
                                            events=[EVENT] * events)
    if first:
        job_queue.join(r, tenant)
    return job_id


def take(r: redis.Redis, settings, n: int) -> list[tuple[str, str]]:
    """n jobs handed out one after the other, each by a task of its own, and run at once."""
    taken = []
    for _ in range(n):
        task_id = uuid.uuid4().hex
        found = job_queue.next_job(r, settings, task_id, time.time() + 60)
        if found is None:
            break
        taken.append(found)
        job_queue.done(r, *found, task_id)
    return taken


def ring(r: redis.Redis) -> set[str]:
    return {t.decode() for t in r.zrange(keys.jobs_ring(), 0, -1)}


def test_a_small_job_is_handed_out_before_a_backlog_of_another_tenant(r, settings):
    backlog = [queue_job(r, settings, "alpha", 1000) for _ in range(20)]
    assert take(r, settings, 1) == [("alpha", backlog[0])]
    small = queue_job(r, settings, "beta", 10)
    assert take(r, settings, 2) == [("beta", small), ("alpha", backlog[1])]
    # Alpha alone again: the rest in order, then nothing; alpha left the ring.
    assert take(r, settings, 30) == [("alpha", j) for j in backlog[2:]]
    assert ring(r) == set()


def test_weights_are_honoured_in_the_order_jobs_are_handed_out(r, settings):
    weighted = dataclasses.replace(settings, tenant_weights={"alpha": 3})
    alpha = [queue_job(r, weighted, "alpha", 1000) for _ in range(12)]
    beta = [queue_job(r, weighted, "beta", 1000) for _ in range(12)]
    order = [tenant for tenant, _ in take(r, weighted, 16)]
    assert order.count("alpha") == 12 and order.count("beta") == 4
    for k in range(4, 17, 4):  # 3:1 in every stretch, not only in the end
        assert order[:k].count("alpha") == 3 * k // 4
    assert [j for t, j in take(r, weighted, 16)] == beta[4:]
    assert len(alpha) == 12


def test_a_tenant_idle_for_a_while_gets_no_credit_for_it(r, settings):
    """Beta joins at the current virtual time: it then alternates with alpha instead of
    taking as many jobs in a row as alpha had taken before it came."""
    alpha = [queue_job(r, settings, "alpha", 100) for _ in range(30)]
    take(r, settings, 10)
    beta = [queue_job(r, settings, "beta", 100) for _ in range(10)]
    order = [tenant for tenant, _ in take(r, settings, 10)]
    assert order.count("beta") == 5 and len(alpha) == 30 and len(beta) == 10


def test_a_redelivered_message_runs_the_job_its_first_delivery_claimed(r, settings):
    first, second = queue_job(r, settings, "alpha", 10), queue_job(r, settings, "alpha", 10)
    assert job_queue.next_job(r, settings, "task-1", time.time() + 60) == ("alpha", first)
    # Its worker died: Celery delivers the message again, same task id.
    assert job_queue.next_job(r, settings, "task-1", time.time() + 60) == ("alpha", first)
    job_queue.done(r, "alpha", first, "task-1")
    assert job_queue.next_job(r, settings, "task-2", time.time() + 60) == ("alpha", second)


def test_a_lapsed_claim_goes_back_first_in_line_with_its_link_dropped(r, settings):
    first, second = queue_job(r, settings, "alpha", 10), queue_job(r, settings, "alpha", 10)
    assert job_queue.next_job(r, settings, "lost", time.time() - 1) == ("alpha", first)
    assert take(r, settings, 1) == [("alpha", second)]
    assert take(r, settings, 1) == [] and ring(r) == set()
    assert job_queue.reclaim_lapsed(r, {"alpha"}, time.time()) == [("alpha", first)]
    assert ring(r) == {"alpha"} and r.hlen(keys.job_claims()) == 0
    # The lost message, delivered at last, finds its claim gone: it takes the next job.
    assert job_queue.next_job(r, settings, "lost", time.time() + 60) == ("alpha", first)
    assert job_queue.reclaim_lapsed(r, {"alpha"}, time.time()) == []  # live claims stay


def test_an_append_racing_a_worker_that_takes_the_last_job_is_not_stranded(r, settings):
    # The worker took alpha's last job; the API appends and sees alpha still in the ring (its
    # join does nothing); the worker takes alpha out and looks again: alpha joins again.
    job_queue.join(r, "alpha")
    job_id = queue_job(r, settings, "alpha", 10)
    job_queue.leave(r, "alpha")
    assert ring(r) == {"alpha"}
    assert take(r, settings, 1) == [("alpha", job_id)]
    # An API that stored and queued but died before joining: the sweep joins for it.
    job_id, _ = jobs.create_queued_job(r, settings, "beta", kind="validate", events=[EVENT])
    assert ring(r) == set()
    job_queue.reclaim_lapsed(r, {"alpha", "beta"}, time.time())
    assert ring(r) == {"beta"}


def test_concurrent_submits_and_workers_hand_out_every_job_once(r, settings):
    """Three API threads queue jobs for three tenants, each sending a message per job; two
    worker threads take a message each time and the next job. Every job is handed out once."""
    messages: queue.Queue = queue.Queue()
    queued: list[tuple[str, str]] = []
    taken: list[tuple[str, str]] = []

    def api(n: int) -> None:
        for k in range(100):
            tenant = ("alpha", "beta", "gamma")[(n + k) % 3]
            queued.append((tenant, queue_job(r, settings, tenant, 1 + k % 7)))
            messages.put(uuid.uuid4().hex)

    def worker() -> None:
        while (task_id := messages.get()) != "stop":
            found = job_queue.next_job(r, settings, task_id, time.time() + 60)
            if found:
                taken.append(found)
                job_queue.done(r, *found, task_id)

    workers = [threading.Thread(target=worker) for _ in range(2)]
    apis = [threading.Thread(target=api, args=(n,)) for n in range(3)]
    for thread in workers + apis:
        thread.start()
    for thread in apis:
        thread.join()
    for _ in workers:
        messages.put("stop")
    for thread in workers:
        thread.join()
    assert len(taken) == len(set(taken)) == 300
    assert set(taken) == set(queued)
    assert ring(r) == set() or all(job_queue.waiting(r, t) == 0 for t in ring(r))


def test_jobs_waiting_with_none_handed_out_get_their_messages_sent_again(r, settings):
    waiting = [queue_job(r, settings, "alpha", 10) for _ in range(3)]
    now = time.time()
    assert job_queue.stalled(r, now) == 0  # no hand-out on record: the watch starts
    assert job_queue.stalled(r, now + job_queue.STALL_S / 2) == 0
    assert job_queue.stalled(r, now + job_queue.STALL_S + 1) == len(waiting)
    # Sending counts as a hand-out: no second resend within STALL_S.
    assert job_queue.stalled(r, now + job_queue.STALL_S + 2) == 0
    assert take(r, settings, 1) == [("alpha", waiting[0])]  # a hand-out resets the watch
    assert job_queue.stalled(r, time.time() + job_queue.STALL_S / 2) == 0
    assert job_queue.stalled(r, time.time() + job_queue.STALL_S + 1) == len(waiting) - 1


def test_nothing_is_sent_again_while_no_job_waits(r, settings):
    r.set(keys.jobs_handed_at(), repr(time.time() - 10 * job_queue.STALL_S))
    assert job_queue.stalled(r, time.time()) == 0
