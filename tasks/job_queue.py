"""Batch jobs queued per tenant and handed out fairly: the next job is the oldest job of the
tenant that has been served least (events judged over its weight).

The API stores a job and appends its id to its tenant's queue in one script call
(tasks.store.jobs.create_queued_job); when that made the queue non-empty it adds the tenant to the
ring (join); then it sends one Celery message, RUN_TASK, to the default queue. A message says
"a job is waiting", not which: the worker that takes it claims the next job (next_job) and runs
it. Celery stays the engine (its queue, acks_late, redelivery of a dead worker's messages), and
as many messages as jobs are sent, so every job is run.

Fairness: the ring is a sorted set of the tenants with jobs waiting, scored by virtual time,
the events a tenant was handed over its weight (VIGIL_TENANT_WEIGHTS); the next job is the head
of the lowest-scored tenant's queue, and handing it out adds its cost (its events, at least
1; a job without events, such as a training, counts EVENTLESS_COST) over the weight to the
tenant's score. A tenant joining the ring starts at the virtual time of the latest job handed
out (keys.jobs_clock), so a tenant idle for an hour gets no hour of credit to flood with. With
two tenants of weight 1, one with 200 jobs of 1,000 events queued and one sending a 10-event
job, the small job is the next one handed out: it waits for the jobs already running, not for
the backlog (start-time fair queueing, the weighted form of deficit round robin for jobs of
uneven size).

At-least-once: a claim moves the job id to the tenant's claimed set with a deadline
(VIGIL_VISIBILITY_TIMEOUT) and records which Celery task claimed it (keys.job_claims). A
worker that dies mid-job has its message redelivered by Celery (acks_late,
reject_on_worker_lost, the transport's visibility timeout) with the same task id: that delivery
runs the job its first delivery claimed (and run_job counts the deliveries, failing a job whose
worker died three times). A claim whose message was lost lapses, and the sweep puts the job
back first in line with a new message. A message lost before any worker took it (a Redis broker's
failover) leaves a job waiting with no message: the sweep sends messages again once jobs wait
and none was handed out for STALL_S (stalled).

No tenant is stranded with jobs outside the ring: the API appends before it joins; a worker
that takes a tenant's last job takes the tenant out of the ring and then looks at its queue
again, joining it again if an append raced in; the sweep puts every tenant with jobs waiting
back in the ring. Each script touches one tenant's keys or the ring's, never both (Redis
Cluster: one slot per script).
"""

from __future__ import annotations

import time

import redis

from core import keys
from core.config import Settings
from tasks.store import lua

# The Celery task that runs the next job (tasks.next_job), on the default queue.
RUN_TASK = "vigil.run_next_job"
# The task each kind of job has of its own (a message of the earlier design, or the API's with
# VIGIL_MICRO_BATCH=off); a job run by RUN_TASK is logged and timed under its kind's name.
TASK_OF_KIND = {"validate": "vigil.validate_job", "history": "vigil.import_history",
                "train": "vigil.train_job", "backtest": "vigil.backtest_job",
                "revalidate": "vigil.revalidate_job"}
# What a job without events (training, backtest, revalidation) counts as in a tenant's
# virtual time: about one chunk of judging.
EVENTLESS_COST = 1000
# Tenants tried per claim before giving up (each one found empty leaves the ring).
MAX_PICKS = 16
# Jobs waiting and none handed out for this long (seconds): their messages may be lost (a Redis
# broker that fails over can lose messages it had taken). The sweep then sends messages again,
# at most RESEND_MAX per STALL_S: a message that finds no job is a no-op, so one too many
# costs its delivery only, and a backlog behind long-running jobs gets a bounded surplus.
STALL_S = 60.0
RESEND_MAX = 100

# Takes the head of one tenant's queue, claimed until ARGV[1]; answers {job id, entries left},
# or {false, 0} for an empty queue.
_CLAIM = lua.text("job_queue_claim")

# The lowest-scored tenant of the ring, its score becoming the clock; false if none.
_PICK = lua.text("job_queue_pick")

# A tenant joins the ring at the clock (no-op if it is in it already).
_JOIN = lua.text("job_queue_join")

# A job handed out: ARGV[2] added to the tenant's score, if it is still in the ring; when
# (ARGV[3]) noted in KEYS[3] (keys.jobs_handed_at, for stalled()).
_CHARGE = lua.text("job_queue_charge")

# A redelivered task's job: its claim's deadline moved to ARGV[2] if it is still claimed
# (not put back by the sweep meanwhile); 1 if it was.
_RESUME = lua.text("job_queue_resume")

# One tenant's claims that lapsed by ARGV[1] go back to the head of its queue, oldest first in
# line; answers the job ids put back, then the queue's length last.
_RECLAIM = lua.text("job_queue_reclaim")


def _ring() -> list[str]:
    return [keys.jobs_ring(), keys.jobs_clock()]


def _entry(tenant: str, job_id: str) -> str:
    return f"{tenant}:{job_id}"


