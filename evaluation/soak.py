"""`make soak`: a bounded run at steady load; worker memory must stay flat, no job unfinished.

A private stack is started; history is seeded; then for --minutes a steady load is offered
(--rate single events per second plus a --batch-event job every 5 s). Worker memory (RSS of
every celery worker process, main and pool children) is sampled every 10 s. After the load,
every submitted job must finish. Exits 1 if a job is unfinished or the workers' memory grew
more than --max-growth-mb between the end of the warm-up (the first minute or 20%) and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import descendants  # noqa: E402
from evaluation.stack import private_stack  # noqa: E402

KEY = {"Authorization": "Bearer vigil-dev-key"}
TYPE = "soak"


def worker_rss_mb(root_pid: int) -> float:
    """Sum of RSS of every celery worker process under the stack (not beat, not flower)."""
    total = 0
    for pid in descendants(root_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"celery" in cmdline and b" worker" in cmdline:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def event(rng: np.random.Generator, i: int) -> dict:
    return {"event_type": TYPE, "timestamp": 1_790_000_000 + i,
            "payload": {"amount": float(rng.normal(100, 10)), "items": float(rng.normal(5, 1))}}


async def soak(url: str, root_pid: int, minutes: float, rate: float, batch: int) -> dict:
    rng = np.random.default_rng(1)
    jobs: list[str] = []
    samples: list[tuple[float, float]] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, headers=KEY, timeout=30) as client:
        history = [{"timestamp": e["timestamp"], "payload": e["payload"]}
                   for e in (event(rng, i) for i in range(2000))]
        response = await client.post(f"/v1/event-types/{TYPE}/history", json={"events": history})
        jobs.append(response.json()["job_id"])

        # A bounded number in flight: httpcore's pool slows down quadratically with thousands
        # of queued requests, and a steady load is the point here, not an open-loop flood.
        in_flight = asyncio.Semaphore(32)

        async def submit(body: dict, path: str) -> None:
            nonlocal errors
            try:
                async with in_flight:
                    response = await client.post(path, json=body)
                response.raise_for_status()
                jobs.append(response.json()["job_id"])
            except httpx.HTTPError:
                errors += 1

        start = time.monotonic()
        end = start + minutes * 60
        sent, tasks, next_sample, next_batch = 0, set(), start, start
        while (now := time.monotonic()) < end:
            due = int((now - start) * rate)
            while sent < due:
                tasks.add(asyncio.create_task(submit(event(rng, sent), "/v1/events/validate")))
                sent += 1
            if now >= next_batch:
                body = {"events": [event(rng, i) for i in range(batch)]}
                tasks.add(asyncio.create_task(submit(body, "/v1/jobs")))
                next_batch += 5
            if now >= next_sample:
                samples.append((now - start, worker_rss_mb(root_pid)))
                print(f"soak: {now - start:.0f}s, {len(jobs)} jobs, workers {samples[-1][1]:.0f} MB",
                      file=sys.stderr)
                next_sample += 10
            tasks = {t for t in tasks if not t.done()}
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)

        print(f"soak: load done ({len(jobs)} jobs, {sent} single events offered); "
              "waiting for them to finish", file=sys.stderr)
        unfinished = []
        deadline = time.monotonic() + 120
        pending = list(jobs)
        while pending and time.monotonic() < deadline:
            still = []
            for job_id in pending:
                job = (await client.get(f"/v1/jobs/{job_id}")).json()
                if job["status"] not in ("succeeded", "failed", "cancelled"):
                    still.append(job_id)
                elif job["status"] != "succeeded":
                    unfinished.append((job_id, job["status"], job.get("error")))
            pending = still
            if pending:
                await asyncio.sleep(1)
        samples.append((time.monotonic() - start, worker_rss_mb(root_pid)))
    return {"jobs": len(jobs), "pending": pending, "not_succeeded": unfinished,
            "submit_errors": errors, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=50, help="single events per second")
    parser.add_argument("--batch", type=int, default=500, help="events per batch job (every 5 s)")
    parser.add_argument("--max-growth-mb", type=float, default=50)
    args = parser.parse_args(argv)

    with private_stack() as (url, proc):
        result = asyncio.run(soak(url, proc.pid, args.minutes, args.rate, args.batch))
    samples = result["samples"]
    warm = max(60.0, 0.2 * args.minutes * 60)
    after_warmup = [rss for t, rss in samples if t >= warm] or [samples[-1][1]]
    growth = samples[-1][1] - after_warmup[0]
    print(f"soak: {args.minutes:g} min, {args.rate:g} single events/s + {args.batch} events "
          f"every 5 s; {result['jobs']} jobs, {result['submit_errors']} submit errors")
    print("worker RSS (MB) over time: " + ", ".join(f"{t:.0f}s={rss:.0f}" for t, rss in samples))
    print(f"worker RSS after warm-up {after_warmup[0]:.0f} MB, at the end {samples[-1][1]:.0f} MB: "
          f"growth {growth:+.0f} MB (bound {args.max_growth_mb:g} MB)")
    print(f"unfinished jobs: {len(result['pending'])}; not succeeded: {len(result['not_succeeded'])}")
    ok = (not result["pending"] and not result["not_succeeded"] and not result["submit_errors"]
          and growth <= args.max_growth_mb)
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
