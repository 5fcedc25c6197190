"""What VIGIL_REDIS_WAIT_REPLICAS=1 costs a submission: latency with and without WAIT.

A primary and its replica (redis-server on this machine, AOF everysec as Vigil runs it), and
two API apps in this one process against the same primary, one with the option off and one
with it on; rounds alternate between them, so both see the same machine. Each request is a
WSGI call (werkzeug's test client: no sockets between client and API, the API's own Redis
connections as in production). Single events take the fast path; 100-event jobs the Flask
view. No worker runs: what is submitted stays queued (the Redis is private and thrown away).

    .venv/bin/python -m benchmarks.wait_replicas [--rounds 6] [--singles 500] [--jobs 100]

Prints p50/p99 submit latency and the API's CPU per submission for each, and `uptime`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
import time
from pathlib import Path

from werkzeug.test import Client

from api import create_app
from core.config import DEV_API_KEY, Settings
from core.localredis import free_port, start_redis
from core.localreplicas import start_replica

HEADERS = {"Authorization": f"Bearer {DEV_API_KEY}", "Content-Type": "application/json"}
MODES = ("without WAIT", "with WAIT 1")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def bodies(kind: str, n: int) -> list[bytes]:
    t0 = 1_790_000_000
    if kind == "single":
        return [json.dumps({"event_type": "bench-wait", "timestamp": t0 + i,
                            "payload": {"amount": 10.0 + i % 7}}).encode() for i in range(n)]
    return [json.dumps({"events": [{"event_type": "bench-wait-job", "timestamp": t0 + i * 100 + k,
                                    "payload": {"amount": 10.0 + k % 7}} for k in range(100)]}
                       ).encode() for i in range(n)]


def run_round(client: Client, path: str, payloads: list[bytes]) -> tuple[list[float], float]:
    """(latency of each request in seconds, CPU seconds of this process in all)."""
    latencies = []
    cpu = time.process_time()
    for body in payloads:
        started = time.perf_counter()
        response = client.post(path, data=body, headers=HEADERS)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 202:
            raise SystemExit(f"{path}: {response.status_code} {response.get_data(as_text=True)}")
    return latencies, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--singles", type=int, default=500, help="single events per round")
    parser.add_argument("--jobs", type=int, default=100, help="100-event jobs per round")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vigil-bench-wait-") as tmp:
        primary_port, replica_port = free_port(), free_port()
        procs = [start_redis(primary_port, Path(tmp) / "primary")]
        try:
            procs.append(start_replica(replica_port, Path(tmp) / "replica", primary_port))
            env = {"REDIS_URL": f"redis://127.0.0.1:{primary_port}/0", "VIGIL_RATE_LIMIT": "0",
                   "VIGIL_REDIS_WAIT_TIMEOUT_MS": "1000"}
            clients = {mode: Client(create_app(Settings.from_env(
                {**env, "VIGIL_REDIS_WAIT_REPLICAS": "1" if "WAIT 1" in mode else "0"})))
                for mode in MODES}
            kinds = {"single event (fast path)": ("/v1/events/validate",
                                                  bodies("single", args.singles)),
                     "100-event job": ("/v1/jobs", bodies("job", args.jobs))}
            for client in clients.values():  # warm up: imports, scripts loaded, pools filled
                for path, payloads in kinds.values():
                    run_round(client, path, payloads[:20])
            figures = {(kind, mode): ([], 0.0) for kind in kinds for mode in MODES}
            for round_no in range(args.rounds):
                order = MODES if round_no % 2 == 0 else MODES[::-1]
                for kind, (path, payloads) in kinds.items():
                    for mode in order:
                        latencies, cpu = run_round(clients[mode], path, payloads)
                        seen, cpu_sum = figures[(kind, mode)]
                        figures[(kind, mode)] = (seen + latencies, cpu_sum + cpu)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()

    print(f"WAIT for 1 replica before the 202 (VIGIL_REDIS_WAIT_REPLICAS=1): {args.rounds} "
          "alternating rounds, primary and replica on this machine, one process")
    for kind in kinds:
        base = None
        for mode in MODES:
            latencies, cpu = figures[(kind, mode)]
            p50, p99 = (percentile(latencies, q) * 1000 for q in (50, 99))
            line = (f"  {kind:26s} {mode:13s} n={len(latencies):5d}  p50 {p50:6.3f} ms  "
                    f"p99 {p99:6.3f} ms  API CPU {cpu / len(latencies) * 1000:6.3f} ms/request")
            if base is None:
                base = (p50, p99)
            else:
                line += f"  (p50 {p50 - base[0]:+.3f} ms, p99 {p99 - base[1]:+.3f} ms)"
            print(line)
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
