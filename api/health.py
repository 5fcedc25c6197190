"""Liveness, readiness and metrics: no auth, so orchestrators and Prometheus can reach them."""

from __future__ import annotations

import flask
import redis
from flask.views import MethodView
from flask_smorest import Blueprint

from api.services import services
from core import keys
from core.metrics import (
    CONTENT_TYPE_LATEST,
    QueueAgeCollector,
    QueueDepthCollector,
    WorkersCollector,
    exposition,
)

blp = Blueprint("health", __name__, description="Health and metrics.")


def celery_queues(conf) -> list[str]:
    """The queues tasks are sent to: the default one, declared ones, those task_routes names."""
    names = [conf.task_default_queue, *(q.name for q in conf.task_queues or ())]
    routes = conf.task_routes or ()
    for table in [routes] if isinstance(routes, dict) else routes:
        if isinstance(table, dict):
            names += [r["queue"] for r in table.values() if isinstance(r, dict) and "queue" in r]
    return list(dict.fromkeys(names))


def tenant_inboxes(r: redis.Redis) -> dict[str, str]:
    """Tenant -> inbox key of the tenants with single events waiting (tasks.inbox's ring);
    none readable while Redis does not answer (the collectors then report nothing)."""
    try:
        return {t.decode(): keys.tenant_inbox(t.decode()) for t in r.smembers(keys.events_ring())}
    except redis.RedisError:
        return {}


@blp.route("/healthz")
class Healthz(MethodView):
    @blp.response(200)
    def get(self):
        """The API process is up"""
        return {"status": "ok"}


@blp.route("/readyz")
class Readyz(MethodView):
    @blp.response(200)
    @blp.alt_response(503, description="Redis or every worker is unreachable")
    def get(self):
        """Ready when Redis answers and at least one worker answers a ping"""
        svc = services()
        checks = {}
        try:
            checks["redis"] = bool(svc.redis.ping())
        except redis.RedisError as exc:
            checks["redis"] = False
            checks["redis_error"] = type(exc).__name__
        workers = []
        if checks["redis"]:
            try:
                workers = svc.celery.control.ping(timeout=1.0) or []
            except Exception as exc:  # the broker may fail in many ways; readiness says so
                checks["workers_error"] = type(exc).__name__
        checks["workers"] = len(workers)
        ready = checks["redis"] and checks["workers"] > 0
        return {"status": "ready" if ready else "unready", **checks}, 200 if ready else 503


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.response(200, {"type": "string"}, content_type=CONTENT_TYPE_LATEST)
    def get(self):
        """Prometheus metrics

        With PROMETHEUS_MULTIPROC_DIR set, the sum over every process writing to that directory
        (all API workers; the Celery workers too when they share it, as in `make run`).
        `vigil_queue_depth`, `vigil_queue_oldest_age_seconds` and `vigil_workers_alive` are
        read from Redis at each scrape.
        """
        svc = services()
        # Celery queues are read from Redis lists through the store's client: only when the
        # broker is the store's own Redis (plain or through its sentinels). The single-event
        # inboxes are in the job store, whatever the broker.
        queues = celery_queues(svc.celery.conf) if svc.settings.broker_in_store else []
        inboxes = tenant_inboxes(svc.redis)
        body = exposition(QueueDepthCollector(svc.redis, queues, inboxes=inboxes,
                                              broker=svc.broker),
                          QueueAgeCollector(svc.redis, queues, inboxes=inboxes, broker=svc.broker),
                          WorkersCollector(svc.redis, celery_queues(svc.celery.conf)))
        return flask.Response(body, mimetype=CONTENT_TYPE_LATEST)
