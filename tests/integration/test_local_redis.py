"""The Redis `make run` starts for itself (core.localredis; the tests' and `make bench`'s too)
persists as docs/operations.md says: an append-only file, fsync every second, no snapshots, and the
file rewritten only once it has grown past 1 GB (a rewrite forks Redis and stalls clients)."""

from __future__ import annotations

import redis


def test_vigils_own_redis_persists_as_documented(redis_server):
    config = redis.Redis.from_url(redis_server.url, decode_responses=True).config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["save"] == ""
    assert int(config["auto-aof-rewrite-min-size"]) == 1024 ** 3
