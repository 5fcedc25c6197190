"""Running a stored job: start it once, record success or failure, notify its callback."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from core import metrics
from core.config import Settings
from tasks.context import redis_client, settings, through_outages
from tasks.store import jobs
from tasks.webhooks import deliver_webhook

log = logging.getLogger(__name__)

# A job whose worker died this many times (SIGKILL, OOM) is failed instead of redelivered.
MAX_DELIVERIES = 3

# Options of every task that runs a job. Redis outages are waited out inside the task
# (tasks.context.through_outages), not retried by Celery.
JOB_TASK_OPTIONS = {"ignore_result": True}


def died_too_often(deliveries: int) -> str:
    """The error of a job failed because its worker died on every delivery."""
    return (f"the job was started {deliveries - 1} times and its worker died each time; "
            "giving up")


class JobError(Exception):
    """A job cannot succeed; the message is shown to the client as the job's error.

    summary, results: what the job did before it failed, when that changed anything (the
    verdicts of the events it merged): recorded with the failure, so a client knows them.
    """

    def __init__(self, message: str, *, summary: dict | None = None,
                 results: list | None = None):
        super().__init__(message)
        self.summary, self.results = summary, results


Work = Callable[[redis.Redis, Settings, str, dict[str, Any]], tuple[dict, list | None]]


def run_job(tenant: str, job_id: str, work: Work) -> str | None:
    """Run ``work(r, settings, tenant, job)`` for a queued job; returns the final status.

    A Redis outage is waited out, step by step (start, work, finish), so the job's message
    stays unacknowledged until it finished; any other error fails the job with its reason
    rather than redelivering a job that cannot succeed.
    """
    r, cfg = redis_client(), settings()
    deliveries = through_outages(lambda: jobs.start_job(r, tenant, job_id), "start job")
    if deliveries < 0:
        return None  # finished, cancelled or expired: a redelivery has nothing to do
    job = through_outages(lambda: jobs.get_job(r, tenant, job_id), "load job")
    if deliveries > MAX_DELIVERIES:
        status, summary, results = jobs.FAILED, None, None
        error = died_too_often(deliveries)
    else:
        try:
            summary, results = through_outages(lambda: work(r, cfg, tenant, job), "run job")
            status, error = jobs.SUCCEEDED, None
        except redis.RedisError:
            raise
        except JobError as exc:
            status, summary, results, error = jobs.FAILED, exc.summary, exc.results, str(exc)
        except Exception as exc:
            log.exception("job failed", extra={"tenant": tenant, "job_id": job_id})
            status, summary, results = jobs.FAILED, None, None
            error = f"{type(exc).__name__}: {exc}"
    kind = (job or {}).get("kind")
    if not through_outages(lambda: jobs.finish_job(r, cfg, tenant, job_id, status,
                                                    summary=summary, results=results,
                                                    error=error), "finish job"):
        metrics.record_job(kind, jobs.CANCELLED, None)
        return jobs.CANCELLED
    metrics.record_job(kind, status, summary, results)
    if kind == "validate" and status == jobs.SUCCEEDED and job and "created_at" in job:
        # A single event here was sent a task of its own (VIGIL_MICRO_BATCH=off).
        metrics.record_time_to_verdict("single" if job.get("single") else "batch",
                                       time.time() - job["created_at"])
    if (job or {}).get("callback_url"):  # set at submission, never changed: no second read
        deliver_webhook.delay(tenant, job_id)
    return status
