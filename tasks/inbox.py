"""The inboxes of single-event jobs: one Redis list per tenant, drained fairly in micro-batches.

The API stores a single-event job and appends it to its tenant's inbox in one script call
(tasks.tasks.store.jobs.create_inbox_job). Only when that append made the inbox non-empty does it add the
tenant to the ring of tenants with work (a separate command: a script touches one tenant's keys
only, the ring is global), and only when that made the ring non-empty does it send the events
worker a Celery message to wake it.

The worker's round (claim): the ring's tenants, each inbox's length, then up to a batch of
entries shared among them by weight (VIGIL_TENANT_WEIGHTS; water-filling: a tenant with fewer
entries than its share leaves the rest to the others), each tenant's entries moved atomically
to its set of claims with a deadline. So a tenant with a backlog takes at most its share of a
batch, and another tenant's event waits for one round, not for the backlog.

No entry is ever stranded (in an inbox while its tenant is out of the ring and no worker will
come): the API appends and then joins the ring; a worker that finds an inbox empty leaves the
ring and then looks at the inbox again, joining it again if an append raced in; a worker stops
only once it finds the ring empty; and the sweep (beat) puts every tenant with entries back in
the ring. Entries of a worker that died stay claimed until their deadline, when the sweep puts
them back first in line: at-least-once, and the merges are idempotent, so nothing is counted
twice.

Why not a Celery message per event: Celery's Redis transport costs about 1 ms of API CPU to
publish one and about 2 ms of worker CPU to receive, reserve and acknowledge one, several
times the cost of judging the event (measured with py-spy; see the README).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import redis

from core import keys
from tasks.store import lua

# The Celery task that drains the inboxes (tasks.micro_batch), routed to the events queue.
WAKE_TASK = "vigil.validate_events"

# Takes up to ARGV[1] entries from the head of one tenant's inbox and records each as claimed
# until ARGV[2] (epoch seconds), in one step: an entry is always in one place or the other.
_CLAIM = lua.text("inbox_claim")

# One tenant's claims that lapsed by ARGV[1] go back to the head of its inbox, oldest claim
# first in line; answers {moved, the inbox's length}.
_RECLAIM = lua.text("inbox_reclaim")

# Adds a tenant to the ring (a set); answers 1 if the ring was empty before and no worker is
# draining (KEYS[2]): a worker must be woken.
_JOIN = lua.text("inbox_join")


def entry(tenant: str, job_id: str) -> str:
    """An entry of the inbox every tenant shared before (keys.events_inbox)."""
    return f"{tenant}:{job_id}"


def parse(raw: bytes | str) -> tuple[str, str]:
    """(tenant, job id) of an entry (tenant names hold no ':', job ids are hex)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    tenant, _, job_id = text.rpartition(":")
    return tenant, job_id


def join_ring(r: redis.Redis, tenant: str) -> bool:
    """Put the tenant in the ring of tenants with single events waiting; True if the ring was
    empty and no worker is draining (the caller must then wake the events worker)."""
    return bool(r.register_script(_JOIN)(keys=[keys.events_ring(), keys.events_draining()],
                                         args=[tenant]))


def draining(r: redis.Redis, for_s: float) -> None:
    """Say a worker is draining and will look at the ring again within ``for_s`` seconds (an
    API then sends no wake message); it lapses by itself should the worker die."""
    r.set(keys.events_draining(), 1, px=max(1, round(for_s * 1000)))


def done_draining(r: redis.Redis) -> bool:
    """The worker stops: withdraw the promise, then look at the ring again (a tenant that
    joined while it stood sent no wake); True if it must go on draining."""
    r.delete(keys.events_draining())
    return active(r)


def append(r: redis.Redis, tenant: str, job_id: str) -> bool:
    """Append a job stored earlier (a new job is appended by tasks.store.jobs.create_inbox_job as it is
    stored): a message of an earlier design, after an upgrade. True if the ring was empty."""
    if r.rpush(keys.tenant_inbox(tenant), job_id) == 1:
        return join_ring(r, tenant)
    return False


def shares(limit: int, waiting: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, int]:
    """How many of ``limit`` entries each tenant gets this round: in proportion to its weight,
    but never more than it has waiting, what one leaves going to the others (water-filling).
    Whole entries: a tenant's fraction carries to the largest remainders, and every tenant with
    entries gets at least one while the limit allows (a tiny weight still moves)."""
    left = {t: n for t, n in waiting.items() if n > 0}
    given: dict[str, int] = defaultdict(int)
    room = limit
    while left and room > 0:
        total = sum(weights.get(t, 1.0) for t in left)
        exact = {t: room * weights.get(t, 1.0) / total for t in left}
        # A tenant whose share covers all it has waiting takes it all; the rest is shared again.
        full = [t for t in left if exact[t] >= left[t]]
        if full:
            for t in full:
                given[t] += left[t]
                room -= left.pop(t)
            continue
        whole = {t: int(exact[t]) for t in left}
        rest = room - sum(whole.values())
        for t in sorted(left, key=lambda t: (whole[t] - exact[t], t))[:rest]:
            whole[t] += 1
        for t in [t for t in left if whole[t] == 0]:
            richest = max(left, key=lambda u: (whole[u], u))
            if whole[richest] > 1:  # one entry from the largest share
                whole[richest] -= 1
                whole[t] = 1
        for t in left:
            given[t] += whole[t]
        break
    return {t: n for t, n in given.items() if n > 0}


