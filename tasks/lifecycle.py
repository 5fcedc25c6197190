"""Running a stored job: start it once, record success or failure, notify its callback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis

from core import metrics
from core.config import Settings
from tasks import store
from tasks.context import redis_client, settings
from tasks.webhooks import deliver_webhook

log = logging.getLogger(__name__)

# A job whose worker died this many times (SIGKILL, OOM) is failed instead of redelivered.
MAX_DELIVERIES = 3

# Options of every task that runs a job: Redis outages are retried with Celery's backoff,
# capped well below the broker's visibility timeout.
JOB_TASK_OPTIONS = {"autoretry_for": (redis.RedisError,), "retry_backoff": True,
                    "retry_backoff_max": 300, "max_retries": None, "ignore_result": True}


class JobError(Exception):
    """A job cannot succeed; the message is shown to the client as the job's error."""


Work = Callable[[redis.Redis, Settings, str, dict[str, Any]], tuple[dict, list | None]]


def run_job(tenant: str, job_id: str, work: Work) -> str | None:
    """Run ``work(r, settings, tenant, job)`` for a queued job; returns the final status.

    Redis errors propagate so the task's own retry (with backoff) runs it again; any other
    error fails the job with its reason rather than redelivering a job that cannot succeed.
    """
    r, cfg = redis_client(), settings()
    deliveries = store.start_job(r, tenant, job_id)
    if deliveries < 0:
        return None  # finished, cancelled or expired: a redelivery has nothing to do
    job = store.get_job(r, tenant, job_id)
    if deliveries > MAX_DELIVERIES:
        status, summary, results = store.FAILED, None, None
        error = (f"the job was started {deliveries - 1} times and its worker died each time; "
                 "giving up")
    else:
        try:
            summary, results = work(r, cfg, tenant, job)
            status, error = store.SUCCEEDED, None
        except redis.RedisError:
            raise
        except JobError as exc:
            status, summary, results, error = store.FAILED, None, None, str(exc)
        except Exception as exc:
            log.exception("job failed", extra={"tenant": tenant, "job_id": job_id})
            status, summary, results = store.FAILED, None, None
            error = f"{type(exc).__name__}: {exc}"
    kind = (job or {}).get("kind")
    if not store.finish_job(r, cfg, tenant, job_id, status, summary=summary, results=results,
                            error=error):
        metrics.record_job(kind, store.CANCELLED, None)
        return store.CANCELLED
    metrics.record_job(kind, status, summary)
    if store.get_job(r, tenant, job_id).get("callback_url"):
        deliver_webhook.delay(tenant, job_id)
    return status
