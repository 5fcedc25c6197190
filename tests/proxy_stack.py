"""The compose stack's proxy, without Docker: deploy/haproxy/haproxy.cfg, unchanged, in front of
real API replicas and workers, in a network namespace of its own (tests/integration/test_proxy.py).

Run as `unshare --net -- python tests/proxy_stack.py OUT_JSON WORKDIR`. Inside the new namespace
the addresses compose would give are free: HAProxy binds :8000 as in its container, and a small
DNS server on 127.0.0.11:53 (where Docker's embedded DNS answers in a container) answers the
name `api` with the replicas' addresses (127.0.0.2, 127.0.0.3, ...: each replica on port 8000,
as each API container listens). Redis and the workers are on 127.0.0.1.

What it does and sees is written to OUT_JSON; the test asserts on it:
1. single events and a batch job through the proxy, their verdicts read back through it, and
   how many submits each replica answered (from each replica's own log lines);
2. one replica killed: the submits sent right after (before the proxy's health checks can
   have noticed), each answered or not;
3. a replica added (a new address in the DNS answer): whether the proxy sends it requests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402
from workers import Worker  # noqa: E402

from core.config import DEV_API_KEY, Settings  # noqa: E402
from core.localredis import free_port, start_redis  # noqa: E402
from core.server import DEFAULT_SERVER, api_command  # noqa: E402

PROXY = "http://127.0.0.1:8000"
HEADERS = {"Authorization": f"Bearer {DEV_API_KEY}"}
SUBMIT_ROUTE = '"/v1/events/validate"'


class Dns:
    """Answers A queries for `api` with self.addresses (TTL 1 s); any other name: NXDOMAIN."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.11", 53))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            query, peer = self.sock.recvfrom(4096)
            try:
                self.sock.sendto(self.answer(query), peer)
            except (IndexError, struct.error, UnicodeDecodeError):
                continue  # not a query we can read: no answer, as for a lost packet

    def answer(self, query: bytes) -> bytes:
        tid, flags = struct.unpack(">HH", query[:4])
        end, labels = 12, []
        while query[end]:
            labels.append(query[end + 1:end + 1 + query[end]].decode())
            end += 1 + query[end]
        qtype = struct.unpack(">H", query[end + 1:end + 3])[0]
        question = query[12:end + 5]
        known = ".".join(labels).lower() == "api"
        found = list(self.addresses) if known and qtype == 1 else []  # A records only
        records = b"".join(b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 1, 4) + socket.inet_aton(a)
                           for a in found)
        # A response, recursion desired copied, recursion available; NXDOMAIN (3) for others.
        header = struct.pack(">HHHHHH", tid, 0x8080 | (flags & 0x0100) | (0 if known else 3),
                             1, len(found), 0, 0)
        return header + question + records


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.replicas: dict[str, subprocess.Popen] = {}
        redis_port = free_port()
        self.procs.append(start_redis(redis_port, workdir / "redis"))
        self.env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                    "VIGIL_ENV": "development", "VIGIL_RATE_LIMIT": "0", "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": str(ROOT)}
        for name in ("VIGIL_API_KEYS", "PROMETHEUS_MULTIPROC_DIR"):
            self.env.pop(name, None)
        self.settings = Settings.from_env(self.env)
        self.workers = [Worker(self.env, workdir / f"{role}.log", role) for role in ("worker", "events")]
        self.dns = Dns()

    def log(self, address: str) -> Path:
        return self.workdir / f"api-{address}.log"

    def add_replica(self, address: str) -> None:
        """An API on address:8000, as compose's replicas each listen on their own address."""
        ip("addr", "add", f"{address}/32", "dev", "lo")
        # SO_REUSEPORT, which HAProxy sets on its own listener: without it HAProxy's bind on
        # *:8000 and a replica's on 127.0.0.2:8000 collide in one namespace (in compose each
        # container has its own); with it each connection goes to the listener whose address
        # matches it best.
        cmd = [*api_command(DEFAULT_SERVER, Path(sys.executable).parent, f"{address}:8000"),
               "--reuse-port"]
        with open(self.log(address), "ab") as out:
            self.replicas[address] = subprocess.Popen(cmd, cwd=ROOT, env=self.env,
                                                      stdout=out, stderr=subprocess.STDOUT)
        wait(lambda: httpx.get(f"http://{address}:8000/healthz", timeout=2).status_code == 200,
             f"replica {address}")
        self.dns.addresses.append(address)

    def kill_replica(self, address: str) -> None:
        """SIGKILL the replica's server and its worker processes, and take its address away,
        as a container that died takes its own; its DNS entry stays for now (Docker's goes
        when the container is removed), so only failed connections, and then the health
        checks, tell the proxy. (Without taking the address away, connections to it would
        reach HAProxy's own listener on *:8000 in this shared namespace.)"""
        proc = self.replicas.pop(address)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        for pid in [proc.pid, *map(int, children)]:
            os.kill(pid, signal.SIGKILL)
        proc.wait()
        ip("addr", "del", f"{address}/32", "dev", "lo")

    def start_proxy(self) -> None:
        with open(self.workdir / "haproxy.log", "ab") as out:
            self.procs.append(subprocess.Popen(
                ["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy" / "haproxy.cfg")],
                stdout=out, stderr=subprocess.STDOUT))

    def submits_answered(self, address: str) -> int:
        """Submits the replica answered 202, from its own JSON log lines."""
        lines = self.log(address).read_text(errors="replace").splitlines()
        return sum(SUBMIT_ROUTE in line and '"status": 202' in line for line in lines)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for proc in [*self.replicas.values(), *reversed(self.procs)]:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def network() -> None:
    """Loopback up with only the addresses in use (not all of 127.0.0.0/8, which lo answers
    by default), so that an address taken away is unreachable, as a dead container's is."""
    ip("link", "set", "lo", "up")
    ip("addr", "del", "127.0.0.1/8", "dev", "lo")
    for address in ("127.0.0.1", "127.0.0.11"):
        ip("addr", "add", f"{address}/32", "dev", "lo")


