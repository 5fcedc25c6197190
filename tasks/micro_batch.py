"""Single-event jobs scored together: one vectorised pass per event type per micro-batch.

The API appends single-event jobs to their tenant's inbox (tasks.inbox) and wakes this task
when no tenant had any waiting. The task claims up to MAX_BATCH waiting jobs at once, shared
among the tenants with work by weight (a small claim waits GATHER_S for more), judges them
together, and claims again until every inbox is empty: events that arrive while a batch is
judged form the next batch, so a lone event waits at most GATHER_S, batches grow with the
load by themselves, and one tenant's backlog delays another's events by a round, not by the
backlog. A worker that dies mid-batch leaves
its claims, which the sweep (beat, every EVENTS_SWEEP_S) puts back once they lapse
(VIGIL_VISIBILITY_TIMEOUT); merges are idempotent per job (tasks.validate.merge_per_job), so
nothing is lost or counted twice.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from functools import partial

import redis
from celery import shared_task

from core import metrics
from tasks import eta, inbox
from tasks.context import redis_client, settings, through_outages
from tasks.lifecycle import MAX_DELIVERIES, died_too_often
from tasks.store import job_data, jobs
from tasks.validate import judge_jobs, summarise
from tasks.webhooks import deliver_webhook

log = logging.getLogger(__name__)

MAX_BATCH = 500
# A task drains for at most this long, then hands over to a fresh message, so one task
# does not run forever under a steady stream (Flower, time limits, restarts stay sane).
DRAIN_BUDGET_S = 10.0
# A claim of fewer than GATHER_BELOW jobs waits GATHER_S for more before judging: a small
# batch is mostly fixed cost (frames, a model call, script calls). Measured at ~600 single
# events/s: 0.45 instead of 0.8 ms of events-worker CPU per event, for at most 10 ms more
# before a verdict.
GATHER_BELOW = 50
GATHER_S = 0.01
# With every inbox empty, the task looks again every GATHER_S for this long before it ends,
# saying so in Redis (tasks.inbox.draining): events arriving meanwhile need no wake message.
# At 50 single events/s, a task that ended at once was woken for nearly every event, each
# wake costing a Celery message (about 1 ms of API CPU to publish, 2 ms of worker CPU to
# receive and acknowledge, docs/architecture.md).
LINGER_S = 1.0


@shared_task(name=inbox.WAKE_TASK, acks_late=True, ignore_result=True)
def validate_events(tenant: str | None = None, job_id: str | None = None) -> int:
    """Drain the inboxes; returns the number of jobs judged.

    (tenant, job_id): a message of the earlier design, one per event, still queued after an
    upgrade; its job goes into its tenant's inbox first, so it is not lost.
    """
    r, cfg = redis_client(), settings()
    if tenant and job_id:
        through_outages(partial(inbox.append, r, tenant, job_id), "append to inbox")
    judged, deadline = 0, time.monotonic() + DRAIN_BUDGET_S
    claim = partial(inbox.claim, r, weights=cfg.tenant_weights)
    idle_since: float | None = None
    while True:
        until = time.time() + cfg.visibility_timeout_s
        claimed_at = time.monotonic()
        claimed = through_outages(partial(claim, MAX_BATCH, until), "claim events")
        if not claimed:
            # The round found only empty inboxes (their tenants left the ring); one that an
            # append raced into is back in the ring: go on while any tenant is.
            if through_outages(partial(inbox.active, r), "read the ring"):
                continue
            idle_since = idle_since or claimed_at
            if claimed_at - idle_since < LINGER_S and claimed_at < deadline:
                # Said before looking again: an append that finds the ring empty after the
                # look just made (and so sends no wake) is seen by the next look.
                through_outages(partial(inbox.draining, r, GATHER_S + LINGER_S), "linger")
                time.sleep(GATHER_S)
                continue
            if through_outages(partial(inbox.done_draining, r), "stop draining"):
                idle_since = None
                continue
            return judged
        idle_since = None
        if len(claimed) < GATHER_BELOW:
            time.sleep(GATHER_S)
            claimed += through_outages(partial(claim, MAX_BATCH - len(claimed), until),
                                       "claim events")
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for owner, claimed_id in claimed:
            by_tenant[owner].append(claimed_id)
        for owner, job_ids in by_tenant.items():
            run_batch(r, owner, job_ids)
        through_outages(partial(inbox.release, r, claimed), "release events")
        through_outages(partial(eta.record_judged, r, eta.EVENTS, len(claimed),
                                      time.monotonic() - claimed_at), "throughput")
        judged += len(claimed)
        if time.monotonic() > deadline:
            validate_events.delay()  # the rest in a fresh task
            return judged


@shared_task(name="vigil.sweep_events", ignore_result=True)
def sweep_events() -> None:
    """Beat: put lapsed claims back in their tenants' inboxes, every tenant with entries back
    in the ring, and wake the events worker if any tenant is in it (also when the message that
    should have woken it was lost). Entries of the shared inbox of an earlier version move to
    their tenants' inboxes. Also drops the pending entries of jobs that ended without dropping
    theirs (tasks.eta): here, as this sweep already runs every few seconds."""
    r, cfg = redis_client(), settings()
    jobs.drop_finished_pending(r)
    inbox.migrate_legacy(r)
    reclaimed = inbox.reclaim_lapsed(r, cfg.tenants, time.time())
    if reclaimed:
        log.warning("single events reclaimed from a worker that stopped",
                    extra={"jobs": reclaimed})
    if inbox.active(r):
        validate_events.delay()


def outcome(results: list[dict], error: str | None) -> tuple:
    """A job's (status, summary, results, error) for jobs.finish_jobs. A failed job reports
    the verdicts of the events it merged, if any (a single event's: none)."""
    if error is None:
        return jobs.SUCCEEDED, summarise(results), results, None
    return jobs.FAILED, summarise(results) if results else None, results or None, error


def run_batch(r: redis.Redis, tenant: str, job_ids: list[str]) -> None:
    """Start, judge and finish a micro-batch of one tenant's jobs.

    Claims are dropped only after this returns, so a Redis outage is waited out step by step
    (through_outages) rather than abandoning the jobs half-done. Events of a type that cannot
    be judged fail their own jobs only (tasks.validate.judge_jobs): the other jobs, merged,
    succeed.
    """
    cfg = settings()
    deliveries = through_outages(partial(jobs.start_jobs, r, tenant, job_ids), "start jobs")
    runnable = [j for j, d in zip(job_ids, deliveries) if 0 <= d <= MAX_DELIVERIES]
    outcomes: dict[str, tuple] = {
        j: (jobs.FAILED, None, None, died_too_often(d))
        for j, d in zip(job_ids, deliveries) if d > MAX_DELIVERIES}
    if runnable:
        events = dict(zip(runnable, through_outages(
            partial(job_data.get_many_events, r, tenant, runnable), "load events")))
        try:
            judged = through_outages(partial(judge_jobs, r, cfg, tenant, events), "judge")
        except redis.RedisError:
            raise
        except Exception as exc:
            # judge_jobs fails only the jobs of a type it cannot judge, before merging them;
            # this is for a failure outside any type's judging.
            log.exception("micro-batch failed", extra={"tenant": tenant, "jobs": len(runnable)})
            outcomes.update({j: (jobs.FAILED, None, None, f"{type(exc).__name__}: {exc}")
                             for j in runnable})
        else:
            outcomes.update({j: outcome(res, judged.failed.get(j)) for j, res in judged.items()})
    finished = through_outages(partial(jobs.finish_jobs, r, cfg, tenant, outcomes), "finish")
    metrics.record_jobs("validate", outcomes, finished)
    finished_at = time.time()
    for job_id, created_at in finished.items():
        if created_at is not None and outcomes[job_id][0] == jobs.SUCCEEDED:
            metrics.record_time_to_verdict("single", finished_at - created_at)
    for job_id in jobs.callback_urls(r, tenant, list(finished)):
        deliver_webhook.delay(tenant, job_id)
