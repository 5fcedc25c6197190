"""A replica and Redis Sentinels on this machine, for the failover test and the WAIT benchmark.

Production runs each on its own host; here they are processes on 127.0.0.1 (free ports, files
in a temp dir), which is enough to show what Vigil does when Sentinel promotes the replica.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from core.localredis import redis_server_binary, start_redis

# A primary that has not answered a sentinel for this long is down in that sentinel's view;
# with the quorum agreeing, they fail over. Production's default is 30 s; 1 s for tests.
DOWN_AFTER_MS = 1000


def start_replica(port: int, data_dir: Path, primary_port: int,
                  timeout_s: float = 30.0) -> subprocess.Popen:
    """redis-server on 127.0.0.1:port replicating 127.0.0.1:primary_port, returned once its
    link to the primary is up (it has the primary's data as of then)."""
    proc = start_redis(port, data_dir, extra=("--replicaof", "127.0.0.1", str(primary_port)))
    client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
    deadline = time.monotonic() + timeout_s
    while client.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"replica on {port} did not sync from {primary_port}; "
                               f"see {data_dir}/redis.log")
        time.sleep(0.05)
    return proc


def start_sentinel(port: int, data_dir: Path, master: str, primary_port: int, *,
                   quorum: int = 2, timeout_s: float = 10.0) -> subprocess.Popen:
    """A sentinel on 127.0.0.1:port watching 127.0.0.1:primary_port as ``master``. Sentinel
    rewrites its config file as it learns (replicas, other sentinels, failovers): one each."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "sentinel.conf"
    config.write_text("\n".join([
        "bind 127.0.0.1", f"port {port}", f"dir {data_dir}",
        f"logfile {data_dir / 'sentinel.log'}",
        f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}",
        f"sentinel down-after-milliseconds {master} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {master} 10000",
        f"sentinel parallel-syncs {master} 1", ""]))
    proc = subprocess.Popen([redis_server_binary(), str(config), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sentinel exited with {proc.returncode}; see {data_dir}")
        try:
            client.ping()
            return proc
        except (redis.RedisError, OSError):
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"sentinel on {port} did not answer") from None
            time.sleep(0.05)


def sentinels_ready(ports: list[int], master: str, replicas: int) -> bool:
    """Whether every sentinel sees the primary up, ``replicas`` replicas and every other
    sentinel: only then can they agree on a failover."""
    for port in ports:
        try:
            state = redis.Redis(port=port, socket_timeout=1).sentinel_master(master)
        except (redis.RedisError, OSError):
            return False
        if (state["num-slaves"] < replicas or state["num-other-sentinels"] < len(ports) - 1
                or state["is_sdown"] or state["is_odown"]):
            return False
    return True
