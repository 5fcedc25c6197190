"""`make bench`'s "fair tenants" phase: one tenant's backlog next to another's trickle.

    .venv/bin/python -m benchmarks.fairness [--time-scale 0.5]     (make bench-fairness)

One Vigil stack (scripts/run.py, its own Redis) with two tenants, A and B:
- B alone: B sends single events at B_RATE/s and a B_JOB_EVENTS-event job every
  B_JOB_EVERY_S, for SECONDS["b_alone"];
- A alone: A queues A_EVENTS events in 1,000-event jobs (POST /v1/jobs, A_IN_FLIGHT
  uploads at a time) and they drain;
- A and B: A queues the same backlog while B sends as above, until A's backlog has drained.
"A alone" and "A and B" alternate ROUNDS times (--rounds), pooled: the machine is shared.

B's time from submit to verdict is read from the job store: each job hash's created_at
(stored by the API as it accepts the job) and finished_at (stored by the worker with the
verdict), both server-side times, so the load generator's own delays do not count. B's events
count as "during A's backlog" when created between A's first job's created_at and A's last
job's finished_at. A's throughput: its events over the time from its first job's created_at
to its last job's finished_at. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import dataclass, field

import httpx
import orjson
import redis

from benchmarks import load
from benchmarks.stack import Processes, Started, cpu_between, cpu_sample
from core import keys
from tasks import WORKER_ARGS
from tasks.store import jobs as job_store

TENANT_A, KEY_A = "fair-a", "bench-key-a"
TENANT_B, KEY_B = "fair-b", "bench-key-b"
EVENT_TYPE = "bench"
HISTORY_ROWS = 2000
A_EVENTS = 200_000
A_PER_JOB = 1000
A_IN_FLIGHT = 4
B_RATE = 50.0
B_JOB_EVENTS = 10
B_JOB_EVERY_S = 1.0
SECONDS = {"b_alone": 15.0, "warmup": 2.0}
ROUNDS = 2
GOALS = {"b_p99_s": 1.0, "a_drop": 0.10}
# The roles of benchmarks.stack.role_of, as the CPU lines print them.
ROLES = {"api": ("api",), "worker": ("worker",), "events": ("events",), "redis": ("redis",),
         "client": ("client",)}


@dataclass
class Round:
    """One phase's job ids and what they cost."""
    a_jobs: list[str] = field(default_factory=list)
    b_singles: list[str] = field(default_factory=list)
    b_jobs: list[str] = field(default_factory=list)
    b_errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)


@dataclass
class Figures:
    """What a phase measured: B's times to verdict (s) and A's drain."""
    b_single_s: list[float]
    b_job_s: list[float]
    a_events: int = 0
    a_span_s: float = math.nan
    cpu: dict[str, float] = field(default_factory=dict)
    b_sent: int = 0
    b_unfinished: int = 0

    @property
    def a_rate(self) -> float:
        return self.a_events / self.a_span_s if self.a_span_s > 0 else math.nan


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


# --- load -----------------------------------------------------------------------------------

async def a_backlog(url: str, bodies: list[bytes], jobs: int, out: list[str]) -> None:
    """Queue A's jobs, A_IN_FLIGHT uploads at a time; an upload refused stops the run (an
    unqueued backlog must not pass for a queued one)."""
    http = load.Http(url, api_key=KEY_A)
    counter = iter(range(jobs))

    async def uploader() -> None:
        for k in counter:
            status, answer = await http.request("POST", "/v1/jobs", bodies[k % len(bodies)])
            if status != 202:
                raise RuntimeError(f"A's POST /v1/jobs answered {status}: {answer[:300]!r}")
            out.append(orjson.loads(answer)["job_id"])
    try:
        await asyncio.gather(*(uploader() for _ in range(A_IN_FLIGHT)))
    finally:
        http.close()


async def b_trickle(url: str, singles: list[bytes], job_bodies: list[bytes], until, out: Round
                    ) -> None:
    """B's single events at B_RATE/s (open loop) and a small job every B_JOB_EVERY_S, until
    ``until()`` says stop."""
    http = load.Http(url, api_key=KEY_B)
    tasks: list[asyncio.Task] = []

    async def post(path: str, body: bytes, into: list[str]) -> None:
        try:
            status, answer = await http.request("POST", path, body)
        except (OSError, TimeoutError):
            status, answer = 0, b""
        if status == 202:
            into.append(orjson.loads(answer)["job_id"])
        else:
            out.b_errors += 1

    t0 = time.perf_counter()
    k = jobs_sent = 0
    try:
        while not until():
            due = t0 + k / B_RATE
            job_due = t0 + jobs_sent * B_JOB_EVERY_S
            if job_due <= due:
                await asyncio.sleep(max(0.0, job_due - time.perf_counter()))
                tasks.append(asyncio.create_task(
                    post("/v1/jobs", job_bodies[jobs_sent % len(job_bodies)], out.b_jobs)))
                jobs_sent += 1
                continue
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(
                post("/v1/events/validate", singles[k % len(singles)], out.b_singles)))
            k += 1
        await asyncio.gather(*tasks)
    finally:
        http.close()


