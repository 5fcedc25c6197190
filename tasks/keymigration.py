"""Moves a store written with the key names of before hash tags (key scheme 1) to today's
names (core/keys.py, scheme 2), so an upgrade keeps its models, baselines and history.

Run once at each worker's start (tasks/worker.py) under a lock: the first worker moves the
keys while the others wait for it, then all find keys.key_scheme() set and go on at once.
Also a command, for a deployment that wants it done before anything starts:

    python -m tasks.keymigration        # prints what it moved, as JSON

Idempotent: a name is moved only if its new name is free (RENAMENX), else left where it
is and counted as ``kept`` (nothing is overwritten); counts are converted in one
transaction per type (on one Redis), so a second run finds nothing left to do. Move the
store to a cluster after migrating it on its single Redis (docs/scaling.md): there a name
moves by RENAMENX, atomically; on a cluster, where old and new names are in different
slots, by DUMP, RESTORE and DEL.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, ResponseError

from core import keys
from core.config import Settings
from core.connections import store_client

log = logging.getLogger(__name__)

# How long a migration may hold the lock; the others wait this long for it at most.
LOCK_S = 600
# Global names scheme 2 did not change.
_UNCHANGED = frozenset({keys.workers(), keys.known_types(), keys.webhooks_scheduled(),
                        keys.ui_session_key(), keys.key_scheme(), keys.key_scheme_lock(),
                        keys.job_claims(),
                        # tasks.inbox.migrate_legacy empties these into the tenants' inboxes
                        keys.events_inbox(), keys.events_claimed()})
# A validate job's batch: '<job id>:<event type>:<first index>' (tasks.validate.batch_ids).
_VALIDATE_BATCH = re.compile(r"[0-9a-f]{32}:(.+):\d+")


def ensure(r: redis.Redis | RedisCluster, wait_s: float = LOCK_S) -> Counter | None:
    """Migrate the store once: at once if it is done (one GET), else under the lock; returns
    what this process moved (None: it was done, or another process did it)."""
    if _done(r):
        return None
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while True:
        if r.set(keys.key_scheme_lock(), token, nx=True, ex=LOCK_S):
            try:
                moved = migrate(r)
                r.set(keys.key_scheme(), keys.SCHEME)
            finally:
                if r.get(keys.key_scheme_lock()) == token.encode():
                    r.delete(keys.key_scheme_lock())
            log.info("store keys moved to scheme %s", keys.SCHEME, extra=dict(moved))
            return moved
        if _done(r):
            return None
        if time.monotonic() > deadline:
            raise RuntimeError(f"the store's keys were not migrated within {wait_s:.0f} s "
                               f"({keys.key_scheme_lock()} held): see the other worker's log")
        time.sleep(0.5)


def _done(r: redis.Redis | RedisCluster) -> bool:
    return r.get(keys.key_scheme()) == str(keys.SCHEME).encode()


def migrate(r: redis.Redis | RedisCluster) -> Counter:
    """Move every scheme-1 name; returns counts: moved, kept (the new name was taken),
    counts (types whose counts were converted), unknown (names it does not know, left)."""
    done: Counter = Counter()
    for raw in list(r.scan_iter(match=f"{keys.PREFIX}:*", count=1000)):
        name = raw.decode()
        if name in _UNCHANGED or name.startswith(f"{keys.PREFIX}:{{"):
            continue  # a global kept as it was, or a name of scheme 2
        _migrate_one(r, name, done)
    return done


def _migrate_one(r: redis.Redis | RedisCluster, name: str, done: Counter) -> None:
    if name in keys.LEGACY_WORK:
        done[_move(r, name, keys.LEGACY_WORK[name])] += 1
        return
    tenant, _, rest = name[len(keys.PREFIX) + 1:].partition(":")
    kind, _, tail = rest.partition(":")
    if kind in keys.LEGACY_TYPE_KINDS and tail:
        done[_move(r, name, keys.LEGACY_TYPE_KINDS[kind](tenant, tail))] += 1
    elif kind in keys.LEGACY_TENANT_KINDS:
        done[_move(r, name, keys.LEGACY_TENANT_KINDS[kind](tenant, tail))] += 1
    elif kind == "job" and tail:
        _job_key(r, tenant, tail, name, done)
    elif kind == "applied" and tail:
        event_type = _batch_type(r, tenant, tail)
        if event_type is None:  # an import's marker whose job is gone: it would expire soon
            done["unknown"] += 1
        else:
            done[_move(r, name, keys.batch_applied(tenant, event_type, tail))] += 1
    elif rest in ("event-types", "invalid-counts"):
        _counts(r, tenant, done)
    else:
        log.warning("store key of no known scheme-1 kind left as it is: %s", name)
        done["unknown"] += 1


def _job_key(r: redis.Redis | RedisCluster, tenant: str, tail: str, name: str,
             done: Counter) -> None:
    job_id, _, part = tail.partition(":")
    new: dict[str, Callable[[str, str], str]] = {
        "": keys.job, "events": keys.job_events, "results": keys.job_results}
    if part in new:
        done[_move(r, name, new[part](tenant, job_id))] += 1
    elif part == "partial":
        # One hash per job became one per (job, event type), in each type's slot.
        by_type: dict[str, dict[bytes, bytes]] = {}
        for batch, verdicts in r.hgetall(name).items():
            found = _VALIDATE_BATCH.fullmatch(batch.decode())
            if found:
                by_type.setdefault(found.group(1), {})[batch] = verdicts
        ttl = r.pttl(name)
        pipe = r.pipeline(transaction=not isinstance(r, RedisCluster))
        for event_type, batches in by_type.items():
            target = keys.job_partial(tenant, event_type, job_id)
            for batch, verdicts in batches.items():
                pipe.hsetnx(target, batch, verdicts)
            if ttl > 0:
                pipe.pexpire(target, ttl)
        pipe.delete(name)
        pipe.execute()
        done["moved"] += 1
    else:
        log.warning("store key of no known scheme-1 kind left as it is: %s", name)
        done["unknown"] += 1


def _batch_type(r: redis.Redis | RedisCluster, tenant: str, batch: str) -> str | None:
    """The event type a scheme-1 batch marker was of: named in a validate job's batch id; a
    history import's ('<job id>:<start>') is its job's."""
    found = _VALIDATE_BATCH.fullmatch(batch)
    if found:
        return found.group(1)
    job_id = batch.split(":", 1)[0]
    for job in (f"{keys.PREFIX}:{tenant}:job:{job_id}", keys.job(tenant, job_id)):
        event_type = r.hget(job, "event_type")
        if event_type:
            return event_type.decode()
    return None


def _counts(r: redis.Redis | RedisCluster, tenant: str, done: Counter) -> None:
    """A tenant's two count hashes (type -> accepted, type -> invalid) into each type's
    counts, the tenant's set of types and the known types. Per type in one transaction on
    one Redis (the old fields go with it), so a run cut short and run again counts none
    twice. Both hashes are done at the first of the two names met."""
    old_accepted, old_invalid = keys.legacy_event_types(tenant), keys.legacy_invalid_counts(tenant)
    accepted = {k.decode(): int(v) for k, v in r.hgetall(old_accepted).items()}
    invalid = {k.decode(): int(v) for k, v in r.hgetall(old_invalid).items()}
    for event_type in accepted.keys() | invalid.keys():
        pipe = r.pipeline(transaction=not isinstance(r, RedisCluster))
        counts = keys.type_counts(tenant, event_type)
        pipe.hincrby(counts, "accepted", accepted.get(event_type, 0))
        pipe.hincrby(counts, "invalid", invalid.get(event_type, 0))
        pipe.sadd(keys.tenant_types(tenant), event_type)
        pipe.sadd(keys.known_types(), f"{tenant}:{event_type}")
        if event_type in accepted:
            pipe.hdel(old_accepted, event_type)
        if event_type in invalid:
            pipe.hdel(old_invalid, event_type)
        pipe.execute()
        done["counts"] += 1


def _move(r: redis.Redis | RedisCluster, old: str, new: str) -> str:
    """Rename ``old`` to ``new`` unless ``new`` exists; 'moved' or 'kept'."""
    try:
        return "moved" if r.renamenx(old, new) else "kept"
    except (RedisClusterException, ResponseError) as exc:
        if isinstance(exc, ResponseError) and "CROSSSLOT" not in str(exc):
            raise
    # A cluster, old and new in different slots: copy with its expiry, then drop the old.
    dumped, ttl = r.dump(old), r.pttl(old)
    if dumped is None:
        return "kept"  # gone meanwhile (expired)
    try:
        r.restore(new, max(ttl, 0), dumped)
    except ResponseError as exc:
        if "BUSYKEY" not in str(exc):
            raise
        if r.dump(new) != dumped:
            return "kept"
        # The copy of a run cut short before its DEL: the same value, so the old goes.
    r.delete(old)
    return "moved"


def main() -> int:
    moved = ensure(store_client(Settings.from_env()))
    print(json.dumps({"scheme": keys.SCHEME, "moved": dict(moved or {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
