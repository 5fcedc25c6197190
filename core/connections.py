"""The store's Redis client, made in one place for the API and the workers.

Every process that reads or writes Vigil's state gets its client from store_client(), so how
the store is reached (one Redis, or the primary its sentinels name) is decided here and
nowhere else.
"""

from __future__ import annotations

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel

from core.config import Settings


def store_client(settings: Settings, **options) -> redis.Redis:
    """A client of the store for ``settings``; ``options`` go to redis-py (timeouts, keepalive).

    redis-py keeps a pool per client and reconnects by itself after Redis restarts. With
    sentinels (VIGIL_REDIS_SENTINELS), each new connection asks them where the primary is,
    so after a failover the client reaches the promoted replica; a connection to a primary
    that was demoted is dropped at its first READONLY answer.
    """
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **options)
    # REDIS_URL's database, user and password are the primary's; its host is the sentinels'.
    url = {k: v for k, v in parse_url(settings.redis_url).items()
           if k in ("db", "username", "password")}
    sentinels = Sentinel(settings.redis_sentinels, sentinel_kwargs=settings.sentinel_kwargs())
    return sentinels.master_for(settings.redis_sentinel_master, **url, **options)
