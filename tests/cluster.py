"""A private three-primary Redis Cluster for the tests: the store when the suite runs with
VIGIL_TEST_STORE=cluster (tests/conftest.py; `make test` runs the store's integration tests
that way too), and for the tests of key slots (tests/integration/test_cluster_slots.py)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from redis.cluster import RedisCluster

from core.localredis import free_port, redis_answers, redis_cli_binary, server_command

PRIMARIES = 3
# A node's cluster bus listens on its port + 10,000 (redis-server refuses a port above 55535).
BUS_OFFSET = 10_000


def node_ports(count: int) -> list[int]:
    """``count`` free ports whose bus ports (+10,000) are free too, and none of them another's
    bus port: the nodes bind them only later, so a port free now may be the bus port a node
    chosen before it will take (seen: a node that could not start)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        taken = {*chosen, *(c + BUS_OFFSET for c in chosen)}
        if port in taken or port + BUS_OFFSET in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        chosen.append(port)
    return chosen


class ClusterServer:
    """Three redis-server processes in cluster mode, joined with `redis-cli --cluster create`
    (no replicas): each primary owns a third of the 16,384 slots."""

    def __init__(self, data_dir: Path, primaries: int = PRIMARIES):
        self.data_dir = data_dir
        self.ports = node_ports(primaries)
        # A client learns every node and slot from any one of them (core/connections.py).
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        self.procs: list[subprocess.Popen] = []

    def start(self, timeout_s: float = 30.0) -> None:
        for port in self.ports:
            node_dir = self.data_dir / f"node-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.procs.append(subprocess.Popen(
                [*server_command(port, node_dir), "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node_dir / "nodes.conf"),
                 "--cluster-node-timeout", "5000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            while not redis_answers(f"redis://127.0.0.1:{port}/0"):
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    self.stop()
                    raise RuntimeError(f"cluster node {port} did not start; see {self.data_dir}")
                time.sleep(0.05)
        created = subprocess.run(
            [redis_cli_binary(), "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s)
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}"
                               f"{created.stderr[-2000:]}")
        # Every node must see every slot served before a client maps them.
        while not all(self._state_ok(port) for port in self.ports):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    @staticmethod
    def _state_ok(port: int) -> bool:
        import redis

        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as node:
            info = node.execute_command("CLUSTER INFO")
        if isinstance(info, dict):  # as redis-py parses it
            return info.get("cluster_state") == "ok"
        return "cluster_state:ok" in (info.decode() if isinstance(info, bytes) else str(info))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)
