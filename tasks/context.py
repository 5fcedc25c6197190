"""What a running task needs: the settings of its app and a Redis connection."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

import redis
from celery import current_app

from core.config import Settings


def settings() -> Settings:
    return current_app.conf.vigil_settings


@lru_cache(maxsize=8)
def _client(url: str) -> redis.Redis:
    # One pool per URL and process; redis-py reconnects by itself after Redis restarts.
    return redis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)


def redis_client(url: str | None = None) -> redis.Redis:
    return _client(url or settings().redis_url)


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
