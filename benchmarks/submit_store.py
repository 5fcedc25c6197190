"""What storing a single event costs the API in its calls to Redis: CPU per submit of
tasks.store.jobs.create_inbox_job (the job's script, then the inbox's RPUSH: two round trips
since the store shards, docs/cluster.md) beside its parts alone, in alternating rounds of one
run against a private Redis. Prints one line per round and part.

    .venv/bin/python -m benchmarks.submit_store
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from core import keys
from core.config import Settings
from core.localredis import free_port, start_redis
from tasks import inbox
from tasks.store import job_data, jobs, lua, rates

EVENT = {"event_type": "checkout", "timestamp": 1_790_000_000, "payload": {"amount": 1.0}}
TENANT = "bench"
SUBMITS = 3000
ROUNDS = 3


def parts(r: redis.Redis, cfg: Settings) -> dict[str, Callable[[int], None]]:
    def whole(n: int) -> None:
        for _ in range(n):
            jobs.create_inbox_job(r, cfg, TENANT, EVENT)

    def script_only(n: int) -> None:  # the job's script with the arguments _create gives it
        for _ in range(n):
            job_id = jobs.new_job_id()
            fields = {"job_id": job_id, "kind": "validate", "status": jobs.QUEUED, "total": 1,
                      "done": 0, "attempts": 0, "created_at": time.time(),
                      "event_type": EVENT["event_type"]}
            lua.run(r, jobs._CREATE,
                    [keys.job(TENANT, job_id), keys.job_events(TENANT, job_id),
                     keys.recent_jobs(TENANT), rates.current_window(TENANT)],
                    [cfg.job_ttl_s, jobs.RECENT_JOBS_KEPT - 1, job_data.pack_events([EVENT]),
                     job_id, 0, rates.RATE_WINDOW_TTL_S,
                     *(x for pair in fields.items() for x in pair)])

    def rpush_only(n: int) -> None:
        for i in range(n):
            r.rpush(keys.events_inbox(), inbox.entry(TENANT, f"{i:032x}"))

    def slot_check_only(n: int) -> None:
        names = [keys.job(TENANT, "0" * 32), keys.job_events(TENANT, "0" * 32),
                 keys.recent_jobs(TENANT), rates.current_window(TENANT)]
        for _ in range(n):
            keys.check_one_slot(names)

    return {"create_inbox_job": whole, "job script only": script_only,
            "inbox RPUSH only": rpush_only, "slot check only": slot_check_only}


def main() -> None:
    port = free_port()
    proc = start_redis(port, Path(tempfile.mkdtemp(prefix="vigil-bench-")), appendonly=False)
    try:
        r = redis.Redis(port=port)
        cfg = Settings(redis_url=f"redis://127.0.0.1:{port}/0", rate_limit=0)
        for round_no in range(ROUNDS):
            for name, run in parts(r, cfg).items():
                r.flushall()
                cpu, wall = time.process_time(), time.perf_counter()
                run(SUBMITS)
                print(f"round {round_no} {name:17s} {1e6 * (time.process_time() - cpu) / SUBMITS:6.1f}"
                      f" us CPU/submit {1e6 * (time.perf_counter() - wall) / SUBMITS:6.1f} us wall")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
