"""Single-event jobs scored together: one vectorised pass per event type per micro-batch.

celery-batches buffers `validate_events` messages in the worker and hands them over as one
list every FLUSH_EVERY messages or FLUSH_INTERVAL_S seconds, whichever comes first, so a
lone event waits at most that long. With acks_late, every message is acknowledged only
after its batch ran: a worker killed mid-batch has its messages redelivered, and each job's
merge is idempotent (tasks.validate.merge_per_job), so nothing is lost or counted twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from functools import partial

import redis
from celery import shared_task
from celery_batches import Batches

from core import metrics
from tasks import store
from tasks.context import redis_client, settings, through_outages
from tasks.lifecycle import MAX_DELIVERIES, died_too_often
from tasks.validate import judge_jobs, summarise
from tasks.webhooks import deliver_webhook

log = logging.getLogger(__name__)

FLUSH_EVERY = 500
FLUSH_INTERVAL_S = 0.05


@shared_task(base=Batches, name="vigil.validate_events", flush_every=FLUSH_EVERY,
             flush_interval=FLUSH_INTERVAL_S, acks_late=True, ignore_result=True)
def validate_events(requests) -> None:
    by_tenant: dict[str, list[str]] = defaultdict(list)
    for request in requests:
        tenant, job_id = request.args
        by_tenant[tenant].append(job_id)
    for tenant, job_ids in by_tenant.items():
        run_batch(redis_client(), tenant, job_ids)


def run_batch(r: redis.Redis, tenant: str, job_ids: list[str]) -> None:
    """Start, judge and finish a micro-batch of one tenant's jobs.

    The batch's messages are acknowledged when the task returns, so a Redis outage is waited
    out step by step (through_outages) rather than abandoning the jobs half-done.
    """
    cfg = settings()
    deliveries = through_outages(partial(store.start_jobs, r, tenant, job_ids), "start jobs")
    runnable = [j for j, d in zip(job_ids, deliveries) if 0 <= d <= MAX_DELIVERIES]
    outcomes: dict[str, tuple] = {
        j: (store.FAILED, None, None, died_too_often(d))
        for j, d in zip(job_ids, deliveries) if d > MAX_DELIVERIES}
    if runnable:
        events = dict(zip(runnable, through_outages(
            partial(store.get_many_events, r, tenant, runnable), "load events")))
        try:
            results = through_outages(partial(judge_jobs, r, cfg, tenant, events), "judge")
            outcomes.update({j: (store.SUCCEEDED, summarise(res), res, None)
                             for j, res in results.items()})
        except redis.RedisError:
            raise
        except Exception as exc:
            log.exception("micro-batch failed", extra={"tenant": tenant, "jobs": len(runnable)})
            outcomes.update({j: (store.FAILED, None, None, f"{type(exc).__name__}: {exc}")
                             for j in runnable})
    finished = through_outages(partial(store.finish_jobs, r, cfg, tenant, outcomes), "finish")
    metrics.record_jobs("validate", outcomes, finished)
    for job_id in store.callback_urls(r, tenant, finished):
        deliver_webhook.delay(tenant, job_id)
