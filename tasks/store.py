"""Jobs, baselines, history and models in Redis. The API and the workers both use it.

Every function takes the Redis client first; key names come from core.keys only.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
import redis

from core import keys
from core.config import Settings
from ml.stats import Moments
from tasks import eta, inbox

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled")
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
RECENT_JOBS_KEPT = 200
FLAGGED_KEPT = 1000
# Job hash fields holding JSON rather than plain strings.
_JSON_FIELDS = ("summary", "webhook", "params")


def dumps(value: Any) -> bytes:
    """Compact JSON for what is stored: orjson, several times faster than json on verdicts
    and events (the hot path); numpy scalars allowed, NaN and infinities written as null."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def now() -> float:
    return time.time()


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


# --- jobs -----------------------------------------------------------------------------------

# Rate-limit windows (VIGIL_RATE_LIMIT): a tenant's requests counted per epoch second, the
# window's key given its expiry when it is new (it outlives its second a little, so a slow
# request still finds its counter). One Lua function for api.ratelimit's script and _CREATE's.
RATE_WINDOW_TTL_S = 2
_COUNTED = """
local function counted(key, ttl)
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('EXPIRE', key, ttl) end
  return count
end
"""
_COUNT_REQUEST = _COUNTED + "return counted(KEYS[1], ARGV[1])"


class OverRateLimit(Exception):
    """The request counted made its tenant exceed VIGIL_RATE_LIMIT; nothing was stored."""


def new_job_id() -> str:
    """A job id, chosen before the job is stored: a retry under the same id after a lost reply
    finds the job rather than storing it twice (_CREATE)."""
    return uuid.uuid4().hex


def _current_window(tenant: str) -> str:
    return keys.rate_window(tenant, int(time.time()))


def count_request(r: redis.Redis, tenant: str) -> int:
    """Count one request of the tenant's in the current window; returns the window's count."""
    return int(r.register_script(_COUNT_REQUEST)(keys=[_current_window(tenant)],
                                                 args=[RATE_WINDOW_TTL_S]))


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
_CREATE = _COUNTED + """
if redis.call('EXISTS', KEYS[1]) == 1 then return -2 end
local limit = tonumber(ARGV[6])
if limit > 0 and counted(KEYS[5], ARGV[7]) > limit then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[6], ARGV[8], ARGV[9]) end
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[1]) end
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, ARGV[2])
if ARGV[5] ~= '' then return redis.call('RPUSH', KEYS[4], ARGV[5]) end
return 0
"""


def create_job(r: redis.Redis, settings: Settings, tenant: str, *, kind: str,
               events: Sequence[Mapping] = (), event_type: str | None = None,
               callback_url: str | None = None, rate_limit: int = 0,
               job_id: str | None = None, params: Mapping | None = None,
               single: bool = False) -> str:
    """Store a queued job and its events; the caller enqueues the task that runs it.

    rate_limit > 0: count the request against it first; over it, raise OverRateLimit.
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
              append_to or keys.tenant_inbox(tenant), _current_window(tenant),
              keys.pending_events()],
        args=[settings.job_ttl_s, RECENT_JOBS_KEPT - 1, pack_events(events) if events else "",
              job_id, job_id if append_to else "",
              rate_limit, RATE_WINDOW_TTL_S,
              *((eta.pending_entry(tenant, job_id), eta.pending_value(created_at, len(events)))
                if pending else ("", "")),
              *(x for pair in fields.items() for x in pair)]))
    if inbox_length == -1:
        raise OverRateLimit(tenant)
    return job_id, inbox_length


def shared_event_type(events: Sequence[Mapping]) -> str | None:
    """The event type every one of a validate job's events has; None if they differ."""
    found = {event.get("event_type") for event in events}
    return found.pop() if len(found) == 1 else None


def get_job(r: redis.Redis, tenant: str, job_id: str) -> dict[str, Any] | None:
    raw = r.hgetall(keys.job(tenant, job_id))
    return _decode(raw) if raw else None


# Events JSON larger than this is stored deflated. A single event (the API's hot path) stays
# plain: deflating it would cost more API CPU than the bytes it saves.
DEFLATE_EVENTS_OVER = 4096


def pack_events(events: Sequence[Mapping]) -> bytes:
    """A job's events as stored until it finishes: compact JSON, deflated when large. A
    1,000-event job's 136 KB shrink about sevenfold (0.26 ms of API CPU): Redis holds a queued
    backlog in a seventh of the memory, and its append-only file, which every write goes to,
    grows that much slower (its rewrites fork Redis and stall every client; README,
    "Benchmarks")."""
    raw = dumps(list(events))
    return zlib.compress(raw, 1) if len(raw) > DEFLATE_EVENTS_OVER else raw


