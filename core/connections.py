"""The store's Redis client, made in one place for the API and the workers.

Every process that reads or writes Vigil's state gets its client from store_client(), so how
the store is reached (one Redis, the primary its sentinels name, or a Redis Cluster) is
decided here and nowhere else.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster
from redis.connection import parse_url
from redis.sentinel import Sentinel

from core.config import Settings


def store_client(settings: Settings, **options) -> redis.Redis | RedisCluster:
    """A client of the store for ``settings``; ``options`` go to redis-py (timeouts, keepalive).

    redis-py keeps a pool per client and reconnects by itself after Redis restarts. With
    VIGIL_STORE_CLUSTER=true, a RedisCluster: it learns the cluster's slots from the node in
    VIGIL_STORE_URL and sends each command to the primary of its key's slot (redis-py has no
    URL scheme for a cluster, hence the flag). With VIGIL_STORE_URL alone, the Redis there.
    Else REDIS_URL's Redis (main_redis).
    """
    if settings.store_cluster:
        return RedisCluster.from_url(settings.store_redis_url, **options)
    if settings.store_url:
        return redis.Redis.from_url(settings.store_url, **options)
    return main_redis(settings, **options)


def main_redis(settings: Settings, **options) -> redis.Redis:
    """REDIS_URL's Redis: the store unless VIGIL_STORE_URL names another, and the broker
    unless VIGIL_BROKER_URL does. With sentinels (VIGIL_REDIS_SENTINELS), each new connection
    asks them where the primary is, so after a failover the client reaches the promoted
    replica; a connection to a primary that was demoted is dropped at its first READONLY
    answer.
    """
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **options)
    # REDIS_URL's database, user and password are the primary's; its host is the sentinels'.
    url = {k: v for k, v in parse_url(settings.redis_url).items()
           if k in ("db", "username", "password")}
    sentinels = Sentinel(settings.redis_sentinels, sentinel_kwargs=settings.sentinel_kwargs())
    return sentinels.master_for(settings.redis_sentinel_master, **url, **options)


def broker_redis(settings: Settings, **options) -> redis.Redis | None:
    """A client of Celery's broker where that is a Redis other than the store (a cluster
    deployment's), for /metrics' queue depths; None where the store is the broker or the
    broker is not Redis."""
    if settings.broker_url:
        if settings.broker_url == settings.store_redis_url or not settings.broker_url.startswith(
                ("redis://", "rediss://", "unix://")):
            return None  # the store itself; RabbitMQ; kombu's sentinel:// (not read here)
        return redis.Redis.from_url(settings.broker_url, **options)
    return main_redis(settings, **options) if settings.store_url else None
