"""`make bench-capacity`: the capacity model's figures, and a check that throughput follows it.

    .venv/bin/python -m benchmarks.capacity [--time-scale 1] [--worker-core 0.2]

Starts Vigil as separate groups of processes, each in a control group of its own
(benchmarks.cgroups): Redis (one redis-server, store and broker), the API (uWSGI, 2
processes), the events worker (1 process, drains the single-event inbox) and the jobs worker
group (two Celery workers on the default queue, one process each). Then:

1. single events for a while (make bench's client: 16 submitters, verdicts read 100 at a time);
2. 1,000-event jobs in four rounds, with 1, 2, 1 and 2 jobs worker processes consuming (the
   second stops and resumes consuming: Celery's cancel_consumer / add_consumer), the group
   capped at --worker-core of a core per process consuming.

From each phase, CPU seconds per event of each group (from /proc: robust to other work on a
shared machine, unlike events/s) and Redis memory per event kept; from those, events/s per
API core, per worker core and per Redis shard, and the hosts and shards for 10k, 100k and 1M
events/s (benchmarks.capacity_model, docs/capacity.md). The check: throughput at 1 and 2
worker processes predicted from the 1-process rounds' CPU per event, printed beside the
measured figures. The cap makes the worker group, not the shared machine, the limit, so that
adding a process has something to show. Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

from benchmarks import capacity_model as model
from benchmarks import load
from benchmarks.cgroups import Groups
from benchmarks.run_all import (
    HISTORY_ROWS,
    MAIN_TYPE,
    NO_RATE_LIMIT,
    Phase,
    import_history,
    log,
    machine,
    measured,
    run,
    wait_idle,
    wait_inbox_empty,
)
from benchmarks.stack import Processes, Started, child_env
from core.config import Settings
from core.server import PROCESSES as API_PROCESSES
from tasks import WORKER_ARGS, create_celery

SECONDS = {"warmup": 3, "single": 10, "batch": 12}
ROUNDS = (1, 2, 1, 2)  # jobs worker processes consuming, round by round
JOBS_WORKERS = ("worker1", "worker2")
WORKER_CORE = 0.1  # CPU cap per jobs worker process: 2 of them + the rest fit on 2 shared cores
# 1,000-event jobs in flight per jobs worker process: one judged, two waiting, so no process
# waits for the client. Per process, so that a job waits as long (and is polled as often, API
# CPU per event) at 1 and at 2 processes.
IN_FLIGHT_PER_WORKER = 3
POLL_S = 0.1  # the client's status polls of a job (make bench: 0.05): fewer polls, less API CPU
MACHINE_CORES = os.cpu_count() or 1
# CPU per event by group: the roles of benchmarks.stack.role_of each one adds up.
GROUPS = {"client": ("client",), "api": ("api",), "events": ("events",), "worker": ("worker",),
          "redis": ("redis",), "rest": ("other", "flower", "beat", "run.py")}
SHORT_TTL_S = 3600  # the plan's second memory column: verdicts kept an hour instead of a day
# Retraining's CPU comes per event type and interval, not per event (docs/capacity.md: not
# modelled); with the default 60 s, a retrain landed in the third round of jobs, on the capped
# worker group, every run.
NO_RETRAINING = {"VIGIL_RETRAIN_INTERVAL": "86400"}
MIX_SINGLE_SHARE = 0.1  # the mixed row of the plan: a tenth of the events sent one by one


@dataclass
class Measured:
    """A phase, with what /proc cannot tell: Redis memory and the cap's throttling."""
    phase: Phase
    redis_bytes: float  # used_memory grown per event judged
    throttled_s: float  # time the jobs worker group was held back by its cap
    workers: int  # jobs worker processes

    def cpu_s(self, group: str) -> float:
        """CPU seconds per event of a group."""
        used = sum(self.phase.cpu.get(role, 0.0) for role in GROUPS[group])
        return used / max(self.phase.events, 1)

    @property
    def others_cores(self) -> float:
        """Cores the rest of the machine (other people's work) kept busy meanwhile."""
        return self.phase.cpu.get("others", 0.0) / max(self.phase.cpu.get("wall", 1.0), 1e-9)

    @property
    def per_s(self) -> float:
        return self.phase.result.per_s


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def celery_worker(procs: Processes, name: str, args: list[str], env: dict[str, str],
                  cgroup: Path | None) -> Started:
    celery = str(Path(sys.executable).parent / "celery")
    return procs.start_process(name, [celery, "-A", "tasks.worker", "--quiet", "worker",
                                      "--loglevel", "WARNING", "-E", "--hostname", f"{name}@%h",
                                      *args], env, cgroup)


