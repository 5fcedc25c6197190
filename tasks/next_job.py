"""The default queue's one kind of message: run the next job, fairly across tenants.

The API queues a job per tenant (tasks.job_queue) and sends RUN_TASK; the worker that takes
the message claims the next job by the tenants' virtual times and runs it as the job's own
task would (tasks.lifecycle.run_job with the work of its kind). Messages of the earlier design
(vigil.validate_job and the other job tasks, one per job) are still run by those tasks.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import redis
from celery import shared_task

from core.config import Settings
from tasks import job_queue
from tasks.context import redis_client, settings, through_outages
from tasks.history import import_history, train_now
from tasks.lifecycle import JOB_TASK_OPTIONS, JobError, Work, run_job
from tasks.replay import backtest, revalidate
from tasks.validate import check_events

log = logging.getLogger(__name__)

# What each kind of job does (job_queue.TASK_OF_KIND names the same work as a task of its own).
WORK: dict[str, Work] = {"validate": check_events, "history": import_history, "train": train_now,
                         "backtest": backtest, "revalidate": revalidate}


def by_kind(r: redis.Redis, cfg: Settings, tenant: str, job: dict[str, Any], *,
            ran: dict[str, Any]) -> tuple[dict, list | None]:
    """The work of the job's kind; ``ran`` gets the kind (for the task's log line)."""
    ran["kind"] = job.get("kind")
    work = WORK.get(job.get("kind", ""))
    if work is None:
        raise JobError(f"unknown kind of job: {job.get('kind')!r}")
    return work(r, cfg, tenant, job)


@shared_task(name=job_queue.RUN_TASK, bind=True, **JOB_TASK_OPTIONS)
def run_next_job(self, tenant: str | None = None, job_id: str | None = None) -> dict | None:
    """Claim the next job and run it; returns the job run ({tenant, job_id, kind, status}:
    the task's log line and duration metric name that job and its kind's task, see
    tasks.observability), or None if no job was waiting.

    (tenant, job_id): the job whose submission sent this message, for Flower and the queue's
    age metric; the job run is the next one in fair order, which may be another.
    """
    r, cfg = redis_client(), settings()
    until = time.time() + cfg.visibility_timeout_s
    claimed = through_outages(partial(job_queue.next_job, r, cfg, self.request.id, until),
                              "claim a job")
    if claimed is None:
        return None
    owner, claimed_id = claimed
    ran: dict[str, Any] = {"tenant": owner, "job_id": claimed_id}
    status = run_job(owner, claimed_id, partial(by_kind, ran=ran))
    through_outages(partial(job_queue.done, r, owner, claimed_id, self.request.id), "release job")
    return {**ran, "status": status}


@shared_task(name="vigil.sweep_jobs", ignore_result=True)
def sweep_jobs() -> None:
    """Beat: jobs whose claim lapsed (their worker and its message are gone) go back first in
    line, each with a new message; tenants with jobs waiting are put back in the ring; and
    jobs that wait while none is handed out (their messages lost) get messages again."""
    r, cfg = redis_client(), settings()
    now = time.time()
    back = job_queue.reclaim_lapsed(r, cfg.tenants, now)
    if back:
        log.warning("jobs reclaimed from a worker that stopped", extra={"jobs": len(back)})
    for tenant, job_id in back:
        run_next_job.delay(tenant, job_id)
    resend = job_queue.stalled(r, now)
    if resend:
        log.warning("jobs waiting and none handed out: messages sent again",
                    extra={"messages": resend, "stalled_s": job_queue.STALL_S})
    for _ in range(resend):
        run_next_job.delay()
