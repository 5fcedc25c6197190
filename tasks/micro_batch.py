"""Single-event jobs scored together: one vectorised pass per event type per micro-batch.

celery-batches buffers `validate_events` messages in the worker and hands them over as one
list every FLUSH_EVERY messages or FLUSH_INTERVAL_S seconds, whichever comes first, so a
lone event waits at most that long. With acks_late, every message is acknowledged only
after its batch ran: a worker killed mid-batch has its messages redelivered, and each job's
merge is idempotent (tasks.validate.merge_per_job), so nothing is lost or counted twice.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import redis
from celery import shared_task
from celery_batches import Batches

from core import metrics
from tasks import store
from tasks.context import redis_client, settings
from tasks.lifecycle import MAX_DELIVERIES
from tasks.validate import judge_jobs, summarise
from tasks.webhooks import deliver_webhook

log = logging.getLogger(__name__)

FLUSH_EVERY = 500
FLUSH_INTERVAL_S = 0.05
# A Redis outage inside a batch is waited out here: the batch's messages are acknowledged
# when the task returns, so giving up would leave its jobs unfinished.
REDIS_RETRIES = 30


@shared_task(base=Batches, name="vigil.validate_events", flush_every=FLUSH_EVERY,
             flush_interval=FLUSH_INTERVAL_S, acks_late=True, ignore_result=True)
def validate_events(requests) -> None:
    by_tenant: dict[str, list[str]] = defaultdict(list)
    for request in requests:
        tenant, job_id = request.args
        by_tenant[tenant].append(job_id)
    for tenant, job_ids in by_tenant.items():
        for attempt in range(REDIS_RETRIES):
            try:
                run_batch(redis_client(), tenant, job_ids)
                break
            except redis.RedisError as exc:
                log.warning("redis unavailable during a micro-batch; retrying",
                            extra={"tenant": tenant, "jobs": len(job_ids), "error": str(exc)})
                time.sleep(min(10.0, 0.5 * 2**attempt))


def run_batch(r: redis.Redis, tenant: str, job_ids: list[str]) -> None:
    cfg = settings()
    deliveries = store.start_jobs(r, tenant, job_ids)
    runnable = [j for j, d in zip(job_ids, deliveries) if 0 <= d <= MAX_DELIVERIES]
    outcomes: dict[str, tuple] = {
        j: (store.FAILED, None, None,
            f"the job was started {d - 1} times and its worker died each time; giving up")
        for j, d in zip(job_ids, deliveries) if d > MAX_DELIVERIES}
    if runnable:
        events = dict(zip(runnable, store.get_many_events(r, tenant, runnable)))
        try:
            results = judge_jobs(r, cfg, tenant, events)
            outcomes.update({j: (store.SUCCEEDED, summarise(res), res, None)
                             for j, res in results.items()})
        except redis.RedisError:
            raise
        except Exception as exc:
            log.exception("micro-batch failed", extra={"tenant": tenant, "jobs": len(runnable)})
            outcomes.update({j: (store.FAILED, None, None, f"{type(exc).__name__}: {exc}")
                             for j in runnable})
    finished = store.finish_jobs(r, cfg, tenant, outcomes)
    metrics.record_jobs("validate", outcomes, finished)
    for job_id in store.callback_urls(r, tenant, finished):
        deliver_webhook.delay(tenant, job_id)
