"""The store's Redis client, made in one place for the API and the workers.

Every process that reads or writes Vigil's state gets its client from store_client(), so how
the store is reached (one Redis today) is decided here and nowhere else.
"""

from __future__ import annotations

import redis

from core.config import Settings


def store_client(settings: Settings, **options) -> redis.Redis:
    """A client of the store for ``settings``; ``options`` go to redis-py (timeouts, keepalive).

    redis-py keeps a pool per client and reconnects by itself after Redis restarts.
    """
    return redis.Redis.from_url(settings.redis_url, **options)
