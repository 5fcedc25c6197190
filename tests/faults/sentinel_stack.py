"""A Vigil stack on Redis Sentinel: primary, replica, three sentinels, the API, workers, beat.

For tests/faults/test_sentinel_failover.py. Every process is local (127.0.0.1, free ports,
files in the test's temp dir) and real: redis-server for the primary and the replica,
`redis-server --sentinel` for the sentinels, `celery worker` and `celery beat` processes, the
API in a thread of the test process. Store and broker are both reached only through the
sentinels: REDIS_URL names a port nothing listens on, so any part that still connected to it
directly would fail the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import redis
from fault_helpers import ROOT, VISIBILITY_TIMEOUT_S, FaultWorker, InProcessApi
from helpers import KEYS, WEBHOOK_SECRET, client_for

from core.config import Settings
from core.localredis import free_port, start_redis
from core.localreplicas import sentinels_ready, start_replica, start_sentinel

MASTER = "vigil-primary"
SENTINELS = 3


class SentinelStack:
    def __init__(self, tmp: Path, overrides: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.redis: dict[int, subprocess.Popen] = {}  # port -> redis-server (primary, replica)
        primary, replica = free_port(), free_port()
        self.data_dirs = {primary: tmp / "primary", replica: tmp / "replica"}
        self.redis[primary] = start_redis(primary, self.data_dirs[primary])
        self.redis[replica] = start_replica(replica, self.data_dirs[replica], primary)
        self.sentinel_ports = [free_port() for _ in range(SENTINELS)]
        self.sentinels = [start_sentinel(port, tmp / f"sentinel-{i}", MASTER, primary)
                          for i, port in enumerate(self.sentinel_ports)]
        self.env = {
            "REDIS_URL": "redis://127.0.0.1:1/0",  # unused: the sentinels name the primary
            "VIGIL_REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
            "VIGIL_REDIS_SENTINEL_MASTER": MASTER,
            "VIGIL_API_KEYS": ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items()),
            "VIGIL_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "VIGIL_RETRAIN_INTERVAL": "3600",
            "VIGIL_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
            "VIGIL_RATE_LIMIT": "0",
            **(overrides or {}),
        }
        self.settings = Settings.from_env(self.env)
        self.workers: list[FaultWorker] = []
        self.beat: subprocess.Popen | None = None
        self.api = InProcessApi(self.settings)
        self.api_url = self.api.url

    def sentinels_agree(self) -> bool:
        """Every sentinel sees the primary up, the replica and the other sentinels."""
        return sentinels_ready(self.sentinel_ports, MASTER, replicas=1)

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError, OSError):
                found = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(
                    MASTER)
                if found:
                    return int(found[1])
        return None

    def kill_primary(self) -> int:
        """SIGKILL the primary (no chance to flush or hand over); its port."""
        port = self.primary_port()
        assert port is not None, "no sentinel names a primary"
        self.redis[port].send_signal(signal.SIGKILL)
        self.redis[port].wait(timeout=10)
        return port

    def restart(self, port: int) -> None:
        """Start a killed redis-server again, on its port with its files, as an operator
        would: the sentinels make it a replica of the primary they promoted meanwhile."""
        self.redis[port] = start_redis(port, self.data_dirs[port])

    def replicas_of_primary(self) -> int:
        """Replicas connected to the current primary (0 if none answers)."""
        port = self.primary_port()
        with contextlib.suppress(redis.RedisError, OSError):
            info = redis.Redis(port=port, socket_timeout=1).info("replication")
            return int(info["connected_slaves"]) if info.get("role") == "master" else 0
        return 0

    def start_workers(self, *roles: str) -> None:
        started = [FaultWorker(self.env, self.settings, self.tmp / f"{role}.log", role).spawn()
                   for role in roles]
        self.workers += started
        for worker in started:
            worker.wait_ready()

    def start_beat(self) -> None:
        """celery beat, as `make run` runs it: it sends the sweep that wakes the events worker
        for single events whose wake message was lost."""
        with open(self.tmp / "beat.log", "ab") as log:
            self.beat = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks.worker", "beat", "--loglevel",
                 "INFO", "--schedule", str(self.tmp / "celerybeat-schedule")],
                cwd=ROOT, env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def client(self, timeout_s: float = 30) -> httpx.Client:
        client = client_for(self.api_url, "alpha")
        client.timeout = httpx.Timeout(timeout_s)
        return client

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {w.hostname}\n{w.log_tail(chars)}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):  # teardown goes on
                worker.kill()
        if self.beat is not None and self.beat.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.beat.pid, signal.SIGKILL)
            self.beat.wait(timeout=10)
        self.api.close()
        for proc in [*self.redis.values(), *self.sentinels]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