def join(r: redis.Redis, tenant: str) -> None:
    """Put the tenant in the ring (its queue has jobs), at the current virtual time."""
    lua.run(r, _JOIN, _ring(), [tenant])


def leave(r: redis.Redis, tenant: str) -> None:
    """Take a tenant whose queue was found empty out of the ring, then look again: a job
    appended meanwhile (whose API saw the tenant still in the ring) puts it back."""
    r.zrem(keys.jobs_ring(), tenant)
    if r.llen(keys.job_queue(tenant)):
        join(r, tenant)


def cost(events: int) -> int:
    """What a job counts for in its tenant's virtual time."""
    return events if events > 0 else EVENTLESS_COST


def next_job(r: redis.Redis, settings: Settings, task_id: str,
             until: float) -> tuple[str, str] | None:
    """(tenant, job id) for the Celery task ``task_id`` to run, claimed until ``until``: the
    job it claimed before if this is a redelivery and the claim holds, else the next job of
    the lowest-scored tenant. None when no job is waiting (a message whose job ran already)."""
    linked = r.hget(keys.job_claims(), task_id)
    if linked:
        tenant, _, job_id = linked.decode().rpartition(":")
        if lua.run(r, _RESUME, [keys.job_queue_claimed(tenant)], [job_id, repr(until)]):
            return tenant, job_id
        r.hdel(keys.job_claims(), task_id)
    for _ in range(MAX_PICKS):
        tenant = lua.run(r, _PICK, _ring())
        if not tenant:
            return None
        tenant = tenant.decode()
        job_id, left = lua.run(r, _CLAIM,
                               [keys.job_queue(tenant), keys.job_queue_claimed(tenant)],
                               [repr(until)])
        if not job_id:
            leave(r, tenant)
            continue
        job_id = job_id.decode()
        r.hset(keys.job_claims(), task_id, _entry(tenant, job_id))
        total = r.hget(keys.job(tenant, job_id), "total")
        lua.run(r, _CHARGE, [*_ring(), keys.jobs_handed_at()],
                [tenant, repr(cost(int(total or 0)) / settings.weight(tenant)),
                 repr(time.time())])
        if not left:
            leave(r, tenant)
        return tenant, job_id
    return None


def done(r: redis.Redis, tenant: str, job_id: str, task_id: str) -> None:
    """Drop the claim of a job that ran (or had nothing to run: finished, cancelled, gone)."""
    pipe = r.pipeline(transaction=False)
    pipe.zrem(keys.job_queue_claimed(tenant), job_id)
    pipe.hdel(keys.job_claims(), task_id)
    pipe.execute()


def unqueue(r: redis.Redis, tenant: str, job_id: str) -> None:
    """Take a job out of its tenant's queue (its message could not be sent: the API answers
    503 and the job is not run, as a job whose message was refused never was)."""
    r.lrem(keys.job_queue(tenant), 1, job_id)


def reclaim_lapsed(r: redis.Redis, tenants: set[str] | frozenset[str],
                   now: float) -> list[tuple[str, str]]:
    """For each of ``tenants`` and every tenant in the ring: jobs whose claim lapsed by ``now``
    go back to the head of its queue (their task links dropped), and the tenant back in the
    ring if its queue holds anything. Returns the (tenant, job id) put back: each needs a new
    message (its first was lost, or its worker is gone)."""
    everyone = sorted(set(tenants) | {t.decode() for t in r.zrange(keys.jobs_ring(), 0, -1)})
    pipe = r.pipeline(transaction=False)  # one round trip for every tenant's script call
    for tenant in everyone:
        lua.run(pipe, _RECLAIM, [keys.job_queue(tenant), keys.job_queue_claimed(tenant)],
                [repr(now)])
    back: list[tuple[str, str]] = []
    for tenant, (*lapsed, length) in zip(everyone, pipe.execute() if everyone else []):
        back += [(tenant, job_id.decode()) for job_id in lapsed]
        if length:
            join(r, tenant)
    if back:
        stale = {_entry(t, j) for t, j in back}
        links = r.hgetall(keys.job_claims())
        dropped = [task for task, value in links.items() if value.decode() in stale]
        if dropped:
            r.hdel(keys.job_claims(), *dropped)
    return back


def stalled(r: redis.Redis, now: float) -> int:
    """How many messages the sweep should send again: the jobs waiting (at most RESEND_MAX)
    when none was handed out for STALL_S, else 0. Sending counts as a hand-out, so the next
    resend is STALL_S later at the earliest; the first call that finds jobs waiting and no
    hand-out on record starts the watch instead."""
    tenants = [t.decode() for t in r.zrange(keys.jobs_ring(), 0, -1)]
    if not tenants:
        return 0
    last = r.get(keys.jobs_handed_at())
    if last is not None and now - float(last) < STALL_S:
        return 0
    r.set(keys.jobs_handed_at(), repr(now))
    if last is None:
        return 0
    return min(RESEND_MAX, sum(waiting(r, tenant) for tenant in tenants))


def waiting(r: redis.Redis, tenant: str) -> int:
    """Jobs in the tenant's queue."""
    return int(r.llen(keys.job_queue(tenant)))
