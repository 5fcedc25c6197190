"""What a running task needs: the settings of its app and a Redis connection."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from celery import current_app

from core.config import Settings
from core.connections import store_client


def settings() -> Settings:
    return current_app.conf.vigil_settings


# One client (and so one connection pool) per app's settings in this process, by identity:
# Settings holds mappings, so it cannot be a cache key itself.
_clients: dict[int, tuple[Settings, redis.Redis]] = {}


def redis_client() -> redis.Redis:
    """The store's client of this worker process."""
    cfg = settings()
    found = _clients.get(id(cfg))
    if found is None or found[0] is not cfg:
        found = _clients[id(cfg)] = (cfg, store_client(
            cfg, health_check_interval=30, socket_keepalive=True))
    return found[1]


T = TypeVar("T")
log = logging.getLogger(__name__)
# How long a task waits for Redis to come back before giving up (seconds).
REDIS_OUTAGE_LIMIT_S = 120.0


def through_outages(step: Callable[[], T], what: str = "redis step") -> T:
    """Run ``step``, waiting out a Redis outage (backoff 0.5 s doubling to 10 s) up to
    REDIS_OUTAGE_LIMIT_S.

    Why not Celery's autoretry: its retry publishes a new message to the broker, which is
    Redis, which is down; the original message is then acknowledged and the job is lost.
    Waiting here keeps the message unacknowledged (acks_late): if the worker dies meanwhile,
    the broker redelivers it. Steps must be safe to run again (merges are idempotent).
    """
    deadline = time.monotonic() + REDIS_OUTAGE_LIMIT_S
    delay = 0.5
    while True:
        try:
            return step()
        except redis.RedisError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("redis unavailable; waiting", extra={"step": what, "error": str(exc),
                                                             "retry_in_s": delay})
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
