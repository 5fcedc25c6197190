"""Baselines and history per event type: all-time moments, the recent (exponentially
weighted) baselines, the latest values, the history rows, the flagged (invalid) events, the
counts per type, and the types known across tenants. apply_batch writes them all, once per
batch; the rest read them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from core import keys
from core.config import Settings
from ml.stats import Moments
from tasks.store import lua
from tasks.store.encoding import dumps

FLAGGED_KEPT = 1000

# Merges per-field moments (Chan et al.), updates the recent (exponentially weighted)
# baselines and latest values, and appends history rows, once per batch id (or set of
# them): a job redelivered after a crash finds its marker and changes nothing. One script,
# so concurrent workers merging into the same field serialise inside Redis and lose nothing.
# lua/moments.lua: the Lua shared by the scripts that move all-time moments (this one,
# tasks.feedback's), prepended to each. All-time moments as 'n,ref,offset,m2': the mean is
# ref + offset (ml.stats.Moments), kept as the rounded mean and its rounding error, so
# merges work on small offsets and keep full precision for values far from zero. Stored
# before that as 'n,mean,m2' (offset 0).
_APPLY_BATCH = lua.text("moments", "apply_batch")


def apply_batch(r: redis.Redis, settings: Settings, tenant: str, event_type: str,
                batch_id: str, moments: Mapping[str, Moments], rows: Iterable[Mapping],
                recent: Mapping[str, Sequence[float]] | None = None,
                flagged: Sequence[Mapping] = (), together_with: Sequence[str] = (),
                reseeds: Mapping[str, Sequence[tuple[int, float, float]]] | None = None
                ) -> bool:
    """Merge a batch into the baselines and history, exactly once.

    together_with: ids of further batches this one stands for (the other jobs of a
    micro-batch, merged in one call): all are marked merged, or, if any was before, none.

    moments: all-time moments of the accepted values per field.
    rows: ``{"ts": epoch seconds, "v": {field: value}}`` per accepted event (the history).
    recent: every value seen per field, in time order, accepted or not (the recent baseline
    clips outliers itself, so a lasting shift is learnt and a spike is not).
    flagged: ``{"ts", "v", "codes"}`` per invalid event (counted, latest kept for the UI).
    reseeds: per field, (position among its values in ``recent``, mean, variance) of each
    level shift in the batch (tasks.level_shifts): the recent baseline re-seeds right after
    that value; the all-time baseline is untouched.
    Returns False if this batch had been applied before (on a pipeline: queued, True).
    """
    script_keys = [keys.batch_applied(tenant, batch_id), keys.baseline(tenant, event_type),
                   keys.history(tenant, event_type),
                   keys.history_since_training(tenant, event_type),
                   keys.event_types(tenant), keys.known_types(),
                   keys.recent_baseline(tenant, event_type), keys.last_values(tenant, event_type),
                   keys.flagged(tenant, event_type), keys.invalid_counts(tenant),
                   *(keys.batch_applied(tenant, other) for other in together_with)]
    recent_json = dumps({f: v for f, v in (recent or {}).items() if len(v)})
    args: list[Any] = [settings.job_ttl_s, settings.history_max_rows, event_type, tenant,
                       repr(settings.recent_alpha), repr(settings.recent_clip),
                       settings.min_history,
                       # cjson decodes '{}' as an empty table either way; '[]' would be too.
                       recent_json, dumps(list(flagged)) if flagged else "[]",
                       FLAGGED_KEPT,
                       # 1-based positions for Lua; '{}': an empty table, as for recent.
                       dumps({f: [[k + 1, mean, var] for k, mean, var in marks]
                              for f, marks in (reseeds or {}).items() if marks}),
                       len(moments)]
    for field, m in moments.items():
        args += [field, m.n, repr(float(m.ref)), repr(float(m.offset)), repr(float(m.m2))]
    args += [dumps(row) for row in rows]
    # register_script: EVALSHA, so a pipeline of many batches sends the script once.
    return bool(r.register_script(_APPLY_BATCH)(keys=script_keys, args=args))


def _parse_moments(raw: bytes) -> Moments:
    """'n,ref,offset,m2' as _APPLY_BATCH stores it, or 'n,mean,m2' as stored before."""
    parts = raw.decode().split(",")
    if len(parts) == 3:
        return Moments(int(parts[0]), float(parts[1]), float(parts[2]))
    n, ref, offset, m2 = parts
    return Moments.about(int(n), float(ref), float(offset), float(m2))


def load_baseline(r: redis.Redis, tenant: str, event_type: str,
                  fields: Sequence[str] | None = None) -> dict[str, Moments]:
    """Moments per field (all fields, or just these)."""
    key = keys.baseline(tenant, event_type)
    if fields is None:
        return {k.decode(): _parse_moments(v) for k, v in r.hgetall(key).items()}
    if not fields:
        return {}
    values = r.hmget(key, list(fields))
    return {f: _parse_moments(v) for f, v in zip(fields, values) if v is not None}


def load_recent(r: redis.Redis, tenant: str, event_type: str,
                fields: Sequence[str]) -> dict[str, Moments]:
    """The recent (exponentially weighted) baseline of these fields, as Moments (n, mean, n*var)."""
    if not fields:
        return {}
    found = {}
    for field, raw in zip(fields, r.hmget(keys.recent_baseline(tenant, event_type), list(fields))):
        if raw is not None:
            # 'n,ref,offset,var' (the mean is ref + offset), or 'n,mean,var' as stored before.
            n, *mean, var = raw.decode().split(",")
            found[field] = Moments.about(int(n), float(mean[0]),
                                         float(mean[1]) if len(mean) > 1 else 0.0,
                                         float(var) * int(n))
    return found


def load_last_values(r: redis.Redis, tenant: str, event_type: str,
                     fields: Sequence[str]) -> dict[str, float]:
    if not fields:
        return {}
    raw = r.hmget(keys.last_values(tenant, event_type), list(fields))
    return {f: float(v) for f, v in zip(fields, raw) if v is not None}


def history_rows(r: redis.Redis, tenant: str, event_type: str) -> list[dict]:
    return [json.loads(row) for row in r.lrange(keys.history(tenant, event_type), 0, -1)]


def history_count(r: redis.Redis, tenant: str, event_type: str) -> int:
    return int(r.llen(keys.history(tenant, event_type)))


def has_rows_since(r: redis.Redis, tenant: str, event_type: str, since: float,
                   count: int) -> bool:
    """Whether the newest ``count`` rows of history all have a timestamp at or after ``since``
    (the history is appended in time order)."""
    raw = r.lindex(keys.history(tenant, event_type), -count)
    return raw is not None and json.loads(raw)["ts"] >= since


def flagged_rows(r: redis.Redis, tenant: str, event_type: str) -> list[dict]:
    """The latest invalid events of a type: {ts, v, codes}, oldest first."""
    return [json.loads(row) for row in r.lrange(keys.flagged(tenant, event_type), 0, -1)]


def invalid_counts(r: redis.Redis, tenant: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(keys.invalid_counts(tenant)).items()}


def event_type_counts(r: redis.Redis, tenant: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(keys.event_types(tenant)).items()}


def known_types(r: redis.Redis) -> list[tuple[str, str]]:
    """(tenant, event type) for every type with history, across tenants (for beat)."""
    return [tuple(m.decode().split(":", 1)) for m in r.smembers(keys.known_types())]