def get_events(r: redis.Redis, tenant: str, job_id: str) -> list[dict]:
    raw = _inflate(r.get(keys.job_events(tenant, job_id)))
    return orjson.loads(raw) if raw else []


def get_jobs(r: redis.Redis, tenant: str, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """get_job for many jobs in one round trip (None where there is no such job)."""
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(keys.job(tenant, job_id))
    return [_decode(raw) if raw else None for raw in pipe.execute()]


def get_results_json(r: redis.Redis, tenant: str, job_id: str) -> bytes | None:
    """The stored results as their JSON text (UTF-8), unparsed."""
    return _inflate(r.get(keys.job_results(tenant, job_id)))


def get_many_results_json(r: redis.Redis, tenant: str,
                          job_ids: Sequence[str]) -> list[bytes | None]:
    """get_results_json for many jobs in one round trip."""
    raw = r.mget([keys.job_results(tenant, job_id) for job_id in job_ids]) if job_ids else []
    return [_inflate(x) for x in raw]


def _inflate(raw: bytes | None) -> bytes | None:
    """Stored JSON, inflated if it was deflated (JSON text never starts like a zlib stream)."""
    if not raw:
        return None
    try:
        return zlib.decompress(raw)
    except zlib.error:  # small events, or stored before this was deflated
        return raw


def get_results(r: redis.Redis, tenant: str, job_id: str) -> list[dict] | None:
    raw = get_results_json(r, tenant, job_id)
    return orjson.loads(raw) if raw is not None else None


def pack_results(results: list[dict]) -> bytes:
    """Compact JSON, deflated: a 10,000-event job's results shrink about tenfold in Redis."""
    return zlib.compress(dumps(results), 1)


def save_partial_results(r: redis.Redis, settings: Settings, tenant: str, job_id: str,
                         batch_id: str, results: list[dict]) -> None:
    key = keys.job_partial(tenant, job_id)
    r.hset(key, batch_id, pack_results(results))
    r.expire(key, settings.job_ttl_s)


def partial_results(r: redis.Redis, tenant: str,
                    batches: Mapping[str, str]) -> dict[str, list[dict]]:
    """{job id: verdicts} of the batches (job id -> batch id) merged before, if any."""
    pipe = r.pipeline(transaction=False)
    for job_id, batch_id in batches.items():
        pipe.hget(keys.job_partial(tenant, job_id), batch_id)
    return {job_id: orjson.loads(zlib.decompress(raw))
            for job_id, raw in zip(batches, pipe.execute()) if raw}


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
_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return -1
end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'progress_at')  -- a redelivery's judging time counts from now
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

# Finishes a job unless it was cancelled (or expired) meanwhile; answers its created_at (for
# the time to verdict, without another round trip), '' if it has none, or 0 if not finished.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then return 0 end
for i = 1, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return redis.call('HGET', KEYS[1], 'created_at') or ''
"""

# A queued job's pending entry goes with it; a running one's stays until its worker stops
# (tasks.eta: it still holds the worker until then).
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  if status == 'queued' then redis.call('HDEL', KEYS[2], ARGV[2]) end
  return 'cancelled'
end
return status
"""


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


def get_many_events(r: redis.Redis, tenant: str, job_ids: Sequence[str]) -> list[list[dict]]:
    raw = r.mget([keys.job_events(tenant, job_id) for job_id in job_ids]) if job_ids else []
    return [orjson.loads(_inflate(x)) if x else [] for x in raw]


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
            pipe.set(keys.job_results(tenant, job_id), pack_results(results), ex=settings.job_ttl_s)
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
_PROGRESS = eta.COUNT_JUDGED + """
local before = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
local done, now = tonumber(ARGV[1]), tonumber(ARGV[3])
local since = tonumber(redis.call('HGET', KEYS[1], 'progress_at')
                       or redis.call('HGET', KEYS[1], 'started_at') or ARGV[3])
redis.call('HSET', KEYS[1], 'done', done, 'progress_at', ARGV[3])
if done > before then
  count_judged(KEYS[3], KEYS[4], math.floor(now), done - before,
               math.max(0, math.floor((now - since) * 1000)), ARGV[4], tonumber(ARGV[5]),
               tonumber(ARGV[6]))
end
local mine = redis.call('HGET', KEYS[2], ARGV[2])
if mine then
  local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
  local created = string.match(mine, '^(%S+)')
  redis.call('HSET', KEYS[2], ARGV[2], created .. ' ' .. math.max(total - done, 0))
end
"""


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


def set_webhook_state(r: redis.Redis, tenant: str, job_id: str, state: Mapping) -> None:
    pipe = r.pipeline()
    pipe.hset(keys.job(tenant, job_id), "webhook", json.dumps(state))
    if state.get("status") == "failed":
        pipe.zadd(keys.webhooks_failed(tenant), {job_id: now()})
    else:
        pipe.zrem(keys.webhooks_failed(tenant), job_id)
    pipe.execute()


