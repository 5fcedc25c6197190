"""Fault-injection helpers: a private stack (Redis, API, workers) that tests break on purpose.

Nothing here shares state with the session fixtures of tests/conftest.py (``redis_server``,
``worker``, ``events_worker``, ``api_url``): a FaultStack has its own redis-server (free port,
files in its own temp dir, AOF with ``appendfsync everysec``), its own API on a real port and
its own Celery worker processes. Workers run in their own session (process group), so a test
can SIGKILL a whole worker, or just its pool processes, without touching pytest or anyone
else's processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
from helpers import KEYS, WEBHOOK_SECRET, client_for
from werkzeug.serving import make_server
from workers import RedisServer, child_pids

from core.config import Settings
from core.localredis import free_port

ROOT = Path(__file__).resolve().parents[2]
# A short visibility timeout, so a message whose worker was SIGKILLed is restored quickly.
VISIBILITY_TIMEOUT_S = 5
# Events in a job that must still be running when a fault is injected: a worker judges some
# 30,000-50,000 events/s, so 100,000 give two seconds or more (~10 MB of JSON: the body limit
# is raised to match).
BIG_JOB = 100_000
# One log line per request (the app's, werkzeug's, httpx's) would bury a failure's report.
QUIET_LOGGERS = ("httpx", "werkzeug", "vigil.http")
# Webhook retries after 0.2, 0.4, 0.8, 1.6, then every 2 s: each below half the visibility
# timeout, so a Celery countdown carries it (longer ones wait for beat, which no test runs).
WEBHOOK_SCHEDULE_S = (0.2, 0.4, 0.8, 1.6, 2.0)
FINISHED = ("succeeded", "failed", "cancelled")


class Timeout(Exception):
    """A wait ran out. Not an AssertionError: an xfail(raises=AssertionError) test that times
    out in its set-up is reported as failed, not as the expected failure."""


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str,
               interval_s: float = 0.05) -> object:
    """Poll ``predicate`` until it returns something truthy; raise Timeout naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class FaultWorker:
    """A `celery worker` subprocess in its own process group, so it can be killed as a whole.

    role: "worker" (jobs, the default queue), "events" (single events, micro-batched) or
    "webhooks" (deliveries), with the arguments `make run` gives that kind (tasks.WORKER_ARGS);
    ``concurrency`` overrides the pool size.
    """

    def __init__(self, env: dict[str, str], settings: Settings, log_path: Path, role: str = "worker",
                 concurrency: int | None = None):
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.settings = settings
        self.log_path = log_path
        self.role = role
        self.concurrency = concurrency
        self.hostname = f"fault-{role}-{uuid.uuid4().hex[:8]}@vigil-tests"
        self.proc: subprocess.Popen | None = None
        # Killed or stopped, and reaped: its pid (and group id) may be someone else's now.
        self.gone = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and not self.gone and self.proc.poll() is None

    def spawn(self) -> FaultWorker:
        from tasks import WORKER_ARGS

        args = list(WORKER_ARGS[self.role])
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]  # the last one counts
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "--loglevel",
                 "INFO", *args, "--hostname", self.hostname,
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 90) -> FaultWorker:
        """Until it answers a ping (its consumer runs; it restored abandoned messages)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_tail()}")
            if self.answers():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"worker did not answer in {timeout_s}s: {self.log_tail()}")

    def answers(self, timeout_s: float = 0.5) -> bool:
        from tasks import create_celery

        # A fresh app each time: no pooled broker connection survives a Redis restart here.
        app = create_celery(self.settings)
        try:
            return bool(app.control.ping(destination=[self.hostname], timeout=timeout_s))
        except Exception:  # the broker may be down: not answering
            return False
        finally:
            app.close()

    def pool_children(self) -> list[int]:
        return child_pids(self.pid)

    def kill_pool_children(self) -> list[int]:
        """SIGKILL every pool process (as the OOM killer would); the main process lives on."""
        killed = self.pool_children()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return killed

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool children (its process group)."""
        if self.proc is None or self.gone:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.gone = True
        # Children are reparented when the main process dies; wait until the group is empty.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of its group if it hangs."""
        if self.proc is None or self.gone:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # Celery's warm shutdown waits for its pool to exit
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()  # not reaped yet: its group id is still its own
                return
        self.gone = True

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


