"""The single-event inboxes in Redis, one per tenant: when to join the ring and wake the events
worker, how a round shares a batch among tenants, lapsed claims, and no entry ever stranded."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import redis
from helpers import EVENT

from core import keys
from tasks import inbox
from tasks.store import jobs


@pytest.fixture
def r(redis_server) -> redis.Redis:
    """A database no worker of this session reads (they drain database 0's inboxes)."""
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/9")
    client.flushdb()
    return client


def submit(r: redis.Redis, settings, tenant: str = "alpha") -> tuple[str, bool]:
    """Store a single event as the API does: its job id, and whether to wake the worker
    (the append made the inbox non-empty, and joining the ring made the ring non-empty)."""
    job_id, first = jobs.create_inbox_job(r, settings, tenant, EVENT)
    return job_id, first and inbox.join_ring(r, tenant)


def ring(r: redis.Redis) -> set[str]:
    return {t.decode() for t in r.smembers(keys.events_ring())}


def test_only_the_first_of_a_burst_wakes_the_worker_and_claims_take_the_oldest(r, settings):
    (a, wake_a), (b, wake_b), (c, wake_c) = (submit(r, settings) for _ in range(3))
    assert [wake_a, wake_b, wake_c] == [True, False, False]
    _, wake_beta = submit(r, settings, "beta")  # another tenant, the ring not empty: no wake
    assert wake_beta is False and ring(r) == {"alpha", "beta"}
    assert inbox.waiting(r, "alpha") == 3
    claimed = inbox.claim(r, 3, time.time() + 60, {})
    assert [j for t, j in claimed if t == "alpha"] == [a, b]  # oldest first, one share each
    assert inbox.waiting(r, "alpha") == 1


def test_a_round_shares_the_batch_by_weight_and_leaves_unused_shares_to_others(r, settings):
    alpha = [submit(r, settings, "alpha")[0] for _ in range(40)]
    beta = [submit(r, settings, "beta")[0] for _ in range(40)]
    gamma = [submit(r, settings, "gamma")[0] for _ in range(2)]
    claimed = inbox.claim(r, 18, time.time() + 60, {"alpha": 3})
    by_tenant = {t: [j for u, j in claimed if u == t] for t in ("alpha", "beta", "gamma")}
    # gamma has 2 (less than its share): the other 16 go 3:1 to alpha and beta.
    assert by_tenant == {"alpha": alpha[:12], "beta": beta[:4], "gamma": gamma}
    claimed = inbox.claim(r, 100, time.time() + 60, {"alpha": 3})
    assert sorted(j for t, j in claimed if t == "alpha") == sorted(alpha[12:12 + 28])
    # The round found gamma's inbox empty: gamma left the ring.
    assert ring(r) == {"alpha", "beta"}


def test_a_lapsed_claim_goes_back_first_in_line_and_its_tenant_back_in_the_ring(r, settings):
    (a, _), (b, _) = submit(r, settings), submit(r, settings)
    assert inbox.claim(r, 1, time.time() - 1, {}) == [("alpha", a)]  # its worker died
    assert inbox.claim(r, 1, time.time() + 60, {}) == [("alpha", b)]
    inbox.release(r, [("alpha", b)])
    assert inbox.claim(r, 10, time.time() + 60, {}) == []  # found empty: left the ring
    assert ring(r) == set()
    assert inbox.reclaim_lapsed(r, {"alpha"}, time.time()) == 1
    assert ring(r) == {"alpha"}
    b = submit(r, settings)[0]
    assert inbox.claim(r, 500, time.time() + 60, {}) == [("alpha", a), ("alpha", b)]
    assert inbox.reclaim_lapsed(r, {"alpha"}, time.time()) == 0  # live claims stay claimed


def test_an_append_racing_a_worker_that_leaves_the_ring_is_not_stranded(r, settings):
    """The two orders of "the worker found alpha's inbox empty" and "the API appends":"""
    # 1. The worker saw it empty; the API appends, sees alpha still in the ring (no wake);
    # the worker leaves the ring and looks again: it finds the entry and joins again.
    inbox.join_ring(r, "alpha")
    job_id, wake = submit(r, settings)
    assert wake is False
    inbox.leave_ring(r, "alpha")
    assert ring(r) == {"alpha"}
    assert inbox.claim(r, 10, time.time() + 60, {}) == [("alpha", job_id)]
    # 2. The worker leaves first (the ring is empty now); the API's append joins it and wakes.
    assert inbox.claim(r, 10, time.time() + 60, {}) == [] and ring(r) == set()
    job_id, wake = submit(r, settings)
    assert wake is True and inbox.claim(r, 10, time.time() + 60, {}) == [("alpha", job_id)]
    # 3. An API that stored and appended but died before joining: the sweep joins for it.
    assert inbox.claim(r, 10, time.time() + 60, {}) == []
    job_id, _ = jobs.create_inbox_job(r, settings, "beta", EVENT)
    assert ring(r) == set()
    inbox.reclaim_lapsed(r, {"alpha", "beta"}, time.time())
    assert ring(r) == {"beta"}


def test_concurrent_appends_and_a_draining_worker_leave_no_entry_behind(r, settings):
    """Four API threads append for three tenants while a worker thread drains as the events
    worker does (a wake per message; claims until it finds the ring empty, then lingers a few
    looks, saying so, before it stops). Once every append is done and every wake handled,
    every entry was claimed exactly once."""
    wakes: queue.Queue = queue.Queue()
    appended: list[tuple[str, str]] = []
    claimed: list[tuple[str, str]] = []

    def api(n: int) -> None:
        worker_r = redis.Redis(connection_pool=r.connection_pool)
        for k in range(300):
            tenant = ("alpha", "beta", "gamma")[(n + k) % 3]
            job_id, wake = submit(worker_r, settings, tenant)
            appended.append((tenant, job_id))
            if wake:
                wakes.put("wake")

    def worker() -> None:
        while wakes.get() == "wake":
            idle = 0
            while True:
                batch = inbox.claim(r, 7, time.time() + 60, {"alpha": 2})
                if not batch and not inbox.active(r):
                    if idle < 3:  # lingers a few looks, as tasks.micro_batch does
                        inbox.draining(r, 60)
                        idle += 1
                        continue
                    if inbox.done_draining(r):
                        idle = 0
                        continue
                    break
                idle = 0
                claimed.extend(batch)
                inbox.release(r, batch)

    draining = threading.Thread(target=worker)
    draining.start()
    apis = [threading.Thread(target=api, args=(n,)) for n in range(4)]
    for thread in apis:
        thread.start()
    for thread in apis:
        thread.join()
    wakes.put("stop")  # after every wake sent by the appends
    draining.join()
    assert len(claimed) == len(set(claimed)) == 1200
    assert set(claimed) == set(appended)
    assert all(inbox.waiting(r, t) == 0 for t in ("alpha", "beta", "gamma"))


def test_entries_of_the_shared_inbox_of_before_move_to_their_tenants(r):
    r.rpush(keys.events_inbox(), inbox.entry("alpha", "a1"), inbox.entry("beta", "b1"))
    r.zadd(keys.events_claimed(), {inbox.entry("alpha", "a0"): time.time() + 60})
    assert inbox.migrate_legacy(r) == 3
    assert r.llen(keys.events_inbox()) == 0 and r.zcard(keys.events_claimed()) == 0
    assert sorted(inbox.claim(r, 10, time.time() + 60, {})) == [
        ("alpha", "a0"), ("alpha", "a1"), ("beta", "b1")]


def test_no_wake_while_a_worker_lingers_and_nothing_is_left_when_it_stops(r, settings):
    inbox.draining(r, 60)  # a worker found every inbox empty and looks again soon
    job_id, wake = submit(r, settings)
    assert wake is False  # the ring was empty, but the lingering worker will see alpha
    assert inbox.done_draining(r) is True  # stopping, it looks once more: alpha is there
    assert inbox.claim(r, 10, time.time() + 60, {}) == [("alpha", job_id)]
    assert inbox.claim(r, 10, time.time() + 60, {}) == []
    assert inbox.done_draining(r) is False
    assert submit(r, settings)[1] is True  # nobody draining: the next append wakes a worker