def claim(r: redis.Redis, limit: int, until: float,
          weights: Mapping[str, float]) -> list[tuple[str, str]]:
    """One round: up to ``limit`` entries across the ring's tenants by ``weights`` (shares),
    each tenant's oldest first, claimed until ``until`` (epoch seconds). Tenants found with an
    empty inbox leave the ring (and join again if an append raced in)."""
    tenants = sorted(t.decode() for t in r.smembers(keys.events_ring()))
    if not tenants:
        return []
    pipe = r.pipeline(transaction=False)
    for tenant in tenants:
        pipe.llen(keys.tenant_inbox(tenant))
    waiting = dict(zip(tenants, pipe.execute()))
    for tenant in [t for t, n in waiting.items() if n == 0]:
        leave_ring(r, tenant)
    given = shares(limit, waiting, weights)
    if not given:
        return []
    script = r.register_script(_CLAIM)
    pipe = r.pipeline(transaction=False)
    for tenant, n in given.items():
        script(keys=[keys.tenant_inbox(tenant), keys.tenant_inbox_claimed(tenant)],
               args=[n, repr(until)], client=pipe)
    return [(tenant, job_id.decode()) for tenant, taken in zip(given, pipe.execute())
            for job_id in taken]


def leave_ring(r: redis.Redis, tenant: str) -> None:
    """Take a tenant whose inbox was found empty out of the ring, then look again: an append
    that raced in (and saw the tenant still in the ring, so did not add it) puts it back."""
    r.srem(keys.events_ring(), tenant)
    if r.llen(keys.tenant_inbox(tenant)):
        r.sadd(keys.events_ring(), tenant)


def release(r: redis.Redis, claimed: Sequence[tuple[str, str]]) -> None:
    """Drop the claims of entries that were judged (or finished otherwise)."""
    by_tenant: dict[str, list[str]] = defaultdict(list)
    for tenant, job_id in claimed:
        by_tenant[tenant].append(job_id)
    if by_tenant:
        pipe = r.pipeline(transaction=False)
        for tenant, job_ids in by_tenant.items():
            pipe.zrem(keys.tenant_inbox_claimed(tenant), *job_ids)
        pipe.execute()


def active(r: redis.Redis) -> bool:
    """Whether any tenant is in the ring (entries may be waiting)."""
    return bool(r.scard(keys.events_ring()))


def reclaim_lapsed(r: redis.Redis, tenants: Iterable[str], now: float) -> int:
    """For each of ``tenants`` and every tenant in the ring: put entries whose claim lapsed by
    ``now`` back at the head of its inbox, and the tenant back in the ring if its inbox holds
    anything (whatever left it out). Returns how many entries were put back."""
    everyone = sorted(set(tenants) | {t.decode() for t in r.smembers(keys.events_ring())})
    script = r.register_script(_RECLAIM)
    pipe = r.pipeline(transaction=False)  # one round trip for every tenant's script call
    for tenant in everyone:
        script(keys=[keys.tenant_inbox(tenant), keys.tenant_inbox_claimed(tenant)],
               args=[repr(now)], client=pipe)
    found = pipe.execute() if everyone else []
    waiting = [tenant for tenant, (_, length) in zip(everyone, found) if length]
    if waiting:
        r.sadd(keys.events_ring(), *waiting)
    return sum(int(back) for back, _ in found)


def migrate_legacy(r: redis.Redis) -> int:
    """Entries of the one inbox every tenant shared before (and its claims), after an upgrade:
    moved into their tenants' inboxes, so none is lost. Each entry is appended before it is
    removed: a crash in between leaves it in both, and a job judged twice is merged once (its
    batch marker) and finished once."""
    moved = 0
    for item in r.zrange(keys.events_claimed(), 0, -1):
        _move_legacy(r, item)
        r.zrem(keys.events_claimed(), item)
        moved += 1
    for item in r.lrange(keys.events_inbox(), 0, -1):
        _move_legacy(r, item)
        r.lrem(keys.events_inbox(), 1, item)
        moved += 1
    return moved


def _move_legacy(r: redis.Redis, item: bytes) -> None:
    tenant, job_id = parse(item)
    r.rpush(keys.tenant_inbox(tenant), job_id)
    r.sadd(keys.events_ring(), tenant)


def waiting(r: redis.Redis, tenant: str) -> int:
    """Entries in the tenant's inbox."""
    return int(r.llen(keys.tenant_inbox(tenant)))
