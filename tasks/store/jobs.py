"""Jobs: each job's record (a hash) and its life, from queued through running to finished
or cancelled, its place among the tenant's recent jobs and its pending entry (tasks.eta).
Its events and results are job_data's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from core import keys
from core.config import Settings
from tasks import eta, inbox
from tasks.store import job_data, lua, rates
from tasks.store.encoding import dumps, now

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled")
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
RECENT_JOBS_KEPT = 200
# Job hash fields holding JSON rather than plain strings.
_JSON_FIELDS = ("summary", "webhook", "params")


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    job = {k.decode(): v.decode() for k, v in raw.items()}
    for name in _JSON_FIELDS:
        if name in job:
            job[name] = json.loads(job[name])
    for name in ("total", "done", "attempts"):
        if name in job:
            job[name] = int(job[name])
    for name in ("created_at", "started_at", "finished_at"):
        if name in job:
            job[name] = float(job[name])
    return job


def new_job_id() -> str:
    """A job id, chosen before the job is stored: a retry under the same id after a lost reply
    finds the job rather than storing it twice (_CREATE)."""
    return uuid.uuid4().hex


# Stores a queued job: its hash (with an expiry), its events, its place among the tenant's
# recent jobs and, for a single event or a job of the fair lane, its id appended to the
# tenant's inbox (tasks.inbox) or job queue (tasks.job_queue), KEYS[4]; returns that list's
# length then (0: not appended). With a rate limit (ARGV[6] > 0) it first counts the
# request in the tenant's window (KEYS[5]) and stores nothing over the limit (-1). One script
# call rather than a MULTI of seven commands, or a second round trip for the rate limit: the
# API's hot path pays redis-py's cost per command.
# Idempotent per job id (chosen by the caller before the call): if the job exists, the call
# is a retry of one whose reply was lost, and it only says so (-2): no second inbox entry,
# rate count or place among the recent jobs.
# A job for the default queue (not the inbox) gets its entry among the pending events
# (tasks.eta) in the same step: no job is ever pending without one, nor one without its job.
_CREATE = lua.text("counted", "create_job")


def create_job(r: redis.Redis, settings: Settings, tenant: str, *, kind: str,
               events: Sequence[Mapping] = (), event_type: str | None = None,
               callback_url: str | None = None, rate_limit: int = 0,
               job_id: str | None = None, params: Mapping | None = None,
               single: bool = False) -> str:
    """Store a queued job and its events; the caller enqueues the task that runs it.

    rate_limit > 0: count the request against it first; over it, raise rates.OverRateLimit.
    job_id: the id to store it under (new_job_id()); if that job exists already (this is a
    retry after a lost reply), nothing is stored again. The caller enqueues either way: the
    first call, whose reply was lost, enqueued nothing.
    params: what the job is asked to do beyond its events (a backtest's settings), as JSON.
    single: a single event sent to a task of its own (VIGIL_MICRO_BATCH=off), marked so its
    time to verdict counts as a single event's, not a batch's.
    """
    return _create(r, settings, tenant, kind=kind, events=events, event_type=event_type,
                   callback_url=callback_url, rate_limit=rate_limit, job_id=job_id,
                   params=params, single=single)[0]


def create_inbox_job(r: redis.Redis, settings: Settings, tenant: str,
                     event: Mapping, rate_limit: int = 0,
                     job_id: str | None = None) -> tuple[str, bool]:
    """Store a single-event job and append it to its tenant's inbox (tasks.inbox), in one
    step. Returns its id and whether the inbox was empty (the caller must then put the tenant
    in the ring, tasks.inbox.join_ring). rate_limit and job_id as create_job's: a retry that
    finds the job says so too, as the first call may have appended and joined nobody."""
    job_id, inbox_length = _create(r, settings, tenant, kind="validate", events=[event],
                                   append_to=keys.tenant_inbox(tenant), rate_limit=rate_limit,
                                   job_id=job_id)
    return job_id, inbox_length in (1, ALREADY_STORED)


def create_queued_job(r: redis.Redis, settings: Settings, tenant: str, *, kind: str,
                      events: Sequence[Mapping] = (), event_type: str | None = None,
                      callback_url: str | None = None, job_id: str | None = None,
                      params: Mapping | None = None) -> tuple[str, bool]:
    """create_job, the job also appended to its tenant's job queue (tasks.job_queue) in the
    same step. Returns its id and whether the queue was empty (the caller must then put the
    tenant in the ring, tasks.job_queue.join), or the job was stored before (a retry)."""
    job_id, length = _create(r, settings, tenant, kind=kind, events=events,
                             event_type=event_type, callback_url=callback_url, job_id=job_id,
                             params=params, append_to=keys.job_queue(tenant), pending=True)
    return job_id, length in (1, ALREADY_STORED)


# What _CREATE answers for a job that exists already (a retry after a lost reply).
ALREADY_STORED = -2


def _create(r: redis.Redis, settings: Settings, tenant: str, *, kind: str,
            events: Sequence[Mapping], event_type: str | None = None,
            callback_url: str | None = None, append_to: str | None = None,
            rate_limit: int = 0, job_id: str | None = None,
            params: Mapping | None = None, single: bool = False,
            pending: bool | None = None) -> tuple[str, int]:
    # A job of the default queue's lane has a pending entry (tasks.eta); an inbox job does not.
    pending = append_to is None if pending is None else pending
    job_id = job_id or new_job_id()
    created_at = now()
    fields = {"job_id": job_id, "kind": kind, "status": QUEUED, "total": len(events), "done": 0,
              "attempts": 0, "created_at": created_at}
    if single:
        fields["single"] = 1
    if event_type is None and kind == "validate":
        event_type = shared_event_type(events)
    if event_type:
        fields["event_type"] = event_type
    if callback_url:
        fields["callback_url"] = callback_url
    if params:
        fields["params"] = dumps(params)
    inbox_length = int(r.register_script(_CREATE)(
        keys=[keys.job(tenant, job_id), keys.job_events(tenant, job_id), keys.recent_jobs(tenant),
              append_to or keys.tenant_inbox(tenant), rates.current_window(tenant),
              keys.pending_events()],
        args=[settings.job_ttl_s, RECENT_JOBS_KEPT - 1, job_data.pack_events(events) if events else "",
              job_id, job_id if append_to else "",
              rate_limit, rates.RATE_WINDOW_TTL_S,
              *((eta.pending_entry(tenant, job_id), eta.pending_value(created_at, len(events)))
                if pending else ("", "")),
              *(x for pair in fields.items() for x in pair)]))
    if inbox_length == -1:
        raise rates.OverRateLimit(tenant)
    return job_id, inbox_length


def shared_event_type(events: Sequence[Mapping]) -> str | None:
    """The event type every one of a validate job's events has; None if they differ."""
    found = {event.get("event_type") for event in events}
    return found.pop() if len(found) == 1 else None


def get_job(r: redis.Redis, tenant: str, job_id: str) -> dict[str, Any] | None:
    raw = r.hgetall(keys.job(tenant, job_id))
    return _decode(raw) if raw else None


def get_jobs(r: redis.Redis, tenant: str, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """get_job for many jobs in one round trip (None where there is no such job)."""
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(keys.job(tenant, job_id))
    return [_decode(raw) if raw else None for raw in pipe.execute()]


def recent_job_ids(r: redis.Redis, tenant: str, limit: int = 20,
                   before: str | None = None) -> list[str] | None:
    """The ids of the tenant's latest jobs, newest first; ``before``: those after that job
    in the list (older ones), or None if that job is no longer listed."""
    start = 0
    if before is not None:
        position = r.lpos(keys.recent_jobs(tenant), before)
        if position is None:
            return None
        start = position + 1
    return [j.decode() for j in r.lrange(keys.recent_jobs(tenant), start, start + limit - 1)]


# Moves a job to running unless it is finished, cancelled or gone; counts deliveries so a
# job that keeps killing its worker can be failed instead of redelivered forever.
_START = lua.text("start_job")

# Finishes a job unless it was cancelled (or expired) meanwhile; answers its created_at (for
# the time to verdict, without another round trip), '' if it has none, or 0 if not finished.
_FINISH = lua.text("finish_job")

# A queued job's pending entry goes with it; a running one's stays until its worker stops
# (tasks.eta: it still holds the worker until then).
_CANCEL = lua.text("cancel_job")


def start_job(r: redis.Redis, tenant: str, job_id: str) -> int:
    """Mark the job running; returns its delivery count, or -1 if it must not run."""
    return int(r.eval(_START, 1, keys.job(tenant, job_id), now()))


def finish_job(r: redis.Redis, settings: Settings, tenant: str, job_id: str, status: str, *,
               summary: Mapping | None = None, results: list[dict] | None = None,
               error: str | None = None) -> bool:
    """Record the outcome; False if the job was cancelled or expired meanwhile."""
    return bool(finish_jobs(r, settings, tenant, {job_id: (status, summary, results, error)}))


def start_jobs(r: redis.Redis, tenant: str, job_ids: Sequence[str]) -> list[int]:
    """start_job for many jobs in one round trip."""
    script = r.register_script(_START)
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        script(keys=[keys.job(tenant, job_id)], args=[now()], client=pipe)
    return [int(x) for x in pipe.execute()]


def finish_jobs(r: redis.Redis, settings: Settings, tenant: str,
                outcomes: Mapping[str, tuple[str, dict | None, list | None, str | None]]
                ) -> dict[str, float | None]:
    """finish_job for many jobs in one round trip: {job_id: (status, summary, results, error)}.

    Results are written first: a client that sees `succeeded` must find them. A finished
    job is then kept for the full TTL from now, not from submission; its events are deleted.
    Returns the jobs that finished (not cancelled or expired meanwhile), each with its
    created_at (None if it has none).
    """
    finish = r.register_script(_FINISH)
    pipe = r.pipeline(transaction=False)
    ids = list(outcomes)
    flag_at: list[int] = []  # where each job's finish reply lands in the pipeline's replies
    for job_id in ids:
        status, summary, results, error = outcomes[job_id]
        if results is not None:
            pipe.set(keys.job_results(tenant, job_id), job_data.pack_results(results), ex=settings.job_ttl_s)
    for job_id in ids:
        status, summary, results, error = outcomes[job_id]
        fields: dict[str, Any] = {"status": status, "finished_at": now()}
        if summary is not None:
            fields["summary"] = json.dumps(summary)
        if error is not None:
            fields["error"] = error
        if results is not None:
            fields["done"] = len(results)
        flag_at.append(len(pipe))
        finish(keys=[keys.job(tenant, job_id)],
               args=[x for pair in fields.items() for x in pair], client=pipe)
        pipe.expire(keys.job(tenant, job_id), settings.job_ttl_s)
        # The final results supersede the per-batch verdicts kept for redeliveries, and a
        # finished job's events are read no more (a redelivery finds it finished): dropped
        # now rather than kept for the TTL, Redis holds several times less per batch job, and
        # rewrites its append-only file less often.
        pipe.delete(keys.job_partial(tenant, job_id), keys.job_events(tenant, job_id))
    if ids:  # no longer work ahead of anyone (a single event's job has no entry: a no-op)
        pipe.hdel(keys.pending_events(), *(eta.pending_entry(tenant, j) for j in ids))
    replies = pipe.execute()
    return {job_id: float(replies[at]) if replies[at] != b"" else None
            for job_id, at in zip(ids, flag_at) if replies[at] != 0}


def callback_urls(r: redis.Redis, tenant: str, job_ids: Sequence[str]) -> dict[str, str]:
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(tenant, job_id), "callback_url")
    return {j: url.decode() for j, url in zip(job_ids, pipe.execute()) if url}


# Records a job's progress (ARGV[1] events done), counts the events done since the last
# progress, and the time since then (or since the job started), in the jobs lane's
# throughput, and updates the job's pending entry, if it has one (tasks.eta). A redelivered
# job's progress starts again from 0: it counts no events until it passes what its first
# delivery reached, and its entry says what is left.
# KEYS: job, pending-events, judged:jobs, judging-ms:jobs.
# ARGV: done, entry, now (epoch s, float), ttl, kept, window.
_PROGRESS = lua.text("count_judged", "job_progress")


def set_progress(r: redis.Redis, tenant: str, job_id: str, done: int) -> None:
    """The job's events done so far; also what tasks.eta measures and counts ahead."""
    r.register_script(_PROGRESS)(
        keys=[keys.job(tenant, job_id), keys.pending_events(), keys.judged(eta.JOBS),
              keys.judging_ms(eta.JOBS)],
        args=[done, eta.pending_entry(tenant, job_id), repr(time.time()), eta.BUCKETS_TTL_S,
              eta.BUCKETS_KEPT, eta.WINDOW_S])


def drop_finished_pending(r: redis.Redis) -> int:
    """Drop the pending entries (tasks.eta) of jobs that finished, were cancelled or are gone
    (expired, or stored but never run); how many. Beat's sweep calls it, so an entry whose
    job ended without dropping it (a worker that died between two steps) is gone within
    EVENTS_SWEEP_S rather than counted ahead for good."""
    entries = [e.decode() for e in r.hkeys(keys.pending_events())]
    if not entries:
        return 0
    pipe = r.pipeline(transaction=False)
    for entry in entries:
        tenant, job_id = inbox.parse(entry)
        pipe.hget(keys.job(tenant, job_id), "status")
    ended = [entry for entry, status in zip(entries, pipe.execute())
             if status is None or status.decode() in FINISHED]
    return int(r.hdel(keys.pending_events(), *ended)) if ended else 0


def cancel_job(r: redis.Redis, tenant: str, job_id: str) -> str | None:
    """Cancel a queued or running job. Returns the status it has now (None: no such job)."""
    status = r.eval(_CANCEL, 2, keys.job(tenant, job_id), keys.pending_events(), now(),
                    eta.pending_entry(tenant, job_id))
    return status.decode() if status else None