def failed_webhooks(r: redis.Redis, tenant: str, limit: int = 100) -> list[str]:
    """Job ids whose webhook finally failed, newest first (expired jobs are dropped)."""
    ids = [j.decode() for j in r.zrevrange(keys.webhooks_failed(tenant), 0, limit - 1)]
    gone = [j for j in ids if not r.exists(keys.job(tenant, j))]
    if gone:
        r.zrem(keys.webhooks_failed(tenant), *gone)
    return [j for j in ids if j not in gone]


def schedule_webhook(r: redis.Redis, tenant: str, job_id: str, due: float) -> None:
    r.zadd(keys.webhooks_scheduled(), {f"{tenant}:{job_id}": due})


def take_due_webhooks(r: redis.Redis, until: float) -> list[tuple[str, str]]:
    """(tenant, job id) of retries due by ``until``, each handed out once (ZREM decides)."""
    due = [m.decode() for m in r.zrangebyscore(keys.webhooks_scheduled(), "-inf", until)]
    return [tuple(m.split(":", 1)) for m in due if r.zrem(keys.webhooks_scheduled(), m)]


# --- baselines and history -----------------------------------------------------------------

# Merges per-field moments (Chan et al.), updates the recent (exponentially weighted)
# baselines and latest values, and appends history rows, once per batch id (or set of
# them): a job redelivered after a crash finds its marker and changes nothing. One script,
# so concurrent workers merging into the same field serialise inside Redis and lose nothing.
# Lua shared by the scripts that move all-time moments (_APPLY_BATCH, tasks.feedback).
# All-time moments as 'n,ref,offset,m2': the mean is ref + offset (ml.stats.Moments), kept
# as the rounded mean and its rounding error, so merges work on small offsets and keep full
# precision for values far from zero. Stored before that as 'n,mean,m2' (offset 0).
MOMENTS_LUA = """
local huge = math.huge
local function finite(x) return x == x and x < huge and x > -huge end
local function moments(raw)
  local a, b, c, d = string.match(raw, '^([^,]+),([^,]+),([^,]+),?([^,]*)$')
  if d == '' then return tonumber(a), tonumber(b), 0, tonumber(c) end
  return tonumber(a), tonumber(b), tonumber(c), tonumber(d)
end
-- ref + off as the nearest float and its exact rounding error (TwoSum): the new reference
-- is the rounded mean, the offset keeps what rounding lost.
local function rebased(ref, off)
  local s = ref + off
  local bb = s - ref
  return s, (ref - (s - bb)) + (off - bb)
end
local function moments_text(n, ref, off, m2)
  return string.format('%d,%.17g,%.17g,%.17g', n, ref, off, m2)
end
"""

