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


def stack_env(environ: Mapping[str, str], overrides: Mapping[str, str] = (),
              inherit_settings: bool = True) -> dict[str, str]:
    """The private stack's environment, before its ports: no API keys (the dev key), dev mode."""
    inherited = {name: value for name, value in environ.items()
                 if inherit_settings or not name.startswith("VIGIL_")}
    return {**inherited, "VIGIL_API_KEYS": "", "VIGIL_ENV": "development", **dict(overrides)}


@contextmanager
def private_stack(overrides: Mapping[str, str] = (), ready_timeout_s: float = 90,
                  inherit_settings: bool = True) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start Redis, API, workers and beat with these settings; yield (API URL, process).

    inherit_settings=False drops the caller's VIGIL_* variables, so the stack runs with the
    defaults plus `overrides` only (a VIGIL_Z_THRESHOLD left in a shell would skew an eval).
    """
    exit_on_sigterm()
    port = free_port()
    env = {**stack_env(os.environ, overrides, inherit_settings),
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
