"""The single-event inbox in Redis: when to wake the events worker, and lapsed claims."""

from __future__ import annotations

import time

import pytest
import redis

from tasks import inbox


@pytest.fixture
def r(redis_server) -> redis.Redis:
    """A database no worker of this session reads (they drain database 0's inbox)."""
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/9")
    client.flushdb()
    return client


def submit(r: redis.Redis, job_id: str) -> int:
    """Append as the API does; the inbox's length after it (1: wake the events worker)."""
    pipe = r.pipeline()
    inbox.append(pipe, "alpha", job_id)
    return pipe.execute()[-1]


def test_only_the_first_of_a_burst_wakes_the_worker_and_claims_take_the_oldest(r):
    assert [submit(r, c * 32) for c in "abc"] == [1, 2, 3]
    assert inbox.claim(r, 2, time.time() + 60) == [("alpha", "a" * 32), ("alpha", "b" * 32)]
    assert inbox.waiting(r) == 1


def test_a_lapsed_claim_goes_back_first_in_line(r):
    for job_id in ("a" * 32, "b" * 32):
        submit(r, job_id)
    assert inbox.claim(r, 1, time.time() - 1) == [("alpha", "a" * 32)]  # its worker died
    assert inbox.reclaim_lapsed(r, time.time()) == 1
    assert inbox.claim(r, 500, time.time() + 60) == [("alpha", "a" * 32), ("alpha", "b" * 32)]
    assert inbox.reclaim_lapsed(r, time.time()) == 0  # live claims stay claimed
