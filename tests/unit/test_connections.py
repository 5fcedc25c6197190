"""store_client: one Redis from REDIS_URL, or the primary the sentinels name (no server asked:
redis-py connects on the first command)."""

from redis.sentinel import SentinelConnectionPool

from core.config import Settings
from core.connections import store_client


def test_a_plain_redis_from_redis_url():
    client = store_client(Settings.from_env({"REDIS_URL": "redis://:pw@10.0.0.5:6380/2"}),
                          socket_timeout=5)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "10.0.0.5", 6380, 2, "pw")
    assert kwargs["socket_timeout"] == 5


def test_with_sentinels_the_primary_they_name_with_redis_urls_database_and_password():
    settings = Settings.from_env({
        "REDIS_URL": "redis://:pw@unused:1/2", "VIGIL_REDIS_SENTINELS": "s1:26379,s2:26380",
        "VIGIL_REDIS_SENTINEL_MASTER": "mymaster", "VIGIL_REDIS_SENTINEL_PASSWORD": "spw"})
    client = store_client(settings, socket_timeout=5)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.is_master
    assert pool.service_name == "mymaster"
    kwargs = pool.connection_kwargs
    # The primary's database and password are REDIS_URL's; its host is never taken from it.
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (2, "pw", 5)
    assert "host" not in kwargs
    asked = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in asked] == [("s1", 26379), ("s2", 26380)]
    # The sentinels' own password, and a bounded wait on each.
    assert all(s.connection_pool.connection_kwargs["password"] == "spw" for s in asked)
    assert all(s.connection_pool.connection_kwargs["socket_timeout"] == 1.0 for s in asked)
