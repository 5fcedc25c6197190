"""The single-event inbox in Redis: when to wake the events worker, and lapsed claims."""

from __future__ import annotations

import time

import pytest
import redis
from helpers import EVENT

from tasks import inbox
from tasks.store import jobs


@pytest.fixture
def r(redis_server) -> redis.Redis:
    """A database no worker of this session reads (they drain database 0's inbox)."""
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/9")
    client.flushdb()
    return client


def submit(r: redis.Redis, settings) -> tuple[str, bool]:
    """Store a single event as the API does: its job id, and whether to wake the worker."""
    return jobs.create_inbox_job(r, settings, "alpha", EVENT)


def test_only_the_first_of_a_burst_wakes_the_worker_and_claims_take_the_oldest(r, settings):
    (a, wake_a), (b, wake_b), (c, wake_c) = (submit(r, settings) for _ in range(3))
    assert [wake_a, wake_b, wake_c] == [True, False, False]
    assert inbox.waiting(r) == 3
    assert inbox.claim(r, 2, time.time() + 60) == [("alpha", a), ("alpha", b)]
    assert inbox.waiting(r) == 1


def test_a_lapsed_claim_goes_back_first_in_line(r, settings):
    (a, _), (b, _) = submit(r, settings), submit(r, settings)
    assert inbox.claim(r, 1, time.time() - 1) == [("alpha", a)]  # its worker died
    assert inbox.reclaim_lapsed(r, time.time()) == 1
    assert inbox.claim(r, 500, time.time() + 60) == [("alpha", a), ("alpha", b)]
    assert inbox.reclaim_lapsed(r, time.time()) == 0  # live claims stay claimed