_APPLY_BATCH = MOMENTS_LUA + """
-- KEYS[11..]: markers of further batches merged together with this one (a micro-batch's
-- jobs): all or none of them are merged.
for k = 11, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then return 0 end
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for k = 11, #KEYS do redis.call('SET', KEYS[k], '1', 'EX', ARGV[1]) end
local history_max = tonumber(ARGV[2])
local sqrt = math.sqrt
local alpha, clip, warm = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local n_fields = tonumber(ARGV[12])
local i = 13
for _ = 1, n_fields do
  local field = ARGV[i]
  local n, ref, off, m2 = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]),
                          tonumber(ARGV[i + 4])
  i = i + 5
  local current = redis.call('HGET', KEYS[2], field)
  if current then
    local na, ka, oa, qa = moments(current)
    -- A baseline made inf or nan before values were bounded starts over from this batch.
    if finite(ka) and finite(oa) and finite(qa) then
      local total = na + n
      -- The batch's mean about the stored reference (close references: exact difference);
      -- delta * (delta * w) with w <= min(na, n): nothing larger than the result.
      local delta = ((ref - ka) + off) - oa
      off = oa + delta * (n / total)
      m2 = qa + m2 + delta * (delta * (na * n / total))
      ref, n = ka, total
    end
  end
  ref, off = rebased(ref, off)
  -- Never store a non-finite result: the field keeps its moments (values are bounded by
  -- MAX_MAGNITUDE before they get here, so this guards, it does not happen).
  if finite(ref) and finite(off) and finite(m2) then
    redis.call('HSET', KEYS[2], field, moments_text(n, ref, off, m2))
  end
end
-- Recent baselines: every value in time order, clipped to mean +/- clip*std once warm.
-- The weight is 1/n until that falls below alpha (a plain mean while young, so the first
-- value does not dominate), then alpha (forgetting with the configured half-life).
-- Stored as 'n,ref,mean,var' like the all-time moments: the loop works on values about ref
-- (the rounded mean), mean being their offset from it, so a field far from zero (1e13 +/- 1)
-- keeps its precision; 'n,mean,var' as stored before reads as ref = mean.
-- ARGV[11]: per field, its level shifts in this batch ({k, mean, var}: after its k-th value
-- the baseline re-seeds at that mean and variance; tasks.level_shifts), in order.
local reseeds = cjson.decode(ARGV[11])
for field, values in pairs(cjson.decode(ARGV[8])) do
  local n, ref, mean, var = 0, values[1], 0, 0
  local current = redis.call('HGET', KEYS[7], field)
  if current then n, ref, mean, var = moments(current) end
  if not (finite(ref) and finite(mean) and finite(var)) then  -- made inf or nan before
    n, ref, mean, var = 0, values[1], 0, 0                    -- values were bounded
  end
  -- The loop that costs: about half the script's time for a 1,000-event chunk. A local
  -- sqrt and no math.max call took about a sixth off the whole script (four alternating
  -- runs: 11-30%), with the same figures to the bit.
  -- Between re-seeds (usually none: one pass over all the values).
  local marks, from = reseeds[field] or {}, 1
  for m = 1, #marks + 1 do
    local to = marks[m] and marks[m][1] or #values
    for k = from, to do
      local x = values[k] - ref
      if n >= warm then
        local band = clip * sqrt(var)
        if x > mean + band then x = mean + band elseif x < mean - band then x = mean - band end
      end
      n = n + 1
      local w = 1 / n
      if w < alpha then w = alpha end
      local d = x - mean
      mean = mean + w * d
      var = (1 - w) * (var + w * d * d)
    end
    if marks[m] then ref, mean, var = marks[m][2], 0, marks[m][3] end  -- n goes on counting
    from = to + 1
  end
  ref, mean = rebased(ref, mean)
  if finite(ref) and finite(mean) and finite(var) then  -- as the all-time moments
    redis.call('HSET', KEYS[7], field, moments_text(n, ref, mean, var))
  end
  redis.call('HSET', KEYS[8], field, string.format('%.17g', values[#values]))
end
local rows = #ARGV - i + 1
local j = i
while j <= #ARGV do
  local last = math.min(j + 999, #ARGV)
  redis.call('RPUSH', KEYS[3], unpack(ARGV, j, last))
  j = last + 1
end
if rows > 0 then
  redis.call('LTRIM', KEYS[3], -history_max, -1)
  redis.call('INCRBY', KEYS[4], rows)
end
redis.call('HINCRBY', KEYS[5], ARGV[3], rows)
redis.call('SADD', KEYS[6], ARGV[4] .. ':' .. ARGV[3])
-- Invalid events: counted, and the latest kept for the UI.
local flagged = cjson.decode(ARGV[9])
if #flagged > 0 then
  for k = 1, #flagged, 1000 do
    local chunk = {}
    for m = k, math.min(k + 999, #flagged) do chunk[#chunk + 1] = cjson.encode(flagged[m]) end
    redis.call('RPUSH', KEYS[9], unpack(chunk))
  end
  redis.call('LTRIM', KEYS[9], -ARGV[10], -1)
  redis.call('HINCRBY', KEYS[10], ARGV[3], #flagged)
end
return 1
"""


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


# --- models --------------------------------------------------------------------------------

def save_model(r: redis.Redis, tenant: str, event_type: str, blob: bytes,
               meta: Mapping[str, Any], trained_on_new_rows: int) -> int:
    """Store a new model version; every worker sees it on its next job. Returns the version."""
    key = keys.model(tenant, event_type)
    version = int(r.hincrby(key, "next_version", 1))
    meta = {**meta, "version": version, "trained_at": now()}
    pipe = r.pipeline()
    # Blob and version in one transaction: a reader never sees a version without its blob.
    pipe.hset(key, mapping={"version": version, "meta": json.dumps(meta), "blob": blob})
    # Rows that arrived while training still count toward the next retraining.
    pipe.decrby(keys.history_since_training(tenant, event_type), trained_on_new_rows)
    pipe.execute()
    return version


def model_meta(r: redis.Redis, tenant: str, event_type: str) -> dict[str, Any] | None:
    raw = r.hget(keys.model(tenant, event_type), "meta")
    return json.loads(raw) if raw else None


def model_version(r: redis.Redis, tenant: str, event_type: str) -> int | None:
    raw = r.hget(keys.model(tenant, event_type), "version")
    return int(raw) if raw else None


def model_blob(r: redis.Redis, tenant: str, event_type: str) -> tuple[int, bytes] | None:
    version, blob = r.hmget(keys.model(tenant, event_type), ["version", "blob"])
    return (int(version), blob) if version and blob else None


def new_rows_since_training(r: redis.Redis, tenant: str, event_type: str) -> int:
    return int(r.get(keys.history_since_training(tenant, event_type)) or 0)
