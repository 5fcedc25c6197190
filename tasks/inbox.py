"""The inbox of single-event jobs: a Redis list the events worker drains in micro-batches.

The API stores a single-event job, then appends it here (tasks.store.jobs.create_inbox_job:
two steps, the job being the tenant's and the inbox {work}'s, different cluster slots); only
when the inbox was empty does it also send the events worker a Celery message to wake it.
The worker claims up to a batch of entries at once (moved atomically to a set of claims with
a deadline), judges them together and then drops the claims. Entries of a worker that died stay claimed until
their deadline, when the sweep (beat) puts them back first in line: at-least-once, and the
merges are idempotent, so nothing is counted twice.

Why not a Celery message per event: Celery's Redis transport costs about 1 ms of API CPU to
publish one and about 2 ms of worker CPU to receive, reserve and acknowledge one, several
times the cost of judging the event (measured with py-spy; see the README).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from core import keys
from tasks.store import lua

# The Celery task that drains the inbox (tasks.micro_batch), routed to the events queue.
WAKE_TASK = "vigil.validate_events"

# Takes up to ARGV[1] entries from the head of the inbox and records each as claimed until
# ARGV[2] (epoch seconds), in one step: an entry is always in one place or the other.
_CLAIM = """
local taken = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #taken == 0 then return taken end
redis.call('LTRIM', KEYS[1], #taken, -1)
for _, entry in ipairs(taken) do redis.call('ZADD', KEYS[2], ARGV[2], entry) end
return taken
"""

# Claims that lapsed by ARGV[1] go back to the head of the inbox, oldest claim first in line.
_RECLAIM = """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for i = #lapsed, 1, -1 do
  redis.call('ZREM', KEYS[2], lapsed[i])
  redis.call('LPUSH', KEYS[1], lapsed[i])
end
return #lapsed
"""


def entry(tenant: str, job_id: str) -> str:
    return f"{tenant}:{job_id}"


def parse(raw: bytes | str) -> tuple[str, str]:
    """(tenant, job id) of an inbox entry (tenant names hold no ':', job ids are hex)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    tenant, _, job_id = text.rpartition(":")
    return tenant, job_id


def append(r: redis.Redis | redis.client.Pipeline, tenant: str, job_id: str) -> None:
    """Append a job stored earlier (a new job is appended by store.create_inbox_job as it
    is stored): a message of the earlier design, one per event, after an upgrade."""
    r.rpush(keys.events_inbox(), entry(tenant, job_id))


def claim(r: redis.Redis, limit: int, until: float) -> list[tuple[str, str]]:
    """Take up to ``limit`` entries, oldest first, claimed until ``until`` (epoch seconds)."""
    taken = lua.run(r, _CLAIM, [keys.events_inbox(), keys.events_claimed()],
                    [limit, repr(until)])
    return [parse(raw) for raw in taken]


def release(r: redis.Redis, claimed: Sequence[tuple[str, str]]) -> None:
    """Drop the claims of entries that were judged (or finished otherwise)."""
    if claimed:
        r.zrem(keys.events_claimed(), *(entry(t, j) for t, j in claimed))


def reclaim_lapsed(r: redis.Redis, now: float) -> int:
    """Put entries whose claim lapsed by ``now`` back at the head of the inbox; how many."""
    return int(lua.run(r, _RECLAIM, [keys.events_inbox(), keys.events_claimed()],
                       [repr(now)]))


def waiting(r: redis.Redis) -> int:
    return int(r.llen(keys.events_inbox()))
