"""What a running task needs: the settings of its app and a Redis connection."""

from __future__ import annotations

from functools import lru_cache

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
