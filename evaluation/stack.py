"""A private Vigil for evaluations and soak runs: `scripts/run.py` on free ports, own Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from core.localredis import free_port

ROOT = Path(__file__).resolve().parent.parent


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `finally` blocks stop the private stack."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextmanager
def private_stack(overrides: Mapping[str, str] = (), ready_timeout_s: float = 90
                  ) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start Redis, API, workers and beat with these settings; yield (API URL, process)."""
    exit_on_sigterm()
    port = free_port()
    env = {**os.environ, "VIGIL_API_KEYS": "", "VIGIL_ENV": "development", **dict(overrides),
           "PORT": str(port), "FLOWER_PORT": str(free_port()),
           # A free port answers nothing, so run.py starts a Redis of its own there.
           "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run.py")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private stack did not become ready in {ready_timeout_s}s")
            time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
