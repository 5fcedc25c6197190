"""Real server processes for the tests: a private redis-server and `celery worker`s
(tests/conftest.py, tests/faults, tests/integration/test_rabbitmq.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis as redis_lib

from core.config import Settings
from core.localredis import free_port, start_redis

ROOT = Path(__file__).resolve().parent.parent


class RedisServer:
    """A private redis-server (AOF, appendfsync everysec) that a test can stop and start again
    on the same port with the same files."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = start_redis(self.port, self.data_dir, appendonly=True)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM: Redis fsyncs the AOF and exits; SIGKILL: whatever it had written."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    def client(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is pid (a worker's pool)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


class Worker:
    """A real `celery worker` subprocess of one role (see tasks.WORKER_ARGS)."""

    def __init__(self, env: dict[str, str], log_path: Path, role: str = "worker"):
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.role = role
        self.proc: subprocess.Popen | None = None

    def start(self, settings: Settings, timeout_s: float = 60) -> None:
        from tasks import WORKER_ARGS, create_celery

        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.hostname = f"{self.role}-{uuid.uuid4().hex[:6]}@test"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "--loglevel",
             "INFO", *WORKER_ARGS[self.role], "--hostname", self.hostname,
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        control = create_celery(settings).control
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            if control.ping(destination=[self.hostname], timeout=0.5):
                return
        raise RuntimeError(f"worker did not answer: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
