"""Celery signal handlers: JSON logs instead of Celery's, and per task a duration and a log line.

Imported by tasks.create_celery, so the handlers are connected in every process that loads the
app (worker, its pool processes, beat, Flower) before Celery sets up logging. The signals only
fire where tasks run or logging is set up; in the API they are inert.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from typing import Any

from celery.signals import (
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    worker_process_init,
)

from core import logs, metrics
from core.gctuning import tune_gc
from tasks import inbox, job_queue

log = logging.getLogger("vigil.task")

# Task arguments worth a log field (tasks take ids, never payloads or secrets).
LOGGED_ARGS = ("tenant", "job_id", "event_type")

# task id -> (perf_counter at start, error if it failed); per pool process, one task at a time.
_running: dict[str, list[Any]] = {}


# Beat's periodic housekeeping, every few seconds even while idle: their trace lines
# (received, succeeded, and ours when they found nothing to do) are DEBUG, not INFO, so a
# console or log at INFO shows requests and jobs rather than a sweep every 5 s.
HOUSEKEEPING_TASKS = frozenset({"vigil.sweep_events", "vigil.sweep_jobs", "vigil.send_due_webhooks",
                                "vigil.retrain_due"})
_TRACE_LOGGERS = frozenset({"celery.worker.strategy", "celery.app.trace"})


class QuietHousekeeping(logging.Filter):
    """Celery's "received" and "succeeded" INFO lines of HOUSEKEEPING_TASKS, as DEBUG: shown
    only where the root logger's level is DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or record.name not in _TRACE_LOGGERS:
            return True
        data = getattr(record, "data", None)
        if not isinstance(data, dict) or data.get("name") not in HOUSEKEEPING_TASKS:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


@setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Connected, so Celery leaves the root logger alone: JSON lines instead of its format.
    VIGIL_LOG_LEVEL wins; without it the level is the worker's --loglevel."""
    logs.configure_logging(None if os.environ.get(logs.LOG_LEVEL_VAR, "").strip() else loglevel)
    for handler in logging.getLogger().handlers:
        handler.addFilter(QuietHousekeeping())


def task_fields(task: Any, args: Any, kwargs: Any) -> dict[str, Any]:
    """tenant, job_id, event_type: whichever of them the task takes, by parameter name."""
    try:
        bound = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {})).arguments
    except (TypeError, ValueError):
        return {}
    return {name: bound[name] for name in LOGGED_ARGS if isinstance(bound.get(name), str)}


@worker_process_init.connect
def _process_started(**_: Any) -> None:
    tune_gc()


@task_prerun.connect
def _prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _running[task_id] = [time.perf_counter(), None]


@task_failure.connect
def _failure(task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
    if task_id in _running and exception is not None:
        _running[task_id][1] = f"{type(exception).__name__}: {exception}"


@task_postrun.connect
def _postrun(task_id: str | None = None, task: Any = None, args: Any = None, kwargs: Any = None,
             state: str | None = None, retval: Any = None, **_: Any) -> None:
    started, error = _running.pop(task_id, (None, None)) if task_id else (None, None)
    name = getattr(task, "name", None) or "unknown"
    ran = retval if name == job_queue.RUN_TASK and isinstance(retval, dict) else None
    if ran:
        # The job it ran, under its kind's task, as when each job had a task of its own (the
        # message's own arguments name the job whose submission sent it).
        name = job_queue.TASK_OF_KIND.get(ran.get("kind") or "", name)
        args, kwargs = (ran.get("tenant"), ran.get("job_id")), {}
    duration = time.perf_counter() - started if started is not None else None
    if duration is not None:
        metrics.TASK_DURATION.labels(task=name).observe(duration)
    fields: dict[str, Any] = {"event": "task", "task": name, "task_id": task_id,
                              **task_fields(task, args, kwargs), "state": state,
                              "duration_ms": round(duration * 1000, 2) if duration is not None else None}
    if name == inbox.WAKE_TASK and isinstance(retval, int):
        fields["jobs"] = retval  # single-event jobs the drain judged
    if error:
        fields["error"] = error
    if ran:
        fields["via"] = job_queue.RUN_TASK
    if state == "FAILURE":
        level = logging.WARNING
    elif (name in HOUSEKEEPING_TASKS or name == job_queue.RUN_TASK) and not retval:
        level = logging.DEBUG  # a sweep that found nothing to do
    else:
        level = logging.INFO
    log.log(level, "%s %s %s", name, task_id, state, extra=fields)
