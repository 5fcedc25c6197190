"""Upgrading a store written with the names of before hash tags (tasks.keymigration): a Redis
seeded with scheme-1 keys keeps its models, baselines, history, jobs and counts under the new
names, on one Redis and on a cluster, and a second run changes nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from cluster import ClusterServer
from workers import ROOT, RedisServer, Worker

from core import keys
from core.config import Settings
from tasks import keymigration

JOB = "0123456789abcdef0123456789abcdef"
IMPORT = "fedcba9876543210fedcba9876543210"
TTL_S = 3600


@pytest.fixture(scope="module", params=["redis", "cluster"])
def server(request, tmp_path_factory) -> Iterator[RedisServer | ClusterServer]:
    kind = ClusterServer if request.param == "cluster" else RedisServer
    found = kind(tmp_path_factory.mktemp(f"migration-{request.param}"))
    found.start()
    yield found
    found.stop()


def seed_scheme_1(r) -> None:
    """What a store of scheme 1 held: one of every kind of name."""
    r.hset("vigil:acme:baseline:checkout", "amount", "3,100,0,50")
    r.hset("vigil:acme:baseline:pay:card", "amount", "2,10,0,1")  # a type with ':'
    r.rpush("vigil:acme:history:checkout", b'{"ts":1,"v":{"amount":99}}',
            b'{"ts":2,"v":{"amount":101}}')
    r.set("vigil:acme:history-new:checkout", 2)
    r.hset("vigil:acme:model:checkout", mapping={"version": 4, "blob": b"\x00skops"})
    r.hset("vigil:acme:settings:checkout", mapping={"version": 1, "overrides": "{}"})
    r.hset("vigil:acme:event-types", mapping={"checkout": 500, "pay:card": 2})
    r.hset("vigil:acme:invalid-counts", mapping={"checkout": 7, "refund": 1})
    r.hset(f"vigil:acme:job:{JOB}", mapping={"status": "running", "event_type": "checkout"})
    r.expire(f"vigil:acme:job:{JOB}", TTL_S)
    r.set(f"vigil:acme:job:{JOB}:events", b"[]", ex=TTL_S)
    r.hset(f"vigil:acme:job:{JOB}:partial", mapping={f"{JOB}:checkout:0": b"zipped-a",
                                                     f"{JOB}:pay:card:5": b"zipped-b"})
    r.expire(f"vigil:acme:job:{JOB}:partial", TTL_S)
    r.set(f"vigil:acme:applied:{JOB}:checkout:0", 1, ex=TTL_S)
    r.hset(f"vigil:acme:job:{IMPORT}", mapping={"status": "running", "event_type": "checkout"})
    r.set(f"vigil:acme:applied:{IMPORT}:5000", 1, ex=TTL_S)  # a history import's batch
    r.lpush("vigil:acme:recent-jobs", JOB, IMPORT)
    r.set("vigil:acme:idempotency:abc123", b"{}", ex=TTL_S)
    r.hset("vigil:acme:webhook-secrets", "current", "whsec_x")
    r.rpush("vigil:events-inbox", f"acme:{JOB}")
    r.hset("vigil:pending-events", f"acme:{JOB}", "1.0 10")
    r.sadd("vigil:known-types", "acme:checkout")
    # Written under the new name already (say, before the migration ran): left as it is.
    r.hset(keys.type_settings("acme", "checkout"), mapping={"version": 2, "overrides": "{}"})


def test_scheme_1_store_moves_to_the_new_names_once(server):
    r = server.client()
    seed_scheme_1(r)
    moved = keymigration.migrate(r)

    assert r.hget(keys.baseline("acme", "checkout"), "amount") == b"3,100,0,50"
    assert r.hget(keys.baseline("acme", "pay:card"), "amount") == b"2,10,0,1"
    assert r.llen(keys.history("acme", "checkout")) == 2
    assert r.get(keys.history_since_training("acme", "checkout")) == b"2"
    assert r.hget(keys.model("acme", "checkout"), "blob") == b"\x00skops"
    assert r.hgetall(keys.type_counts("acme", "checkout")) == {b"accepted": b"500",
                                                               b"invalid": b"7"}
    assert r.hgetall(keys.type_counts("acme", "refund")) == {b"accepted": b"0", b"invalid": b"1"}
    assert r.smembers(keys.tenant_types("acme")) == {b"checkout", b"pay:card", b"refund"}
    assert {b"acme:checkout", b"acme:pay:card", b"acme:refund"} <= r.smembers(keys.known_types())
    assert r.hget(keys.job("acme", JOB), "status") == b"running"
    assert 0 < r.ttl(keys.job("acme", JOB)) <= TTL_S  # expiries move with the keys
    assert r.get(keys.job_events("acme", JOB)) == b"[]"
    # A job's partial verdicts split by event type, each into its type's slot.
    assert r.hgetall(keys.job_partial("acme", "checkout", JOB)) == {
        f"{JOB}:checkout:0".encode(): b"zipped-a"}
    assert r.hgetall(keys.job_partial("acme", "pay:card", JOB)) == {
        f"{JOB}:pay:card:5".encode(): b"zipped-b"}
    assert 0 < r.ttl(keys.job_partial("acme", "checkout", JOB)) <= TTL_S
    assert r.exists(keys.batch_applied("acme", "checkout", f"{JOB}:checkout:0"))
    assert r.exists(keys.batch_applied("acme", "checkout", f"{IMPORT}:5000"))
    assert r.lrange(keys.recent_jobs("acme"), 0, -1) == [IMPORT.encode(), JOB.encode()]
    assert r.get(keys.idempotency("acme", "abc123")) == b"{}"
    assert r.hget(keys.webhook_secrets("acme"), "current") == b"whsec_x"
    assert r.lrange(keys.events_inbox(), 0, -1) == [f"acme:{JOB}".encode()]
    assert r.hget(keys.pending_events(), f"acme:{JOB}") == b"1.0 10"
    # The settings written under the new name win; the old ones are kept, not overwritten.
    assert r.hget(keys.type_settings("acme", "checkout"), "version") == b"2"
    assert r.hget("vigil:acme:settings:checkout", "version") == b"1"
    assert moved["kept"] == 1 and moved["counts"] == 3 and moved["unknown"] == 0

    left = sorted(k.decode() for k in r.scan_iter(match="vigil:acme:*"))
    assert left == ["vigil:acme:settings:checkout"]
    assert r.hlen(keys.legacy_event_types("acme")) == 0

    again = keymigration.migrate(r)
    assert again == {"kept": 1}  # nothing moved or counted twice
    assert r.hget(keys.type_counts("acme", "checkout"), "accepted") == b"500"


def test_ensure_migrates_once_and_then_only_reads_the_scheme(server):
    r = server.client()
    r.hset("vigil:zeta:baseline:login", "ms", "1,5,0,0")
    first = keymigration.ensure(r)
    assert first is not None and first["moved"] >= 1
    assert r.get(keys.key_scheme()) == str(keys.SCHEME).encode()
    assert r.hget(keys.baseline("zeta", "login"), "ms") == b"1,5,0,0"
    r.hset("vigil:zeta:baseline:later", "ms", "1,5,0,0")  # not looked for once migrated
    assert keymigration.ensure(r) is None
    assert r.exists("vigil:zeta:baseline:later")
    assert not r.exists(keys.key_scheme_lock())


def test_the_command_migrates_a_store(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        r = server.client()
        r.hset("vigil:acme:model:checkout", "version", 3)
        done = subprocess.run([sys.executable, "-m", "tasks.keymigration"], cwd=ROOT,
                              env={"REDIS_URL": server.url, "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert '"moved": {"moved": 1}' in done.stdout
        assert r.hget(keys.model("acme", "checkout"), "version") == b"3"
    finally:
        server.stop()


def test_a_worker_migrates_the_store_before_it_takes_a_task(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    worker = None
    try:
        r = server.client()
        r.hset("vigil:acme:baseline:checkout", "amount", "3,100,0,50")
        r.hset("vigil:acme:event-types", "checkout", 3)
        env = {"REDIS_URL": server.url, "VIGIL_API_KEYS": "acme:key-acme-test"}
        worker = Worker(env, tmp_path / "worker.log", role="events")
        worker.start(Settings.from_env(env))  # answers a ping: it consumes
        assert r.get(keys.key_scheme()) == str(keys.SCHEME).encode()
        assert r.hget(keys.baseline("acme", "checkout"), "amount") == b"3,100,0,50"
        assert r.hget(keys.type_counts("acme", "checkout"), "accepted") == b"3"
        assert not r.exists("vigil:acme:baseline:checkout")
    finally:
        if worker:
            worker.stop()
        server.stop()
