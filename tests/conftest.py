"""Fixtures: a private Redis, a real Celery worker and the API on a real port.

Nothing here touches a Redis someone else uses: each test session starts its own
redis-server on a free port with its files in a temp dir, and stops it at the end.
With VIGIL_TEST_STORE=cluster the store is a private three-primary Redis Cluster instead
(tests/cluster.py) and Celery's broker a private plain Redis beside it, as a cluster
deployment has them (kombu has no cluster transport); `make test` runs the store's
integration tests that way too.
Unit tests of ml/ and tasks/verdicts.py ask for none of these and run without servers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cluster import ClusterServer
from helpers import KEYS, WEBHOOK_SECRET, client_for
from werkzeug.serving import make_server
from workers import RedisServer, Worker

from core.config import Settings
from core.localredis import free_port

ROOT = Path(__file__).resolve().parent.parent

# Prometheus multiprocess mode, as `make run` has it: the API (in this process) and the workers
# write to one directory, so the API's /metrics shows the workers' metrics too. prometheus_client
# picks the mode when it is first imported, by whichever module imports it first, so the
# variable is set here, before any test module is imported, not in a fixture.
PROMETHEUS_DIR = tempfile.mkdtemp(prefix="vigil-prometheus-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_DIR
atexit.register(shutil.rmtree, PROMETHEUS_DIR, ignore_errors=True)


# The store the session's tests run against: "redis" (one Redis, also the broker) or "cluster".
TEST_STORE = os.environ.get("VIGIL_TEST_STORE", "redis")
if TEST_STORE not in ("redis", "cluster"):
    raise RuntimeError(f"VIGIL_TEST_STORE={TEST_STORE!r}: 'redis' or 'cluster'")


@pytest.fixture(scope="session")
def store_kind() -> str:
    """What the session's store is: "redis" or "cluster" (VIGIL_TEST_STORE)."""
    return TEST_STORE


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer | ClusterServer]:
    """The store: its client() is what the API and the workers use (core/connections.py)."""
    server = (ClusterServer if TEST_STORE == "cluster" else RedisServer)(
        tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory) -> Iterator[ClusterServer | None]:
    """With a cluster as the store, a cluster of the module's own, for tests that keep their
    keys apart from the workers' (on one Redis they use another database; a cluster has one
    database only); None otherwise."""
    if TEST_STORE != "cluster":
        yield None
        return
    server = ClusterServer(tmp_path_factory.mktemp("private-cluster"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def broker_server(redis_server, tmp_path_factory) -> Iterator[RedisServer]:
    """Celery's broker: the store's Redis itself, or beside a cluster a Redis of its own."""
    if TEST_STORE != "cluster":
        yield redis_server
        return
    server = RedisServer(tmp_path_factory.mktemp("broker"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vigil_env(redis_server, broker_server) -> dict[str, str]:
    """The environment both the worker and the API read their settings from."""
    store = ({"VIGIL_STORE_URL": redis_server.url, "VIGIL_STORE_CLUSTER": "true"}
             if TEST_STORE == "cluster" else {})
    return {
        "REDIS_URL": broker_server.url,
        **store,
        "VIGIL_API_KEYS": ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items()),
        "VIGIL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "VIGIL_WEBHOOK_SCHEDULE": "0.2",
        "VIGIL_WEBHOOK_MAX_ATTEMPTS": "4",
        # Each delivery attempt's overall limit: short, so the slow-receiver tests are quick.
        "VIGIL_WEBHOOK_TIMEOUT": "4",
        "VIGIL_RETRAIN_INTERVAL": "3600",
        # Not the 24 h default, so a test can tell the setting is what jobs expire by.
        "VIGIL_JOB_TTL": "7200",
        # The webhook tests' receiver listens on loopback; callbacks elsewhere stay refused.
        "VIGIL_ALLOW_PRIVATE_CALLBACKS": "127.0.0.0/8,::1",
        "PROMETHEUS_MULTIPROC_DIR": PROMETHEUS_DIR,
    }


@pytest.fixture(scope="session")
def settings(vigil_env) -> Settings:
    return Settings.from_env(vigil_env)


@pytest.fixture(scope="session")
def worker(vigil_env, settings, tmp_path_factory, events_worker, webhooks_worker
           ) -> Iterator[Worker]:
    """The jobs worker; asking for it also starts the events (micro-batch) worker and the
    webhooks worker (deliveries), as `make run` does."""
    proc = Worker(vigil_env, tmp_path_factory.mktemp("worker") / "worker.log")
    proc.start(settings)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def events_worker(vigil_env, settings, tmp_path_factory) -> Iterator[Worker]:
    proc = Worker(vigil_env, tmp_path_factory.mktemp("events") / "worker.log", role="events")
    proc.start(settings)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def webhooks_worker(vigil_env, settings, tmp_path_factory) -> Iterator[Worker]:
    proc = Worker(vigil_env, tmp_path_factory.mktemp("webhooks") / "worker.log", role="webhooks")
    proc.start(settings)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def api_url(settings) -> Iterator[str]:
    """The API app served over real HTTP on a free port, in a thread."""
    from prometheus_client import values

    from api import create_app

    assert values.ValueClass is not values.MutexValue, \
        "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set"
    server = make_server("127.0.0.1", free_port(), create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def alpha(api_url, worker) -> Iterator[httpx.Client]:
    with client_for(api_url, "alpha") as client:
        yield client


@pytest.fixture
def beta(api_url, worker) -> Iterator[httpx.Client]:
    with client_for(api_url, "beta") as client:
        yield client


@pytest.fixture
def anonymous(api_url) -> Iterator[httpx.Client]:
    with client_for(api_url, None) as client:
        yield client


@pytest.fixture
def event_type() -> str:
    """A fresh event type per test, so tests never share baselines or models."""
    return f"t-{uuid.uuid4().hex[:10]}"
