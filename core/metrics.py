"""Every Prometheus metric Vigil exports, for the API processes and the Celery workers alike.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``make run``, docker compose), prometheus_client keeps
each process's values in files in that directory and ``/metrics`` adds them up, so the numbers
cover every uWSGI worker and, when they share the directory, every Celery pool process.
The directory must be empty when the first process starts (``scripts/run.py`` makes it so);
prometheus_client decides whether it is in multiprocess mode when it is first imported, so the
variable must be in the environment before that.

No Flask and no Celery here: the API hooks (api/observability.py) and the task hooks
(tasks/observability.py, tasks/lifecycle.py, tasks/webhooks.py) update these objects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    PlatformCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"
__all__ = ["CONTENT_TYPE_LATEST", "QueueDepthCollector", "exposition", "record_job", "record_jobs"]


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_VAR) or None


# A missing directory would make every increment raise (FileNotFoundError) and fail the task
# or request doing it; create it rather than trust every launcher to.
if multiprocess_dir():
    os.makedirs(multiprocess_dir(), exist_ok=True)

# --- API -----------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "vigil_http_requests", "HTTP requests answered, by method, URL rule and status.",
    ["method", "route", "status"])
HTTP_DURATION = Histogram(
    "vigil_http_request_duration_seconds", "Time to answer an HTTP request, by method and URL rule.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))

# --- pipeline (Celery workers) -------------------------------------------------------------

JOBS = Counter(
    "vigil_jobs", "Jobs the workers finished, by kind (validate, history, train) and final status.",
    ["kind", "status"])
EVENTS_VALIDATED = Counter(
    "vigil_events_validated", "Events judged by finished validation jobs, by verdict.", ["valid"])
WARNINGS = Counter(
    "vigil_warnings", "Warnings in the verdicts of finished validation jobs, by code.", ["code"])
TASK_DURATION = Histogram(
    "vigil_task_duration_seconds", "Time a Celery task ran, by task name (every attempt).",
    ["task"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0))
WEBHOOK_DELIVERIES = Counter(
    "vigil_webhook_deliveries", "Webhook delivery attempts, by outcome (delivered, retrying, failed).",
    ["outcome"])


def record_job(kind: str | None, status: str, summary: Mapping | None) -> None:
    """A job finished: count it and, for a validation job, its verdicts and warnings."""
    JOBS.labels(kind=kind or "unknown", status=status).inc()
    if kind != "validate" or not summary or "valid" not in summary:
        return
    for valid, n in (("true", summary.get("valid", 0)), ("false", summary.get("invalid", 0))):
        if n:
            EVENTS_VALIDATED.labels(valid=valid).inc(n)
    for code, n in (summary.get("warnings") or {}).items():
        WARNINGS.labels(code=code).inc(n)


def record_jobs(kind: str, outcomes: Mapping[str, Sequence], finished: Iterable[str]) -> None:
    """record_job for a micro-batch: outcomes {job_id: (status, summary, ...)}; a job that is
    not among the finished ones was cancelled (or expired) meanwhile."""
    finished = set(finished)
    for job_id, (status, summary, *_) in outcomes.items():
        record_job(kind, status if job_id in finished else "cancelled",
                   summary if job_id in finished else None)


# --- scrape time ---------------------------------------------------------------------------

# Celery's Redis transport keeps a queue in a list of the queue's name, and messages sent with
# a priority in lists named queue + "\x06\x16" + step (kombu.transport.redis: sep, PRIORITY_STEPS).
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
INBOX_LABEL = "events-inbox"


class QueueDepthCollector:
    """``vigil_queue_depth{queue}``: messages waiting in each Celery queue, read from Redis when
    scraped (a value from the moment of the scrape, not one any process has to keep up to date).
    Nothing is reported while Redis does not answer, so /metrics itself still does."""

    def __init__(self, client: redis.Redis, queues: Sequence[str], inbox_key: str | None = None):
        self.client, self.queues, self.inbox_key = client, list(dict.fromkeys(queues)), inbox_key

    def collect(self) -> Iterator[Metric]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue in self.queues:
                for name in (queue, *(f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS)):
                    pipe.llen(name)
            if self.inbox_key:
                pipe.llen(self.inbox_key)
            lengths = pipe.execute()
        except redis.RedisError as exc:
            log.warning("queue depth not scraped: %s", type(exc).__name__)
            return
        family = GaugeMetricFamily("vigil_queue_depth", "Messages waiting in a Celery queue.",
                                   labels=["queue"])
        per_queue = 1 + len(_PRIORITY_STEPS)
        for i, queue in enumerate(self.queues):
            family.add_metric([queue], sum(lengths[i * per_queue:(i + 1) * per_queue]))
        if self.inbox_key:  # single-event jobs waiting for the events worker (tasks.inbox)
            family.add_metric([INBOX_LABEL], lengths[-1])
        yield family


_PLATFORM = PlatformCollector(registry=None)


class _Scrape:
    """Several collectors read as one registry, for generate_latest()."""

    def __init__(self, collectors: Iterable):
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def exposition(*extra_collectors) -> bytes:
    """The Prometheus text for a scrape: every process's values added up in multiprocess mode
    (the default registry would show only the process that answers), else this process's."""
    path = multiprocess_dir()
    # In multiprocess mode, python_info (the same in every process) is the only one of the
    # default collectors kept: process_* and python_gc_* of whichever process answers would
    # pass for the whole service's.
    base = [MultiProcessCollector(None, path=path), _PLATFORM] if path else [REGISTRY]
    return generate_latest(_Scrape([*base, *extra_collectors]))