def statuses(r: redis.Redis, tenant: str, job_ids: list[str]) -> list[dict | None]:
    return job_store.get_jobs(r, tenant, job_ids)


def drained(r: redis.Redis, job_ids: list[str], expected: int) -> bool:
    """Whether all ``expected`` of A's jobs were queued and have finished."""
    if len(job_ids) < expected:
        return False
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(TENANT_A, job_id), "status")
    return all((s or b"").decode() in load.FINISHED for s in pipe.execute())


def wait_finished(r: redis.Redis, tenant: str, job_ids: list[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = statuses(r, tenant, job_ids)
        if all(j is None or j["status"] in load.FINISHED for j in jobs):
            return
        time.sleep(0.2)


def run_phase(url: str, r: redis.Redis, *, a_jobs: int, with_b: bool, b_seconds: float,
              a_bodies: list[bytes], b_singles: list[bytes], b_jobs: list[bytes]) -> Round:
    """A's backlog (a_jobs > 0) and/or B's trickle: B for b_seconds, or while A drains."""
    out = Round()
    # B stops once A's backlog has drained, checked at most every 0.25 s (a pipeline of HGETs).
    checked = {"at": 0.0, "done": False}

    def a_done() -> bool:
        now = time.monotonic()
        if now - checked["at"] >= 0.25:
            checked["at"], checked["done"] = now, drained(r, out.a_jobs, a_jobs)
        return checked["done"]

    stop_at = time.monotonic() + b_seconds

    def until() -> bool:
        return a_done() if a_jobs else time.monotonic() >= stop_at

    async def both() -> None:
        work = []
        if a_jobs:
            work.append(a_backlog(url, a_bodies, a_jobs, out.a_jobs))
        if with_b:
            work.append(b_trickle(url, b_singles, b_jobs, until, out))
        await asyncio.gather(*work)
        while a_jobs and not a_done():
            await asyncio.sleep(0.05)

    before = cpu_sample()
    asyncio.run(both())
    out.cpu = cpu_between(before, cpu_sample())
    wait_finished(r, TENANT_B, out.b_singles + out.b_jobs)
    return out


def figures(r: redis.Redis, phase: Round) -> Figures:
    a = [j for j in statuses(r, TENANT_A, phase.a_jobs) if j]
    b_singles = [j for j in statuses(r, TENANT_B, phase.b_singles) if j]
    b_jobs = [j for j in statuses(r, TENANT_B, phase.b_jobs) if j]
    window = (-math.inf, math.inf)
    found = Figures([], [], cpu=phase.cpu)
    if a:
        window = (min(j["created_at"] for j in a), max(j.get("finished_at", math.inf) for j in a))
        found.a_events = sum(j["total"] for j in a if j["status"] == "succeeded")
        found.a_span_s = window[1] - window[0]

    def times(jobs: list[dict]) -> list[float]:
        return [j["finished_at"] - j["created_at"] for j in jobs
                if j["status"] == "succeeded" and window[0] <= j["created_at"] <= window[1]]

    found.b_single_s, found.b_job_s = times(b_singles), times(b_jobs)
    found.b_sent = len(b_singles) + len(b_jobs)
    found.b_unfinished = sum(j["status"] not in load.FINISHED for j in b_singles + b_jobs)
    return found


# --- the stack ------------------------------------------------------------------------------

def import_history(url: str, api_key: str) -> None:
    rows = load.history(HISTORY_ROWS)
    with httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=120) as client:
        response = client.post(f"{url}/v1/event-types/{EVENT_TYPE}/history", json={"events": rows})
        response.raise_for_status()
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            job = client.get(f"{url}/v1/jobs/{job_id}").json()
            if job["status"] in load.FINISHED:
                if job["status"] != "succeeded":
                    raise RuntimeError(f"history import {job['status']}: {job.get('error')}")
                return
            time.sleep(0.2)
    raise RuntimeError("history import did not finish")


def small_job_bodies(n: int) -> list[bytes]:
    evs = load.events(n * B_JOB_EVENTS, EVENT_TYPE, seed=13, first_index=3 * 10**6)
    return [orjson.dumps({"events": evs[k:k + B_JOB_EVENTS]})
            for k in range(0, len(evs), B_JOB_EVENTS)]


def pooled(before: Figures | None, more: Figures) -> Figures:
    """Two rounds of a phase as one: times pooled, A's events and span added up."""
    if before is None:
        return more
    return Figures(before.b_single_s + more.b_single_s, before.b_job_s + more.b_job_s,
                   before.a_events + more.a_events, before.a_span_s + more.a_span_s,
                   {k: before.cpu.get(k, 0.0) + more.cpu.get(k, 0.0)
                    for k in {*before.cpu, *more.cpu}},
                   before.b_sent + more.b_sent, before.b_unfinished + more.b_unfinished)


def bench_fairness(procs: Processes, scale: float, results: dict,
                   weights: str | None = None, rounds: int = ROUNDS) -> None:
    """Start a stack with tenants A and B, run the three phases, and leave the figures in
    ``results["fair"]`` (phase name -> Figures)."""
    from benchmarks.run_all import log, wait_idle

    redis_url = procs.start_redis("redis-fair")
    env = {"VIGIL_API_KEYS": f"{TENANT_A}:{KEY_A},{TENANT_B}:{KEY_B}", "VIGIL_RATE_LIMIT": "0"}
    if weights:
        env["VIGIL_TENANT_WEIGHTS"] = weights
    log("fair tenants: starting Vigil with tenants A and B")
    stack: Started = procs.start_vigil("Vigil (fair)", redis_url,
                                       expect_workers=len(WORKER_ARGS), **env)
    for key in (KEY_A, KEY_B):
        import_history(stack.url, key)
    r = redis.Redis.from_url(redis_url)
    a_bodies = load.job_bodies(EVENT_TYPE, 16, per_job=A_PER_JOB)
    b_singles = load.event_bodies(EVENT_TYPE, 2000)
    b_jobs = small_job_bodies(50)
    a_jobs = max(2, round(A_EVENTS / A_PER_JOB * min(1.0, scale)))
    # Every worker process loads both tenants' models once.
    run_phase(stack.url, r, a_jobs=4, with_b=True, b_seconds=0, a_bodies=a_bodies,
              b_singles=b_singles, b_jobs=b_jobs)
    wait_idle(redis_url)
    found: dict[str, Figures] = {}
    # A alone and A with B alternate, ROUNDS times: the machine is shared, and its other load
    # moves from minute to minute; each phase's figures are pooled over its rounds.
    plan = [("B alone", 0, True)] + [("A alone", a_jobs, False), ("A and B", a_jobs, True)] * rounds
    for name, a, with_b in plan:
        log(f"fair tenants: {name}")
        phase = run_phase(stack.url, r, a_jobs=a, with_b=with_b,
                          b_seconds=SECONDS["b_alone"] * scale, a_bodies=a_bodies,
                          b_singles=b_singles, b_jobs=b_jobs)
        found[name] = pooled(found.get(name), figures(r, phase))
        wait_idle(redis_url)
    results["fair"] = found
    results["fair_rounds"] = rounds
    results["fair_weights"] = weights
    procs.stop(stack)


# --- the report -----------------------------------------------------------------------------

def ms(seconds: float) -> str:
    if seconds != seconds:
        return "n/a"
    return f"{seconds * 1000:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def cpu_ms(fig: Figures, roles: tuple[str, ...], per: int) -> float:
    return 1000 * sum(fig.cpu.get(role, 0.0) for role in roles) / max(per, 1)


def report_lines(results: dict, width: int = 110) -> list[str]:
    found: dict[str, Figures] = results.get("fair") or {}
    if not found:
        return []
    lines = []
    add = lines.append
    rounds = results.get("fair_rounds", 1)
    a_jobs = round(found["A alone"].a_events / A_PER_JOB / rounds) if "A alone" in found else 0
    add(f"5. Fair tenants: A queues {a_jobs * A_PER_JOB:,} events in {A_PER_JOB:,}-event jobs "
        f"(POST /v1/jobs, {A_IN_FLIGHT} uploads at a time);")
    add(f"   B sends single events at {B_RATE:g}/s (open loop) and a {B_JOB_EVENTS}-event job every "
        f"{B_JOB_EVERY_S:g} s. Time to verdict: the job hash's created_at")
    add("   to finished_at (server-side). With A: B's jobs created while A's backlog drained "
        "(A's first created_at to last")
    add(f"   finished_at). A's throughput: its events over that span. A alone and A with B "
        f"alternate, {rounds} rounds each, pooled.")
    add("  "
        + (f" VIGIL_TENANT_WEIGHTS={results['fair_weights']}." if results.get("fair_weights")
           else " Weights: all 1 (VIGIL_TENANT_WEIGHTS unset)."))
    add(f"   {'':40}{'p50':>11}{'p99':>11}{'max':>11}{'n':>8}")
    for label, phase, attr in (("B single events, alone", "B alone", "b_single_s"),
                               ("B single events, A's backlog draining", "A and B", "b_single_s"),
                               (f"B {B_JOB_EVENTS}-event jobs, alone", "B alone", "b_job_s"),
                               (f"B {B_JOB_EVENTS}-event jobs, A's backlog draining", "A and B",
                                "b_job_s")):
        values = getattr(found[phase], attr) if phase in found else []
        add(f"   {label:40}{ms(quantile(values, 0.5)):>11}{ms(quantile(values, 0.99)):>11}"
            f"{ms(max(values) if values else math.nan):>11}{len(values):>8,}")
    for phase in ("B alone", "A and B"):
        fig = found.get(phase)
        if fig and (fig.b_unfinished or fig.b_sent < len(fig.b_single_s) + len(fig.b_job_s)):
            add(f"   {phase}: {fig.b_unfinished} of B's jobs unfinished when read")
    alone, both = found.get("A alone"), found.get("A and B")
    add(f"   {'':40}{'events/s':>11}{'span':>11}{'worker CPU ms/event':>22}")
    for label, fig in (("A's backlog drained, alone", alone), ("A's backlog drained, with B", both)):
        if fig:
            add(f"   {label:40}{fig.a_rate:>11,.0f}{fig.a_span_s:>10.1f}s"
                f"{cpu_ms(fig, ('worker',), fig.a_events):>22.3f}")
    b99 = quantile(both.b_single_s + both.b_job_s, 0.99) if both else math.nan
    drop = 1 - both.a_rate / alone.a_rate if alone and both else math.nan
    met = "n/a" if b99 != b99 else ("met" if b99 < GOALS["b_p99_s"] else "NOT MET")
    add(f"   {'B p99 (singles and jobs) while A drains':56}{ms(b99):>12}   {'< 1 s':>10}  {met}")
    met = "n/a" if drop != drop else ("met" if drop < GOALS["a_drop"] else "NOT MET")
    add(f"   {'A throughput drop with B':56}{drop * 100:>11.1f}%   {'< 10%':>10}  {met}")
    busy = ", ".join(
        f"{phase} {sum(v for k, v in fig.cpu.items() if k not in ('wall', 'others')) / fig.cpu['wall']:.2f}"
        f" (rest of the machine {fig.cpu.get('others', 0) / fig.cpu['wall']:.2f})"
        for phase, fig in found.items() if fig.cpu.get("wall"))
    add(f"   Cores busy on average, this benchmark's processes: {busy}")
    b_alone = found.get("B alone")
    if b_alone and both and both.cpu.get("wall"):
        # What B's own work takes from A on shared cores: B's CPU per request (measured alone)
        # times B's requests while A drained, over the CPU this benchmark used meanwhile.
        # The stack's roles only (API, workers, Redis): not the load generator, Flower or beat.
        serving = ("api", "worker", "events", "redis")
        per_b = sum(b_alone.cpu.get(k, 0.0) for k in serving) \
            / max(len(b_alone.b_single_s) + len(b_alone.b_job_s), 1)
        used = sum(both.cpu.get(k, 0.0) for k in serving)
        share = per_b * both.b_sent / used if used else math.nan
        add(f"   B's own work (API, workers, Redis: its CPU per request alone x its "
            f"{both.b_sent:,} requests) was {share * 100:.0f}% of theirs while A drained with B;")
        add(f"   'worker' CPU per A event with B / alone (B's jobs run on the same workers): "
            f"{cpu_ms(both, ('worker',), both.a_events) / cpu_ms(alone, ('worker',), alone.a_events):.2f}"
            if alone and alone.a_events and both.a_events else "   A's worker CPU per event: n/a")
    if b_alone:
        n = len(b_alone.b_single_s) + len(b_alone.b_job_s)
        per = ", ".join(f"{role} {cpu_ms(b_alone, roles, n):.2f}" for role, roles in ROLES.items())
        add(f"   CPU ms per B request, B alone (singles and jobs): {per}")
    add("-" * width)
    return lines


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run_all import failed, log

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply B's phase and (up to 1) A's backlog, for a quick look")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="rounds of (A alone, A and B), alternating; figures pooled")
    parser.add_argument("--weights", default=None,
                        help="VIGIL_TENANT_WEIGHTS for the stack, e.g. fair-a:3,fair-b:1")
    args = parser.parse_args(argv)
    results: dict = {}
    procs = Processes()
    code = 0
    try:
        bench_fairness(procs, args.time_scale, results, args.weights, args.rounds)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        code = 130
    except Exception as exc:
        code = failed(procs, exc)
    finally:
        procs.stop_all()
    lines = report_lines(results)
    if lines:
        print("\n".join(lines), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
