"""The store's Redis client, made in one place for the API and the workers.

Every process that reads or writes Vigil's state gets its client from store_client(), so how
the store is reached (one Redis, or a Redis Cluster) is decided here and nowhere else.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from core.config import Settings


def store_client(settings: Settings, **options) -> redis.Redis | RedisCluster:
    """A client of the store for ``settings``; ``options`` go to redis-py (timeouts, keepalive).

    redis-py keeps a pool per client and reconnects by itself after Redis restarts. With
    VIGIL_STORE_CLUSTER=true, a RedisCluster: it learns the cluster's slots from the node in
    VIGIL_STORE_URL and sends each command to the primary of its key's slot (redis-py has no
    URL scheme for a cluster, hence the flag).
    """
    if settings.store_cluster:
        return RedisCluster.from_url(settings.store_redis_url, **options)
    return redis.Redis.from_url(settings.store_redis_url, **options)


def broker_redis(settings: Settings, **options) -> redis.Redis | None:
    """A client of Celery's broker where that is a Redis other than the store (a cluster
    deployment's), for /metrics' queue depths; None where the store is the broker or the
    broker is not Redis."""
    broker = settings.broker_url or settings.redis_url
    if broker == settings.store_redis_url or not broker.startswith(
            ("redis://", "rediss://", "unix://")):
        return None
    return redis.Redis.from_url(broker, **options)