def wait(check, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not ready within {timeout_s:.0f} s")


def event(i: int) -> dict:
    return {"event_type": "checkout", "payload": {"amount": 100 + i % 7, "items": 1 + i % 3},
            "timestamp": 1_790_000_000 + 60 * i}


def submit(client: httpx.Client, events: range) -> tuple[list[str], list[int]]:
    ids, codes = [], []
    for i in events:
        try:
            response = client.post("/v1/events/validate", json=event(i))
            codes.append(response.status_code)
            if response.status_code == 202:
                ids.append(response.json()["job_id"])
        except httpx.HTTPError:
            codes.append(0)
    return ids, codes


def verdicts(client: httpx.Client, ids: list[str]) -> list[dict]:
    """The finished jobs, read through the proxy, once all are finished (or after 60 s)."""
    jobs: list[dict] = []

    def finished() -> bool:
        nonlocal jobs
        jobs = client.get("/v1/jobs", params={"ids": ",".join(ids)}).json()["jobs"]
        return all(job["status"] in ("succeeded", "failed") for job in jobs)
    wait(finished, "verdicts")
    return jobs


def scenario(stack: Stack) -> dict:
    seen: dict = {}
    for worker in stack.workers:
        worker.start(stack.settings)
    for address in ("127.0.0.2", "127.0.0.3"):
        stack.add_replica(address)
    stack.start_proxy()
    client = httpx.Client(base_url=PROXY, headers=HEADERS, timeout=10)
    # Both replicas in rotation: the proxy's health checks passed for each (rise 1, every 2 s).
    wait(lambda: client.get("/proxy-health").status_code == 200, "the proxy")
    time.sleep(3)

    ids, seen["codes"] = submit(client, range(40))
    seen["served"] = {a: stack.submits_answered(a) for a in stack.replicas}
    seen["jobs"] = verdicts(client, ids)
    batch = client.post("/v1/jobs", json={"events": [event(i) for i in range(100, 300)]})
    seen["batch_status"] = batch.status_code
    seen["batch"] = verdicts(client, [batch.json()["job_id"]])[0] if batch.status_code == 202 else {}

    stack.kill_replica("127.0.0.2")
    _, seen["codes_after_kill"] = submit(client, range(300, 340))
    seen["served_after_kill"] = {"127.0.0.3": stack.submits_answered("127.0.0.3")}

    # Scaling up: a third replica, in the DNS answer; the proxy re-resolves and checks it.
    stack.add_replica("127.0.0.4")
    seen["new_replica_served"] = 0
    deadline = time.monotonic() + 60
    i = 400
    while time.monotonic() < deadline and not stack.submits_answered("127.0.0.4"):
        submit(client, range(i, i + 5))
        i += 5
        time.sleep(0.2)
    seen["new_replica_served"] = stack.submits_answered("127.0.0.4")
    return seen


def main() -> int:
    out, workdir = Path(sys.argv[1]), Path(sys.argv[2])
    network()
    stack = Stack(workdir)
    try:
        seen = scenario(stack)
    except Exception as exc:  # the test shows it, with the logs' ends
        seen = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        stack.stop()
    out.write_text(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
