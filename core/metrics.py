"""Every Prometheus metric Vigil exports, for the API processes and the Celery workers alike.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``make run``, docker compose), prometheus_client keeps
each process's values in files in that directory and ``/metrics`` adds them up, so the numbers
cover every API worker and, when they share the directory, every Celery pool process.
The directory must be empty when the first process starts (``scripts/run.py`` makes it so);
prometheus_client decides whether it is in multiprocess mode when it is first imported, so the
variable must be in the environment before that.

No Flask and no Celery here: the API hooks (api/observability.py) and the task hooks
(tasks/observability.py, tasks/lifecycle.py, tasks/webhooks.py) update these objects.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping, Sequence

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from core import keys

log = logging.getLogger(__name__)

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"
__all__ = ["CONTENT_TYPE_LATEST", "QueueDepthCollector", "WorkersCollector", "exposition",
           "record_job", "record_jobs", "record_time_to_verdict"]


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
# event_type: one series per type name (summed over tenants) and verdict, for the invalid
# rate per type; type names are the tenants' own, so their number is what tenants make it.
EVENTS_VALIDATED = Counter(
    "vigil_events_validated", "Events judged by finished validation jobs, by event type and verdict.",
    ["event_type", "valid"])
WARNINGS = Counter(
    "vigil_warnings", "Warnings in the verdicts of finished validation jobs, by code.", ["code"])
TASK_DURATION = Histogram(
    "vigil_task_duration_seconds", "Time a Celery task ran, by task name (every attempt).",
    ["task"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0))
# From the job's creation (created_at in its hash, set when the API stored it) to its verdicts
# stored, for succeeded validation jobs: what a client waits, queueing included. kind: single
# (POST /v1/events/validate) or batch (POST /v1/jobs). Buckets from 5 ms to 60 s.
TIME_TO_VERDICT = Histogram(
    "vigil_time_to_verdict_seconds",
    "Submit to verdicts stored, for succeeded validation jobs, by kind (single, batch).", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
VERDICT_KINDS = ("single", "batch")
WEBHOOK_DELIVERIES = Counter(
    "vigil_webhook_deliveries", "Webhook delivery attempts, by outcome (delivered, retrying, failed).",
    ["outcome"])


def record_job(kind: str | None, status: str, summary: Mapping | None,
               results: Sequence[Mapping] | None = None) -> None:
    """A job finished: count it and, for a validation job, its verdicts (per event type, from
    its results) and warnings."""
    JOBS.labels(kind=kind or "unknown", status=status).inc()
    if kind != "validate" or not summary or "valid" not in summary:
        return
    verdicts = Tally((r.get("event_type") or "unknown", "true" if r.get("valid") else "false")
                     for r in results or ())
    for (event_type, valid), n in verdicts.items():
        EVENTS_VALIDATED.labels(event_type=event_type, valid=valid).inc(n)
    for code, n in (summary.get("warnings") or {}).items():
        WARNINGS.labels(code=code).inc(n)


def record_jobs(kind: str, outcomes: Mapping[str, Sequence], finished: Iterable[str]) -> None:
    """record_job for a micro-batch: outcomes {job_id: (status, summary, results, ...)}; a job
    that is not among the finished ones was cancelled (or expired) meanwhile."""
    finished = set(finished)
    for job_id, (status, summary, results, *_) in outcomes.items():
        done = job_id in finished
        record_job(kind, status if done else "cancelled", summary if done else None,
                   results if done else None)


def record_time_to_verdict(kind: str, seconds: float) -> None:
    """A validation job of this kind (VERDICT_KINDS) succeeded ``seconds`` after it was stored."""
    TIME_TO_VERDICT.labels(kind=kind).observe(max(seconds, 0.0))  # clocks of two hosts


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

    def __init__(self, client: redis.Redis, queues: Sequence[str],
                 inboxes: Mapping[str, str] | None = None):
        self.client, self.queues, self.inboxes = client, list(dict.fromkeys(queues)), inboxes

    def collect(self) -> Iterator[Metric]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue in self.queues:
                for name in (queue, *(f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS)):
                    pipe.llen(name)
            for key in (self.inboxes or {}).values():
                pipe.llen(key)
            lengths = pipe.execute()
        except redis.RedisError as exc:
            log.warning("queue depth not scraped: %s", type(exc).__name__)
            return
        family = GaugeMetricFamily("vigil_queue_depth", "Messages waiting in a Celery queue.",
                                   labels=["queue"])
        per_queue = 1 + len(_PRIORITY_STEPS)
        for i, queue in enumerate(self.queues):
            family.add_metric([queue], sum(lengths[i * per_queue:(i + 1) * per_queue]))
        if self.inboxes is not None:  # single-event jobs waiting, every tenant's (tasks.inbox)
            family.add_metric([INBOX_LABEL], sum(lengths[len(self.queues) * per_queue:]))
        yield family


def _message_job(raw: bytes) -> tuple[str, str] | None:
    """(tenant, job id) a Celery message (protocol 2, JSON) was sent for, if its task takes
    them (job tasks do; the events worker's wake-up does not)."""
    try:
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if len(args) == 2 and all(isinstance(a, str) for a in args):
        return args[0], args[1]
    return None


class QueueAgeCollector:
    """``vigil_queue_oldest_age_seconds{queue}``: how long the oldest job waiting in each queue
    has waited, from its job's created_at, by Redis's clock; 0 for an empty queue. A queue whose
    oldest message names no job (a wake-up; the inbox has the single events) is left out.
    Celery's Redis transport pushes on the left and pops on the right: the oldest is last."""

    def __init__(self, client: redis.Redis, queues: Sequence[str],
                 inboxes: Mapping[str, str] | None = None):
        self.client, self.queues, self.inboxes = client, list(dict.fromkeys(queues)), inboxes

    def collect(self) -> Iterator[Metric]:
        inboxes = dict(self.inboxes or {})
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.time()
            for queue in self.queues:
                pipe.lindex(queue, -1)
            for key in inboxes.values():
                pipe.lindex(key, 0)
            (seconds, micros), *oldest = pipe.execute()
            named: list[tuple[str, tuple[str, str]]] = []
            for queue, raw in zip(self.queues, oldest):
                job = _message_job(raw) if raw else None
                if job:
                    named.append((queue, job))
            # Each tenant's inbox is oldest first: the oldest of their heads is the inbox's.
            heads = oldest[len(self.queues):]
            named += [(INBOX_LABEL, (tenant, raw.decode()))
                      for tenant, raw in zip(inboxes, heads) if raw]
            for _, (tenant, job_id) in named:
                pipe.hget(keys.job(tenant, job_id), "created_at")
            created = pipe.execute() if named else []
        except redis.RedisError as exc:
            log.warning("queue age not scraped: %s", type(exc).__name__)
            return
        now = seconds + micros / 1e6
        family = GaugeMetricFamily("vigil_queue_oldest_age_seconds",
                                   "Seconds the oldest job waiting in a queue has waited.",
                                   labels=["queue"])
        waiting: dict[str, float] = {}
        for (label, _), at in zip(named, created):
            if at:  # the job expired or was never stored: unknown
                waiting[label] = min(waiting.get(label, math.inf), float(at))
        empty = {q for q, raw in zip(self.queues, oldest) if not raw}
        if self.inboxes is not None and not any(oldest[len(self.queues):]):
            empty.add(INBOX_LABEL)
        for label in [*self.queues, *([INBOX_LABEL] if self.inboxes is not None else [])]:
            if label in empty:
                family.add_metric([label], 0.0)
            elif label in waiting:
                family.add_metric([label], max(now - waiting[label], 0.0))
        yield family


# A worker counts as alive while its last heartbeat is this recent (it beats every 10 s).
WORKER_STALE_S = 30.0


class WorkersCollector:
    """``vigil_workers_alive{queue}``: workers whose heartbeat (tasks.heartbeat) is recent, per
    queue they consume, by Redis's clock; 0 for a known queue nobody consumes, which an alert
    can see (a series that vanished would need absent())."""

    def __init__(self, client: redis.Redis, queues: Sequence[str]):
        self.client, self.queues = client, list(dict.fromkeys(queues))

    def collect(self) -> Iterator[Metric]:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.time()
            pipe.zrange(keys.workers(), 0, -1, withscores=True)
            (seconds, micros), beats = pipe.execute()
        except redis.RedisError as exc:
            log.warning("workers not scraped: %s", type(exc).__name__)
            return
        now = seconds + micros / 1e6
        alive = Tally(member.decode().partition(" ")[0] for member, at in beats
                      if now - at <= WORKER_STALE_S)
        family = GaugeMetricFamily("vigil_workers_alive",
                                   "Workers with a recent heartbeat, per queue they consume.",
                                   labels=["queue"])
        for queue in dict.fromkeys([*self.queues, *alive]):
            family.add_metric([queue], alive.get(queue, 0))
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


def process_metrics() -> Iterator[Metric]:
    """What exposition() reports before any extra collector: every process's values in
    multiprocess mode, else this process's (api.ui reads the time to verdict from it)."""
    path = multiprocess_dir()
    yield from (MultiProcessCollector(None, path=path) if path else REGISTRY).collect()


def worker_registry() -> CollectorRegistry:
    """The registry a worker's own metrics server (tasks.metrics_server) serves: its pool
    processes' values added up in multiprocess mode, else the default registry."""
    path = multiprocess_dir()
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    registry.register(_PLATFORM)
    return registry