def wait_workers(api: Started, count: int, timeout_s: float = 120) -> None:
    """Until the API's /readyz counts `count` Celery workers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if httpx.get(f"{api.url}/readyz", timeout=5).json().get("workers", 0) >= count:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{count} workers did not answer within {timeout_s:.0f} s")


def model_version(api: Started) -> int | None:
    answer = httpx.get(f"{api.url}/v1/event-types/{MAIN_TYPE}/model", headers=load.HEADERS, timeout=10)
    return answer.json().get("version") if answer.status_code == 200 else None


def redis_used(redis_url: str) -> int:
    return int(redis.Redis.from_url(redis_url).info("memory")["used_memory"])


def phase(name: str, work, redis_url: str, groups: Groups, cgroup: Path | None,
          workers: int) -> Measured:
    memory, throttled = redis_used(redis_url), groups.throttled_s(cgroup)
    done = measured(name, work)
    return Measured(done, (redis_used(redis_url) - memory) / max(done.events, 1),
                    groups.throttled_s(cgroup) - throttled, workers)


def combined(name: str, parts: list[Measured]) -> Measured:
    """Rounds of one setting as one phase: CPU, events and time added up."""
    cpu: dict[str, float] = {}
    for m in parts:
        for role, used in m.phase.cpu.items():
            cpu[role] = cpu.get(role, 0.0) + used
    events = sum(m.phase.events for m in parts)
    result = load.Throughput(events=events, elapsed_s=sum(m.phase.result.elapsed_s for m in parts))
    return Measured(Phase(name, result, cpu, events),
                    sum(m.redis_bytes * m.phase.events for m in parts) / max(events, 1),
                    sum(m.throttled_s for m in parts), parts[0].workers)


def bench(procs: Processes, groups: Groups, scale: float, worker_core: float, out: dict) -> None:
    """Runs the phases, filling `out` as they end (a failed run still reports what it got)."""
    group = {name: groups.make(name) for name in ("redis", "api", "events", "workers")}
    redis_url = procs.start_redis("redis", group["redis"])
    env = child_env(REDIS_URL=redis_url, **NO_RATE_LIMIT, **NO_RETRAINING)
    log("starting the API, the events worker and 2 jobs workers, each group in its own cgroup")
    api = procs.start_server("api", "api.wsgi:app", group["api"], REDIS_URL=redis_url,
                             **NO_RATE_LIMIT, **NO_RETRAINING)
    celery_worker(procs, "events", WORKER_ARGS["events"], env, group["events"])
    jobs_args = ["-Q", "celery", "--concurrency", "1", "--prefetch-multiplier", "1"]
    for name in JOBS_WORKERS:
        celery_worker(procs, name, jobs_args, env, group["workers"])
    wait_workers(api, 1 + len(JOBS_WORKERS))
    control = create_celery(Settings(redis_url=redis_url)).control

    log(f"seeding: {MAIN_TYPE}, {HISTORY_ROWS:,} rows (uncapped)")
    import_history(api.url, MAIN_TYPE, load.history(HISTORY_ROWS))
    jobs, singles = load.job_bodies(MAIN_TYPE, 16), load.event_bodies(MAIN_TYPE, 5000)
    warm = SECONDS["warmup"] * scale
    # Every process loads the model before anything is measured.
    run(load.batch_stream(api.url, jobs, warm, in_flight=2 * IN_FLIGHT_PER_WORKER))
    run(load.single_stream(api.url, singles, warm, submitters=4))
    wait_idle(redis_url)

    out.update(worker_core=worker_core, capped=groups.available, rounds=[],
               model_versions=[model_version(api)])
    log("1. single events")
    out["single"] = phase("single events", lambda: run(load.single_stream(
        api.url, singles, SECONDS["single"] * scale)), redis_url, groups, group["events"], 0)
    wait_inbox_empty(redis_url)
    wait_idle(redis_url)

    # 1, 2, 1, 2 processes: the machine's speed drifts (other people's work), and alternating
    # spreads the drift over both settings instead of giving it to one.
    second = f"{JOBS_WORKERS[1]}@{socket.gethostname()}"
    for k, workers in enumerate(ROUNDS):
        # The second process stays up (its model loaded) and stops or resumes consuming.
        if workers == 1:
            control.cancel_consumer("celery", destination=[second], reply=True, timeout=5)
            # A BRPOP it had already sent (Celery's Redis transport waits 1 s at a time) must
            # not take the round's first job.
            time.sleep(2)
        else:
            control.add_consumer("celery", destination=[second], reply=True, timeout=5)
        groups.cap(group["workers"], workers * worker_core)
        in_flight = workers * IN_FLIGHT_PER_WORKER
        log(f"2. 1,000-event jobs, {workers} jobs worker process(es), round {k + 1}/{len(ROUNDS)}")
        out["rounds"].append(phase(f"jobs, {workers} worker #{k // 2 + 1}", lambda n=in_flight: run(
            load.batch_stream(api.url, jobs, SECONDS["batch"] * scale, in_flight=n, poll_s=POLL_S)),
            redis_url, groups, group["workers"], workers))
        wait_idle(redis_url)
    out["model_versions"].append(model_version(api))
    for workers in (1, 2):
        parts = [m for m in out["rounds"] if m.workers == workers]
        if parts:
            out[f"batch{workers}"] = combined(f"jobs, {workers} worker, all", parts)


# --- the report ---------------------------------------------------------------------------

def costs_of(m: Measured, worker_groups: tuple[str, ...]) -> model.Costs:
    return model.Costs(api=m.cpu_s("api"), worker=sum(m.cpu_s(g) for g in worker_groups),
                       redis=m.cpu_s("redis"), redis_bytes=max(0.0, m.redis_bytes))


def prediction(base: Measured, workers: int, worker_core: float | None) -> tuple[float, str]:
    """Events/s of the batch path with `workers` jobs worker processes, from base's CPU per
    event: each group's cores over its CPU per event, the slowest group sets the rate. The
    machine's cores bound everything this benchmark runs together (the load generator too);
    other people's work on them is not subtracted: under fair scheduling it takes what is
    left, so what it took is no measure of what it would yield."""
    total = sum(base.cpu_s(g) for g in GROUPS)
    worker_cores = workers * worker_core if worker_core else float(workers)
    return model.predicted_rate({
        "jobs workers": (worker_cores, base.cpu_s("worker")),
        "API": (float(API_PROCESSES), base.cpu_s("api")),
        "Redis": (1.0, base.cpu_s("redis")),
        "machine": (float(MACHINE_CORES), total),
    })


def fmt_rate(x: float) -> str:
    return "n/a" if x != x else ("unbounded" if math.isinf(x) else f"{x:,.0f}")


def report(out: dict, started: datetime, header: str, uptimes: tuple[str, str],
           scale: float) -> str:
    width = 110
    lines = ["=" * width]
    add = lines.append
    add(f"Vigil capacity (make bench-capacity), {started:%Y-%m-%d %H:%M} UTC, "
        f"{(datetime.now(UTC) - started).total_seconds():.0f} s"
        + (f", phases x{scale}" if scale != 1 else ""))
    add(f"machine: {header}")
    add(f"uptime at start: {uptimes[0]}")
    add(f"uptime at end:   {uptimes[1]}")
    worker_core = out["worker_core"] if out["capped"] else None
    add(f"groups, each in its own cgroup: Redis (1 redis-server: store and broker), API (uWSGI, "
        f"{API_PROCESSES} processes), events worker")
    add("  (1 process), jobs workers (Celery -Q celery --concurrency 1 each, 1 or 2 consuming); "
        + (f"the jobs worker group capped at {worker_core:.2f} core per process (CPU quota, raised weight)"
           if worker_core else "NOT capped: no cgroup could be made here (needs root)"))
    versions = out.get("model_versions", [])
    add("  VIGIL_RATE_LIMIT=0, VIGIL_RETRAIN_INTERVAL=86400 (model version "
        + " -> ".join(str(v) for v in versions) + " over the phases), otherwise defaults;")
    add("  load generator on the same cores (make bench's client).")
    add("-" * width)
    add("CPU per event by group (core-ms), from /proc; 'others' = cores busy with work outside "
        "this benchmark;")
    add("'capped s' = time the jobs worker group's processes waited on its cap (cgroup throttled_time, "
        "summed over CPUs)")
    add(f"   {'phase':20}{'events':>9}{'wall s':>8}{'events/s':>10}"
        + "".join(f"{g:>8}" for g in GROUPS) + f"{'others':>8}{'capped s':>10}{'Redis B/event':>15}")
    phases = [out[k] for k in ("single",) if k in out] + out.get("rounds", []) \
        + [out[k] for k in ("batch1", "batch2") if k in out]
    for m in phases:
        add(f"   {m.phase.name:20}{m.phase.events:>9,}{m.phase.cpu.get('wall', 0):>8.1f}"
            f"{fmt_rate(m.per_s):>10}" + "".join(f"{1000 * m.cpu_s(g):>8.3f}" for g in GROUPS)
            + f"{m.others_cores:>8.2f}{m.throttled_s:>10.1f}{m.redis_bytes:>15,.0f}")
    add("-" * width)
    if "single" not in out or "batch1" not in out:
        add("(incomplete run: no model)")
        add("=" * width)
        return "\n".join(lines)

    single = costs_of(out["single"], ("events", "worker"))
    batch = costs_of(out["batch1"], ("worker", "events"))
    add("Events/s per core (1 / CPU seconds per event); a Redis shard is one redis-server, one core "
        "for commands")
    add(f"   {'':24}{'API core':>12}{'worker core':>14}{'Redis shard':>14}{'Redis bytes/event kept':>25}")
    for label, c in (("single events", single), ("1,000-event jobs", batch)):
        add(f"   {label:24}{fmt_rate(model.per_core(c.api)):>12}{fmt_rate(model.per_core(c.worker)):>14}"
            f"{fmt_rate(model.per_core(c.redis)):>14}{c.redis_bytes:>25,.0f}")
    add("   (single events: worker = the events worker; jobs: the jobs workers, from the 1-process phase)")
    add("-" * width)

    add("Scaling check: 1,000-event jobs, the jobs worker group at 1 then 2 processes, "
        f"{IN_FLIGHT_PER_WORKER} jobs in flight per")
    add(f"process, polled every {POLL_S:g} s, rounds of 1, 2, 1, 2 processes added up. Predicted from "
        "the 1-process rounds'")
    add("CPU per event: each group sustains (its cores) / (its CPU s per event), the slowest sets the "
        "rate; jobs workers:")
    add(f"{'one core per process' if worker_core is None else f'{worker_core:.2f} core per process'}; "
        f"API: {API_PROCESSES} cores; Redis: 1; machine: {MACHINE_CORES} cores over every group's CPU, "
        "load generator included.")
    add(f"   {'':36}{'1 process':>14}{'2 processes':>14}{'2 / 1':>10}")
    base = out["batch1"]
    preds = [prediction(base, m.workers, worker_core)
             for m in (out["batch1"], out.get("batch2")) if m is not None]
    got = [m.per_s for m in (out["batch1"], out.get("batch2")) if m is not None]

    def row(label: str, values: list[str], ratio: str = "") -> None:
        add(f"   {label:36}" + "".join(f"{v:>14}" for v in values) + f"{ratio:>10}")

    def times(a: list[float]) -> str:
        return f"{a[1] / a[0]:.2f}x" if len(a) == 2 and a[0] > 0 else ""

    row("predicted (1-process CPU per event)", [fmt_rate(p[0]) for p in preds], times([p[0] for p in preds]))
    row("limited by (predicted)", [p[1] for p in preds])
    row("measured events/s", [fmt_rate(g) for g in got], times(got))
    row("measured / predicted", [f"{g / p[0]:.2f}" if p[0] else "n/a" for g, p in zip(got, preds)])
    # The same arithmetic on each phase's own CPU per event: what is left between this and the
    # measured figure is the model's; what is between the two predictions, the cost moving.
    own = [prediction(m, m.workers, worker_core)
           for m in (out["batch1"], out.get("batch2")) if m is not None]
    row("predicted (its own CPU per event)", [fmt_rate(p[0]) for p in own], times([p[0] for p in own]))
    row("jobs worker CPU ms/event", [f"{1000 * m.cpu_s('worker'):.4f}"
                                     for m in (out["batch1"], out.get("batch2")) if m is not None])
    add("-" * width)

    a = model.Assumptions()
    add(f"Plan (docs/capacity.md has every assumption): hosts of {a.cores_per_host} cores at "
        f"{a.host_use:.0%} use + {a.spare_hosts} spare per group;")
    add(f"Redis shards at {a.shard_use:.0%} of one core; memory: {a.shard_memory_gb:g} GB of data per "
        f"shard, verdicts kept VIGIL_JOB_TTL={a.job_ttl_s:,.0f} s.")
    short = model.Assumptions(job_ttl_s=SHORT_TTL_S)
    add(f"   {'mix':28}{'events/s':>11}{'API hosts':>11}{'worker hosts':>14}{'shards (CPU)':>14}"
        f"{'shards (memory)':>17}{f'(TTL {SHORT_TTL_S / 3600:g} h)':>14}")
    mixes = (("single events", single), ("1,000-event jobs", batch),
             (f"{MIX_SINGLE_SHARE:.0%} single, rest in jobs", batch.mixed(single, MIX_SINGLE_SHARE)))
    for label, c in mixes:
        for rate in model.RATES:
            p = model.plan(rate, c, a)
            add(f"   {label:28}{rate:>11,}{p.api_hosts:>11,}{p.worker_hosts:>14,}{p.shards_cpu:>14,}"
                f"{p.shards_memory:>17,}{model.plan(rate, c, short).shards_memory:>14,}")
    add("=" * width)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply every phase's duration (e.g. 0.3 for a quick look)")
    parser.add_argument("--worker-core", type=float, default=WORKER_CORE,
                        help="CPU cap per jobs worker process, in cores")
    args = parser.parse_args(argv)
    started, header, first_uptime = datetime.now(UTC), machine(), uptime()
    procs, groups = Processes(), Groups()
    if not groups.available:
        log("no cgroup could be made (root needed): the groups run uncapped")
    out: dict = {}
    code = 0
    try:
        bench(procs, groups, args.time_scale, args.worker_core, out)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        code = 130
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        for started_proc in procs.started:
            tail = started_proc.log_tail(2000)
            if tail:
                log(f"--- end of {started_proc.name}'s log ---\n{tail}")
        code = 1
    finally:
        procs.stop_all()
        groups.remove()
    if "single" in out:
        print(report(out, started, header, (first_uptime, uptime()), args.time_scale), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