class InProcessApi:
    """A fault stack's API, served from the test's process on a free port (threaded), its
    chattiest loggers quieted until close(), which puts back the levels it found."""

    def __init__(self, settings: Settings):
        from api import create_app

        app = create_app(settings)
        self._levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        self._server = make_server("127.0.0.1", free_port(), app, threaded=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


class FaultStack:
    """A private Redis, the API over HTTP (in a thread of this process) and Celery workers."""

    def __init__(self, tmp: Path, overrides: dict[str, str] | None = None):
        self.tmp = tmp
        self.redis = RedisServer(tmp / "redis")
        self.redis.start()
        self.env = {
            "REDIS_URL": self.redis.url,
            "VIGIL_API_KEYS": ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items()),
            "VIGIL_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "VIGIL_WEBHOOK_SCHEDULE": ",".join(map(str, WEBHOOK_SCHEDULE_S)),
            "VIGIL_WEBHOOK_MAX_ATTEMPTS": "8",
            "VIGIL_RETRAIN_INTERVAL": "3600",
            "VIGIL_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
            # Webhook receivers in these tests listen on 127.0.0.1.
            "VIGIL_ALLOW_PRIVATE_CALLBACKS": "127.0.0.1/32",
            # Tests poll fast; the per-tenant rate limit is not what they test.
            "VIGIL_RATE_LIMIT": "0",
            "VIGIL_MAX_EVENTS_PER_JOB": str(BIG_JOB),
            "VIGIL_MAX_BODY_BYTES": str(32 * 1024 * 1024),
            **(overrides or {}),
        }
        self.settings = Settings.from_env(self.env)
        self.workers: list[FaultWorker] = []
        self.api = InProcessApi(self.settings)
        self.api_url = self.api.url

    def start_workers(self, *roles: str, concurrency: int | None = None) -> list[FaultWorker]:
        """Start workers of these roles side by side (each takes seconds to import its
        libraries) and wait until every one answers."""
        started = []
        for role in roles:
            log_path = self.tmp / f"{role}-{len(self.workers)}.log"
            worker = FaultWorker(self.env, self.settings, log_path, role, concurrency)
            self.workers.append(worker)
            started.append(worker.spawn())
        return [worker.wait_ready() for worker in started]

    def start_worker(self, role: str = "worker", concurrency: int | None = None) -> FaultWorker:
        return self.start_workers(role, concurrency=concurrency)[0]

    def running(self, role: str) -> FaultWorker | None:
        alive = [w for w in self.workers if w.role == role and w.alive]
        return alive[-1] if alive else None

    def ensure_workers(self, *roles: str) -> list[FaultWorker]:
        """A live worker of each role, starting those that are missing."""
        missing = [role for role in roles if self.running(role) is None]
        if missing:
            self.start_workers(*missing)
        return [self.running(role) for role in roles]

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    def client(self, tenant: str = "alpha", timeout_s: float = 30) -> httpx.Client:
        client = client_for(self.api_url, tenant)
        client.timeout = httpx.Timeout(timeout_s)
        return client

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {w.hostname}\n{w.log_tail(chars)}" for w in self.workers[-3:])

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):  # teardown goes on
                worker.kill()
        self.api.close()
        self.redis.stop(signal.SIGKILL)


# --- what tests do as clients --------------------------------------------------------------

def get_job(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/v1/jobs/{job_id}")
    if response.status_code != 200:
        raise RuntimeError(f"GET /v1/jobs/{job_id}: {response.status_code} {response.text}")
    return response.json()


def wait_finished(client: httpx.Client, job_id: str, timeout_s: float,
                  stack: FaultStack | None = None) -> dict:
    """Poll a job as a client would until it finishes; the job document."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(client, job_id)
        if job["status"] in FINISHED:
            return job
        if time.monotonic() > deadline:
            raise Timeout(f"job {job_id} did not finish in {timeout_s}s: {job['status']} "
                          f"{job['progress']}\n{stack.logs() if stack else ''}")
        time.sleep(0.1)


def accepted(response: httpx.Response) -> str:
    """The job id of a 202 answer."""
    if response.status_code != 202:
        raise RuntimeError(f"expected 202, got {response.status_code}: {response.text}")
    return response.json()["job_id"]


def epoch(iso_timestamp: str) -> float:
    return datetime.fromisoformat(iso_timestamp).timestamp()
