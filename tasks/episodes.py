"""Episodes in Redis: followed when a chunk is judged, written when it is merged.

The episode logic itself is pure (ml.episodes). Here: the state it starts from is read when a
chunk of a type is judged (each verdict then names its episode), and what it changed is
written in the merge's transaction, only if that merge applies (a redelivered batch changes
nothing, so no transition is recorded or announced twice). Two jobs of one type judged at
the same time both start from the state before either merged: their episodes may then
interleave (as the recent baseline does); nothing locks the type for this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import redis

from core import keys
from core.config import Settings
from ml.episodes import Outcome, State, Step, advance, episode_id, peak_of, rule_of
from tasks.store import lua

# Episodes kept per event type (the newest by opened_at); older ones are dropped.
EPISODES_KEPT = 200
# At most this many episodes in one listing.
MAX_LISTED = EPISODES_KEPT

# Writes a chunk's episode changes, but only when the merge queued right after it in the same
# transaction applies: both look at the same batch markers (KEYS[4..]) with nothing in
# between, so both decide alike. KEYS: state, episodes hash, index; ARGV: state JSON, how
# many to keep, then (id, opened_at, JSON) per changed episode.
_WRITE = lua.text("episodes_write")


def load_state(r: redis.Redis, tenant: str, event_type: str) -> State:
    raw = r.get(keys.episode_state(tenant, event_type))
    return State.from_dict(orjson.loads(raw) if raw else None)


def follow(r: redis.Redis, cfg: Settings, tenant: str, event_type: str,
           chunk: Sequence[tuple[str, int, dict]], results: Sequence[dict]) -> Outcome | None:
    """Name each result's episode (``result["episode"]``: id or None), the chunk's entries
    (job id, index, event) and results being in time order. Returns what to write when the
    chunk merges (None: nothing changed)."""
    state = load_state(r, tenant, event_type)
    steps = [Step(result["timestamp"], not result["valid"], rule_of(result["warnings"]),
                  peak_of(result["warnings"]),
                  # Named by the event that opens it: the same id on every redelivery.
                  episode_id(tenant, event_type, job_id, i) if not result["valid"] else "")
             for (job_id, i, _), result in zip(chunk, results)]
    outcome = advance(state, steps, cfg.episode_quiet, event_type)
    for result, found in zip(results, outcome.ids):
        result["episode"] = found
    if state.open is None and not outcome.changed:
        return None
    return outcome


def queue_write(pipe: redis.client.Pipeline, tenant: str, event_type: str,
                outcome: Outcome | None, batch_ids: Sequence[str]) -> None:
    """Queue the write of ``outcome`` on the merge's transaction, BEFORE the merge of the
    batches ``batch_ids``: it applies exactly when that merge does."""
    if outcome is None:
        return
    args: list[Any] = [orjson.dumps(outcome.state.as_dict()), EPISODES_KEPT]
    for found_id, episode in outcome.changed.items():
        args += [found_id, repr(float(episode["opened_at"])), orjson.dumps(episode)]
    pipe.register_script(_WRITE)(
        keys=[keys.episode_state(tenant, event_type), keys.episodes(tenant, event_type),
              keys.episode_index(tenant, event_type),
              *(keys.batch_applied(tenant, b) for b in batch_ids)],
        args=args)


def type_known(r: redis.Redis, tenant: str, event_type: str) -> bool:
    """Whether the tenant has history of this type (episodes of an unknown type: a 404)."""
    return bool(r.hexists(keys.event_types(tenant), event_type))


def list_episodes(r: redis.Redis, tenant: str, event_type: str, *, open_only: bool = False,
                  limit: int = MAX_LISTED) -> list[dict]:
    """The type's episodes, newest (by opened_at) first; open_only: those not closed."""
    ids = r.zrevrange(keys.episode_index(tenant, event_type), 0, EPISODES_KEPT - 1)
    if not ids:
        return []
    found = [orjson.loads(raw) for raw in r.hmget(keys.episodes(tenant, event_type), ids) if raw]
    if open_only:
        found = [e for e in found if e.get("closed_at") is None]
    return found[:limit]


def set_webhook(r: redis.Redis, tenant: str, url: str, now: float) -> dict:
    hook = {"url": url, "created_at": now}
    r.set(keys.episode_webhook(tenant), orjson.dumps(hook))
    return hook


def get_webhook(r: redis.Redis, tenant: str) -> dict | None:
    raw = r.get(keys.episode_webhook(tenant))
    return orjson.loads(raw) if raw else None


def delete_webhook(r: redis.Redis, tenant: str) -> bool:
    return bool(r.delete(keys.episode_webhook(tenant)))
