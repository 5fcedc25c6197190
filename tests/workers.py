"""A real `celery worker` subprocess, for the test fixtures (tests/conftest.py) and the
RabbitMQ test (tests/integration/test_rabbitmq.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from core.config import Settings

ROOT = Path(__file__).resolve().parent.parent


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
