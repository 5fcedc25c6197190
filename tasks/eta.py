"""How long until a job finishes: the work queued ahead of it over the throughput measured in
the last minute (issue 16). The API answers it as `eta_s` and `Retry-After`.

Two lanes, as there are two kinds of worker that judge (tasks.WORKER_ARGS), each measured
on its own:
- 'jobs', the default queue (batch jobs, history imports; single events with
  VIGIL_MICRO_BATCH=off). Work ahead: the events not yet judged of every unfinished job created
  no later than this one, from keys.pending_events, one entry per job, written with the job
  (tasks.store.jobs._CREATE), updated at each chunk's progress and dropped at its finish.
  Why entries per job rather than one counter incremented at submit and decremented when
  judged: a job lost before it ran (a broker that refused its message), cancelled while queued,
  expired, or a worker that died between the finish and the decrement would leave a counter
  wrong for good; an entry names its job, so the sweep (tasks.store.jobs.drop_finished_pending,
  every EVENTS_SWEEP_S) drops those whose job finished or is gone, and a redelivered job
  rewrites its own entry rather than counting twice.
  Why not the Celery queue's length: it counts messages, and one message may be one event
  or 10,000.
- 'events', the single-event inboxes (tasks.inbox). Work ahead: the length of the tenant's
  inbox plus its claimed entries, the very structures the worker drains (each entry is one
  event), so nothing can drift, times the number of tenants in the ring (the worker's rounds
  share it among them; exact for equal weights and equal backlogs, long otherwise). A queued
  event polled later counts the events behind it too: at most a micro-batch's worth of
  pessimism.
  The 'jobs' lane counts every tenant's pending events created before the job, as if jobs
  ran in the order they came: under the fair queue (tasks.job_queue) a small tenant's job runs
  sooner, so its estimate errs long.

Throughput: workers count the events they judged per epoch second (keys.judged; a chunk's
events land in the second it was merged) and the time they spent judging them
(keys.judging_ms, summed over processes). The last minute's events are divided by the time
the lane was busy in it: per bucket, the time since the previous bucket, but no more than the
judging time recorded in it. Two processes judging side by side for a second record two
seconds of judging in it and count one; a lone event judged in 10 ms counts 10 ms, not the
idle minute around it (events over wall time would measure the arrival rate, not what a
worker can do); a chunk that took 3 s counts the 3 s since the previous bucket. The first
bucket counts its judging time. A lane with no count in the minute uses
FALLBACK_EVENTS_PER_S. Measured over a minute, the rate lags a change in speed (workers
warming up, a noisy neighbour on the machine) by up to that minute.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis

from core import keys
from tasks.store import lua

JOBS, EVENTS = "jobs", "events"
WINDOW_S = 60
# The least time a measurement is taken over: one micro-batch judged in 5 ms would otherwise
# read as a rate it never sustains.
MIN_MEASURED_S = 0.25
# With no events judged in the last minute (an idle system, a fresh start): events per second
# assumed, well below what this 2-core machine measured (README, Benchmarks: batch jobs
# 20,000-30,000 events/s; single events about 2,000/s saturated), so a first estimate errs
# long rather than short.
FALLBACK_EVENTS_PER_S = {JOBS: 5000.0, EVENTS: 500.0}
# Retry-After: at least a second (no client polls back to back), at most this, so a poller
# still sees a job finish early, or its progress, when the estimate was long.
RETRY_AFTER_MAX_S = 30
# Each lane's buckets live this long after their last write, and are trimmed past this many.
BUCKETS_TTL_S = 2 * WINDOW_S
BUCKETS_KEPT = WINDOW_S + 10

# Counts n events judged in ms milliseconds in the buckets of `second`, in the events and
# milliseconds hashes; trims buckets older than the window once there are more than `kept`
# (a lane writes at most one bucket a second). lua/count_judged.lua: a Lua function, shared
# with the progress script of tasks.store.jobs, prepended to each script that calls it.
_RECORD = lua.text("count_judged", "record_judged")

# The inputs of a job's estimate: {lane (1 jobs, 0 events), events ahead (its own included;
# 0 for the events lane, whose backlog is read from the tenant's inbox beside it), events
# judged in the window, milliseconds the lane was busy then}.
# KEYS: pending-events, judged:jobs, judging-ms:jobs, judged:events, judging-ms:events.
# ARGV: the job's entry, the window's first second.
_READ = lua.text("backlog")


def pending_entry(tenant: str, job_id: str) -> str:
    return f"{tenant}:{job_id}"


def pending_value(created_at: float, left: int) -> str:
    return f"{created_at!r} {left}"


@dataclass(frozen=True)
class Backlog:
    """What an estimate is made of: the lane, events ahead of the job (its own included), the
    events the lane judged in the window and the seconds it was busy judging them."""
    lane: str
    ahead: int
    judged: int
    busy_s: float


def events_per_s(backlog: Backlog) -> float:
    """The lane's measured throughput, or its fallback with nothing measured."""
    if backlog.judged <= 0:
        return FALLBACK_EVENTS_PER_S[backlog.lane]
    return backlog.judged / max(backlog.busy_s, MIN_MEASURED_S)


def eta_seconds(backlog: Backlog) -> float:
    """Seconds until the job is expected to finish, to a tenth of a second (at least 0.1: a
    queued job is never done this instant)."""
    return max(0.1, round(max(backlog.ahead, 1) / events_per_s(backlog), 1))


def retry_after(eta_s: float) -> int:
    """Retry-After for an unfinished job: its eta rounded up, within 1..RETRY_AFTER_MAX_S."""
    return min(RETRY_AFTER_MAX_S, max(1, math.ceil(eta_s))) if math.isfinite(eta_s) \
        else RETRY_AFTER_MAX_S


def fallback(lane: str, events: int) -> Backlog:
    """A backlog of just these events with nothing measured."""
    return Backlog(lane, events, 0, 0.0)


def backlog(r: redis.Redis, tenant: str, job_id: str, now: float | None = None) -> Backlog:
    """The backlog of an unfinished job (one round trip: the script on the lanes' global keys,
    the tenant's inbox and the ring beside it, as a script may not mix a tenant's keys with
    global ones)."""
    now = time.time() if now is None else now
    pipe = r.pipeline(transaction=False)
    r.register_script(_READ)(
        keys=[keys.pending_events(), keys.judged(JOBS), keys.judging_ms(JOBS),
              keys.judged(EVENTS), keys.judging_ms(EVENTS)],
        args=[pending_entry(tenant, job_id), int(now) - WINDOW_S], client=pipe)
    pipe.llen(keys.tenant_inbox(tenant))
    pipe.zcard(keys.tenant_inbox_claimed(tenant))
    pipe.scard(keys.events_ring())
    (lane, ahead, judged, busy_ms), waiting, claimed, tenants = pipe.execute()
    if not lane:
        ahead = (waiting + claimed) * max(1, tenants)
    return Backlog(JOBS if lane else EVENTS, int(ahead), int(judged), int(busy_ms) / 1000)


def estimate(r: redis.Redis, tenant: str, job_id: str) -> float:
    """eta_s of an unfinished job."""
    return eta_seconds(backlog(r, tenant, job_id))


def record_judged(r: redis.Redis, lane: str, n: int, judging_s: float) -> None:
    """Count n events judged now, in judging_s seconds, in the lane's throughput."""
    if n > 0:
        r.register_script(_RECORD)(
            keys=[keys.judged(lane), keys.judging_ms(lane)],
            args=[int(time.time()), n, round(judging_s * 1000), BUCKETS_TTL_S, BUCKETS_KEPT,
                  WINDOW_S])
