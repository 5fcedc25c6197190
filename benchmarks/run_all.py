"""`make bench`: Vigil against two reference designs, same events, same machine, one run.

    .venv/bin/python -m benchmarks.run_all [--time-scale 0.5] [--only vigil,a,b,floor]

1. Vigil (scripts/run.py with defaults, its own Redis on a free port): the batch path
   end-to-end and the in-process ceiling of the same checks; the single-event path end-to-end
   and its submit latency at a fixed offered rate while a batch backlog keeps the workers busy;
   the batch path for event types with 10^3, 10^5 and 10^7 events of history.
2. Reference (a): the same stack with VIGIL_MICRO_BATCH=off (a task per single event).
3. Reference (b): benchmarks/sync_api.py served as the API is (checks in the request handler).
4. The HTTP floor: benchmarks/noop_app.py served as the API is, driven as (b) is: what one submit costs
   the load generator and the server before any design does anything with the event.
5. Fair tenants (benchmarks/fairness.py, also `make bench-fairness`): tenant A's backlog of
   1,000-event jobs next to tenant B's single events at 50/s and small jobs.

Prints one table (and where the CPU went). Figures only: nothing is asserted, and the
machine may be shared, so they move from run to run. Every process started is stopped at
the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import redis
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import load
from benchmarks.fairness import bench_fairness
from benchmarks.fairness import report_lines as fairness_lines
from benchmarks.inprocess import ceiling
from benchmarks.stack import ROOT, Processes, Started, cpu_between, cpu_sample
from core import keys
from core.config import DEV_TENANT, Settings
from core.localredis import AOF_REWRITE_MIN_SIZE
from core.quantiles import Buckets, difference, histogram_buckets, quantile
from core.server import DEFAULT_SERVER
from ml.stats import Moments
from tasks import WORKER_ARGS
from tasks.store import baselines, jobs, model_blobs

MAIN_TYPE = "bench"
HISTORY_ROWS = 2000
RATE = 500  # offered single-event submits per second for the latency figures
# A rate every design sustains on a small machine, for latencies that are not queueing delay.
LOW_RATE = 10
TIMEOUT_S = 5.0  # a submit unanswered after this long counts as failed (slower than any answer)
PER_JOB = 1000
IMPORT_CHUNK = 10_000  # events per history-import job (VIGIL_MAX_EVENTS_PER_JOB)
# (history size, event type, history imported through the API; the rest as moments)
SCALES = [(10**3, "hist-1e3", 10**3), (10**5, "hist-1e5", 10**5), (10**7, "hist-1e7", 10**4)]
# The one benchmark tenant sends more than the default limit of 1,000 requests/s per tenant.
NO_RATE_LIMIT = {"VIGIL_RATE_LIMIT": "0"}
# Seconds per phase (multiplied by --time-scale).
SECONDS = {"batch": 12, "ceiling": 4, "single": 10, "latency_low": 10, "latency": 8, "scale": 5,
           "warmup": 2, "floor": 5}
GOALS = {"batch": 20_000, "ceiling_share": 0.5, "single": 1_500, "p99_ms": 10,
         "vs_b": 10}
# Columns of the CPU table: the roles of benchmarks.stack.role_of each one adds up.
COLUMNS = {"client": ("client",), "api": ("api", "sync api"), "worker": ("worker",),
           "events": ("events",), "redis": ("redis",), "flower+": ("flower", "beat", "run.py", "other"),
           "machine": ("others",)}


@dataclass
class Phase:
    """One measured phase: its figures and the CPU each component used meanwhile."""
    name: str
    result: Any
    cpu: dict[str, float] = field(default_factory=dict)
    events: int = 0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measured(name: str, work, events_of=lambda result: result.events) -> Phase:
    before = cpu_sample()
    result = work()
    phase = Phase(name, result, cpu_between(before, cpu_sample()))
    phase.events = events_of(result)
    return phase


# --- talking to a stack ---------------------------------------------------------------------

def wait_job(client: httpx.Client, url: str, job_id: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"{url}/v1/jobs/{job_id}").json()
        if job["status"] in load.FINISHED:
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
            return job
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} did not finish within {timeout_s:.0f} s")


def import_history(url: str, event_type: str, rows: list[dict]) -> None:
    """POST /v1/event-types/{type}/history in jobs of at most IMPORT_CHUNK rows; waits for all."""
    with httpx.Client(headers=load.HEADERS, timeout=120) as client:
        ids = []
        for k in range(0, len(rows), IMPORT_CHUNK):
            response = client.post(f"{url}/v1/event-types/{event_type}/history",
                                   json={"events": rows[k:k + IMPORT_CHUNK]})
            response.raise_for_status()
            ids.append(response.json()["job_id"])
        for job_id in ids:
            wait_job(client, url, job_id)


def seed_moments(redis_url: str, event_type: str, extra: int) -> None:
    """Merge the all-time moments of `extra` synthetic values per field (numpy, like the
    history) into the baseline with tasks.store.baselines.apply_batch. No history rows: the history
    list is bounded (VIGIL_HISTORY_MAX_ROWS) and already full from the import."""
    rng = np.random.default_rng(11)
    fields = {"amount": 0, "cart.items": 1, "latency_ms": 2}
    moments = {f: Moments.of(rng.normal(load.MEANS[i], load.STDS[i], size=extra))
               for f, i in fields.items()}
    baselines.apply_batch(redis.Redis.from_url(redis_url), Settings(redis_url=redis_url), DEV_TENANT,
                      event_type, f"bench-synthetic-{event_type}", moments, rows=[])


def wait_idle(redis_url: str, timeout_s: float = 90) -> None:
    """Until the broker's queues and unacknowledged messages are empty (a phase's leftovers
    done), then a moment for the last tasks to finish."""
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:
        busy = r.llen("celery") + r.llen("events") + r.hlen("unacked")
        quiet = quiet + 1 if busy == 0 else 0
        time.sleep(0.3)
    time.sleep(0.5)


def wait_answering(url: str, timeout_s: float = 90) -> None:
    """Until three health checks in a row are answered within 100 ms: requests left queued by
    an overloaded phase (their clients gone) answered, so they do not slow the next one."""
    deadline = time.monotonic() + timeout_s
    quick = 0
    while quick < 3 and time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            httpx.get(f"{url}/healthz", timeout=10).raise_for_status()
            quick = quick + 1 if time.perf_counter() - started < 0.1 else 0
        except httpx.HTTPError:
            quick = 0
        time.sleep(0.2)


def type_figures(redis_url: str, event_type: str) -> dict:
    r = redis.Redis.from_url(redis_url)
    baseline = baselines.load_baseline(r, DEV_TENANT, event_type, ["amount"])
    meta = model_blobs.model_meta(r, DEV_TENANT, event_type) or {}
    return {"n": baseline["amount"].n if baseline else 0,
            "rows": baselines.history_count(r, DEV_TENANT, event_type),
            "model_rows": meta.get("rows")}


def run(coro):
    return asyncio.run(coro)


def latency(stack: Started, offered: float, seconds: float, bodies: list[bytes],
            busy: list[str] | None, ok_status: int = 202, name: str = "") -> Phase:
    """Submit latency at `offered` req/s (open loop), alone or, with `busy` (the arguments of
    a `benchmarks.load` command: `saturate` for Vigil and (a), `judge-batches` for (b)), while
    that process keeps the system busy with batch checks."""
    saturator = None
    if busy is not None:
        saturator = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.load", *busy, "--url", stack.url,
             "--seconds", str(seconds + 4)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The batch work starts first (a backlog queued, or the first job judged); then the
        # system is busy with it.
        if saturator.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the batch work ({busy[0]}) could not be started:\n"
                               f"{saturator.stderr.read()[-2000:]}")
        time.sleep(2)
    try:
        phase = measured(f"{name or stack.name} @{offered:g}/s", lambda: run(load.open_loop(
            stack.url, bodies, offered, seconds, timeout_s=TIMEOUT_S, ok_status=ok_status)),
            lambda result: result.sent)
        # Failed meanwhile (it outlasts the sending otherwise), the figures would pass an
        # idle system for a busy one.
        if saturator is not None and saturator.poll() not in (None, 0):
            raise RuntimeError(f"the batch work ({busy[0]}) stopped during the measurement:\n"
                               f"{saturator.stderr.read()[-2000:]}")
        return phase
    finally:
        if saturator is not None:
            saturator.terminate()
            try:
                saturator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                saturator.kill()
                saturator.wait()


def warm_up(stack: Started, seconds: float, jobs: list[bytes], singles: list[bytes]) -> None:
    """Every worker process loads the model once."""
    run(load.batch_stream(stack.url, jobs, seconds, in_flight=4))
    run(load.single_stream(stack.url, singles, seconds, submitters=4))


def single_events(stack: Started, redis_url: str, scale: float, singles: list[bytes],
                  results: dict, prefix: str) -> None:
    """Throughput, then latency at LOW_RATE and at RATE (last: it may leave a backlog that is
    not waited for; the stack is stopped next)."""
    results[f"{prefix}single"] = measured(f"{stack.name} single", lambda: run(
        load.single_stream(stack.url, singles, SECONDS["single"] * scale)))
    # No wait for leftovers: the latency phases want the workers busy anyway.
    for key, offered in (("latency_low", LOW_RATE), ("latency", RATE)):
        log(f"{stack.name}: submit latency at {offered}/s, workers busy")
        before = single_verdict_buckets(stack.url)
        results[f"{prefix}{key}"] = latency(stack, offered, SECONDS[key] * scale, singles,
                                            busy=["saturate", "--redis", redis_url])
        if key == "latency_low":
            wait_idle(redis_url)
        else:  # time to verdict of this phase's single events, once they all have one
            wait_inbox_empty(redis_url)
            results[f"{prefix}verdict"] = difference(single_verdict_buckets(stack.url), before)


def single_verdict_buckets(url: str) -> Buckets:
    """vigil_time_to_verdict_seconds{kind="single"} from the stack's /metrics (make run's API
    adds up its workers' metrics), read before and after a phase."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=30).text
    except httpx.HTTPError as exc:
        # An overloaded reference design may not answer in time: its time to verdict is then
        # reported as n/a, and the benchmark goes on to the other systems.
        log(f"{url}/metrics did not answer ({type(exc).__name__}); time to verdict: n/a")
        return []
    return histogram_buckets(text_string_to_metric_families(text),
                             "vigil_time_to_verdict_seconds", "kind").get("single", [])


def wait_inbox_empty(redis_url: str, timeout_s: float = 60) -> None:
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    # A tenant leaves the ring once the worker finds its inbox empty, after its last batch.
    while r.scard(keys.events_ring()) and time.monotonic() < deadline:
        time.sleep(0.2)


# --- the three systems ----------------------------------------------------------------------

def bench_vigil(procs: Processes, scale: float, results: dict) -> None:
    history = load.history(HISTORY_ROWS)
    jobs = load.job_bodies(MAIN_TYPE, 16)
    singles = load.event_bodies(MAIN_TYPE, 5000)
    redis_url = procs.start_redis("redis-vigil")
    log("starting Vigil (scripts/run.py)")
    stack = procs.start_vigil("Vigil", redis_url, expect_workers=len(WORKER_ARGS), **NO_RATE_LIMIT)
    log(f"seeding: {MAIN_TYPE} {HISTORY_ROWS} rows; history sizes 10^3, 10^5, 10^7")
    import_history(stack.url, MAIN_TYPE, history)
    for size, event_type, imported in SCALES:
        import_history(stack.url, event_type, load.history(imported, seed=5))
        if size > imported:
            seed_moments(redis_url, event_type, size - imported)
    warm_up(stack, SECONDS["warmup"] * scale, jobs, singles)
    wait_idle(redis_url)

    log("1. batch path")
    r = redis.Redis.from_url(redis_url)
    version = model_blobs.model_version(r, DEV_TENANT, MAIN_TYPE) or 0
    results["batch"] = measured("Vigil batch", lambda: run(
        load.batch_stream(stack.url, jobs, SECONDS["batch"] * scale, in_flight=4)))
    results["retrained"] = (model_blobs.model_version(r, DEV_TENANT, MAIN_TYPE) or 0) - version
    wait_idle(redis_url)
    log("1. in-process ceiling")
    for key, parsing in (("ceiling", True), ("ceiling_checks", False)):
        judged, seconds = ceiling(history, jobs, Settings(), SECONDS["ceiling"] * scale,
                                  with_parsing=parsing)
        results[key] = load.Throughput(events=judged, elapsed_s=seconds)

    results["scale"] = []
    for size, event_type, _ in SCALES:
        log(f"4. history {size:.0e}")
        figures = type_figures(redis_url, event_type)
        bodies = load.job_bodies(event_type, 8, seed=9)
        run(load.batch_stream(stack.url, bodies[:2], 1, in_flight=2))  # load this type's model
        phase = measured(f"history {size:.0e}", lambda b=bodies: run(
            load.batch_stream(stack.url, b, SECONDS["scale"] * scale, in_flight=4)))
        results["scale"].append((size, figures, phase))
        wait_idle(redis_url)

    log("2. single events")
    single_events(stack, redis_url, scale, singles, results, "")
    log("stopping Vigil")
    procs.stop(stack)


def bench_reference_a(procs: Processes, scale: float, results: dict) -> None:
    jobs = load.job_bodies(MAIN_TYPE, 16)
    singles = load.event_bodies(MAIN_TYPE, 5000)
    redis_url = procs.start_redis("redis-a")
    log("starting reference (a): scripts/run.py with VIGIL_MICRO_BATCH=off")
    stack = procs.start_vigil("(a)", redis_url, expect_workers=len(WORKER_ARGS), **NO_RATE_LIMIT,
                              VIGIL_MICRO_BATCH="off")
    import_history(stack.url, MAIN_TYPE, load.history(HISTORY_ROWS))
    warm_up(stack, SECONDS["warmup"] * scale, jobs, singles)
    wait_idle(redis_url)
    log("3a. single events")
    single_events(stack, redis_url, scale, singles, results, "a_")
    log("stopping reference (a)")
    procs.stop(stack)


def bench_reference_b(procs: Processes, scale: float, results: dict) -> None:
    from tasks.history import import_history as import_in_process

    singles = load.event_bodies(MAIN_TYPE, 5000)
    redis_url = procs.start_redis("redis-b")
    # Seeded with the code the history-import task runs, in this process (no workers here).
    r, cfg = redis.Redis.from_url(redis_url), Settings(redis_url=redis_url)
    job_id = jobs.create_job(r, cfg, DEV_TENANT, kind="history", events=load.history(HISTORY_ROWS),
                              event_type=MAIN_TYPE)
    import_in_process(r, cfg, DEV_TENANT, {"job_id": job_id, "event_type": MAIN_TYPE})
    log(f"starting reference (b): benchmarks.sync_api under {DEFAULT_SERVER} as Vigil's API")
    server = procs.start_server("(b)", "benchmarks.sync_api:create_app()", REDIS_URL=redis_url)
    run(load.sync_stream(server.url, singles, SECONDS["warmup"] * scale))
    log("3b. single events")
    results["b_single"] = measured("(b) single", lambda: run(
        load.sync_stream(server.url, singles, SECONDS["single"] * scale)))
    # Alone, then while two batch jobs at a time are judged in its handler: (b) has no
    # workers, so that is where the batch work that keeps Vigil's workers busy goes.
    for prefix, busy in (("b_", None), ("b_busy_", ["judge-batches"])):
        for key, offered in (("latency_low", LOW_RATE), ("latency", RATE)):
            log(f"(b): latency at {offered}/s" + (", judging batch jobs" if busy else ""))
            wait_answering(server.url)
            results[f"{prefix}{key}"] = latency(server, offered, SECONDS[key] * scale, singles,
                                                busy, ok_status=200,
                                                name="(b) busy" if busy else "")
    log("stopping reference (b)")
    procs.stop(server)


def bench_http_floor(procs: Processes, scale: float, results: dict) -> None:
    """What a submit costs before any design does anything with it: a no-op WSGI app
    (benchmarks/noop_app.py) served as Vigil's API is and driven as (b) is, on an otherwise
    idle machine: CPU per request (closed loop) and latency (open loop)."""
    singles = load.event_bodies(MAIN_TYPE, 5000)
    log(f"HTTP floor: benchmarks.noop_app under {DEFAULT_SERVER} as Vigil's API")
    server = procs.start_server("HTTP floor", "benchmarks.noop_app:app")
    run(load.sync_stream(server.url, singles, SECONDS["warmup"] * scale))
    results["floor_single"] = measured("HTTP floor", lambda: run(
        load.sync_stream(server.url, singles, SECONDS["floor"] * scale)))
    for key, offered in (("latency_low", LOW_RATE), ("latency", RATE)):
        results[f"floor_{key}"] = latency(server, offered, SECONDS[key] * scale, singles,
                                          busy=None, ok_status=200, name="HTTP floor")
    procs.stop(server)


def cpu_ms_per_event(phase: Phase | None, roles: tuple[str, ...] | None = None) -> float:
    """Core-ms per event of these roles (benchmarks.stack.role_of), or of everything the
    benchmark started, load generator included (the rest of the machine left out)."""
    if phase is None:
        return math.nan
    used = (sum(phase.cpu.get(role, 0) for role in roles) if roles is not None
            else sum(v for k, v in phase.cpu.items() if k not in ("wall", "others")))
    return 1000 * used / max(phase.events, 1)


# --- the table ------------------------------------------------------------------------------

def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs (nproc), {model}; Linux {platform.release()}; "
            f"Python {platform.python_version()}; load average at start {load_avg}")


def rate(x: float) -> str:
    return f"{x:,.0f}" if x == x else "n/a"


def ms(seconds: float) -> str:
    if seconds != seconds:
        return "n/a"
    if math.isinf(seconds):
        return f"> {TIMEOUT_S:g} s"
    return f"{seconds * 1000:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def times(x: float) -> str:
    return "n/a" if x != x or math.isinf(x) else f"{x:,.1f}x"


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT MET")


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else math.nan


def describe_codes(codes) -> str:
    return ", ".join(f"{n:,} {'timed out or no answer' if code == 0 else f'HTTP {code}'}"
                     for code, n in codes.most_common())


def report(results: dict, started: datetime, header: str, scale: float) -> str:
    nan = math.nan
    lines = []
    add = lines.append
    get = results.get
    width = 110
    add("=" * width)
    add(f"Vigil benchmark (make bench), {started:%Y-%m-%d %H:%M} UTC, "
        f"{(datetime.now(UTC) - started).total_seconds():.0f} s" + (
            f", phases x{scale}" if scale != 1 else ""))
    add(f"machine: {header}")
    add("Vigil: defaults (VIGIL_* unset, dev API key) but VIGIL_RATE_LIMIT=0, scripts/run.py: API "
        f"{DEFAULT_SERVER} 2 processes, 'worker' 2 processes,")
    add("  'events' 1 process (drains the single-event inbox), beat, Flower; each system its own Redis "
        f"(AOF everysec, rewritten past {AOF_REWRITE_MIN_SIZE})")
    add("  on this machine; load generator on the same cores: one asyncio process (a minimal HTTP/1.1 "
        "client with")
    add("  keep-alive, orjson) + one process that queues the batch backlog. Events: "
        f"{HISTORY_ROWS:,} history rows, 3 numeric")
    add("  fields (amount, cart.items, latency_ms); events like the history, 1% with amount at +6 sigma.")
    add("-" * width)

    batch = get("batch")
    batch_rate = batch.result.per_s if batch else nan
    ceiling_rate = get("ceiling").per_s if get("ceiling") else nan
    share = ratio(batch_rate, ceiling_rate)
    add("1. Batch path: 1,000-event JSON jobs, POST /v1/jobs, poll GET /v1/jobs/{id} (50 ms) "
        "until succeeded, 4 in flight")
    add(f"   {'':56}{'events/s':>12}   {'goal':>10}")
    note = (f"   ({batch.result.events:,} events in {batch.result.elapsed_s:.1f} s, "
            f"{batch.result.invalid:,} invalid, {batch.result.errors} errors; the model was retrained "
            f"{get('retrained', 0)} times meanwhile)") if batch else ""
    add(f"   {'Vigil end-to-end (submit -> verdicts read)':56}{rate(batch_rate):>12}   "
        f"{'>= 20,000':>10}  {met(batch_rate >= GOALS['batch'] if batch else None)}")
    if note:
        add(note)
    if batch and batch.result.unmodelled:
        add(f"   ({batch.result.unmodelled:,} verdicts had no anomaly score: no model loaded)")
    checks_rate = get("ceiling_checks").per_s if get("ceiling_checks") else nan
    add(f"   {'in-process ceiling: same bodies, 1 process, no HTTP/Redis':56}"
        f"{rate(ceiling_rate):>12}")
    add("     (JSON parse + the API's marshmallow schema + z-scores + IsolationForest)")
    add(f"   {'end-to-end / ceiling':56}{share * 100 if share == share else nan:>11.0f}%   "
        f"{'>= 50%':>10}  {met(share >= GOALS['ceiling_share'] if share == share else None)}")
    add(f"   {'statistical checks alone (events parsed beforehand)':56}{rate(checks_rate):>12}")
    checks_share = ratio(batch_rate, checks_rate)
    add(f"   {'end-to-end / statistical checks alone':56}"
        f"{checks_share * 100 if checks_share == checks_share else nan:>11.0f}%   (for information)")
    add("-" * width)

    add("2./3. Single events, POST /v1/events/validate. events/s: 16 concurrent clients submit for "
        f"{SECONDS['single'] * scale:.0f} s (at most")
    add("   1,000 events awaiting a verdict); verdicts read up to 100 at a time with GET /v1/jobs?ids= "
        "(Vigil, (a)) or")
    add("   taken from the 200 answer ((b));")
    add("   first submit -> last verdict. Submit latency: open loop (request k due at t0 + k/rate, timed "
        "from when it")
    add(f"   was due; unanswered after {TIMEOUT_S:g} s = failed, slower than any answer); Vigil and (a) "
        "while a backlog")
    add("   of 1,000-event jobs, queued beforehand by another process, keeps the workers busy; (b) alone, "
        "and while another")
    add("   process has the same jobs judged in (b)'s handler, two at a time ((b) has no workers: its "
        "batch work is requests).")
    add("   HTTP floor: benchmarks/noop_app.py (reads the body, answers a fixed verdict) served as the API, "
        "driven as (b) is,")
    add("   nothing else running: what any design's submit costs and takes before it does anything "
        "with the event.")
    add(f"   {'':34}{'':>9}  {f'--- at {LOW_RATE} submits/s ---':^24}  "
        f"{f'------------ at {RATE} submits/s ------------':^46}")
    add(f"   {'':34}{'events/s':>9}  {'p50':>11}{'p99':>12}  {'p50':>11}{'p99':>12}{'failed':>12}"
        f"{'late sends':>12}")
    rows = {"Vigil (micro-batches)": "", "(a) a task per event": "a_",
            "(b) checks in the handler, alone": "b_", "(b) ... judging batch jobs": "b_busy_",
            "HTTP floor: no-op app, idle": "floor_"}
    figures = {}
    for label, prefix in rows.items():
        tp = get(f"{prefix}single").result.per_s if get(f"{prefix}single") else nan
        low = get(f"{prefix}latency_low").result if get(f"{prefix}latency_low") else None
        high = get(f"{prefix}latency").result if get(f"{prefix}latency") else None
        quantiles = [lat.percentile(q) if lat else nan for lat in (low, high) for q in (0.5, 0.99)]
        figures[prefix] = (tp, *quantiles)
        failed = f"{high.failures:,}/{high.sent:,}" if high else "n/a"
        add(f"   {label:34}{rate(tp):>9}  {ms(quantiles[0]):>11}{ms(quantiles[1]):>12}  "
            f"{ms(quantiles[2]):>11}{ms(quantiles[3]):>12}{failed:>12}"
            f"{f'{high.late_sends:,}' if high else 'n/a':>12}")
    for label, prefix in rows.items():
        problems = [f"{what}: {describe_codes(get(prefix + key).result.codes)}"
                    for what, key in (("events/s", "single"), (f"at {LOW_RATE}/s", "latency_low"),
                                      (f"at {RATE}/s", "latency"))
                    if get(prefix + key) and get(prefix + key).result.codes]
        if problems:
            add(f"   {label} failed requests: {'; '.join(problems)}")
        unmodelled = get(f"{prefix}single").result.unmodelled if get(f"{prefix}single") else 0
        if unmodelled:
            add(f"   {label}: {unmodelled:,} verdicts had no anomaly score (no model loaded)")
    for label, prefix in (("Vigil", ""), ("(a)", "a_")):
        if f"{prefix}verdict" not in results:
            continue
        # Read once the inbox is empty; (a)'s events may still wait behind the batch backlog.
        buckets = results[f"{prefix}verdict"]
        p50, p99 = (quantile(q, buckets) or nan for q in (0.5, 0.99))
        add(f"   {label} time to verdict at {RATE}/s, workers busy (submit to verdict stored, "
            f"vigil_time_to_verdict_seconds{{kind=single}}, {int(buckets[-1][1]) if buckets else 0:,} "
            f"events with a verdict when read): p50 {ms(p50)}, p99 {ms(p99)}")
    v_tp, v_low99, v_p99 = figures[""][0], figures[""][2], figures[""][4]
    a_tp = figures["a_"][0]
    b_low99, b_p99 = figures["b_busy_"][2], figures["b_busy_"][4]
    alone_low99, alone_p99 = figures["b_"][2], figures["b_"][4]
    vs_a = ratio(v_tp, a_tp)
    add(f"   {'Vigil events/s':56}{rate(v_tp):>12}   {'>= 1,500':>10}  "
        f"{met(v_tp >= GOALS['single'] if v_tp == v_tp else None)}")
    # No goal: "20x (a)" was retired (reference (a) uses Vigil's own fast scorer); the ratio is
    # reported as measured, against the 10-14x that stands.
    add(f"   {'Vigil events/s / (a) events/s':56}{times(vs_a):>12}   {'(retired)':>10}")
    v_cpu, a_cpu = cpu_ms_per_event(get("single")), cpu_ms_per_event(get("a_single"))
    if v_cpu == v_cpu and a_cpu == a_cpu:
        add(f"   {'CPU per event, load generator included: Vigil':56}{v_cpu:>9.2f} ms   "
            f"(a) {a_cpu:.2f} ms")
    floor = get("floor_single")
    if floor:
        per = {column: cpu_ms_per_event(floor, COLUMNS[column]) for column in ("client", "api")}
        add(f"   {'CPU per request of the HTTP floor (no-op app)':56}"
            f"{per['client'] + per['api']:>9.2f} ms   load generator {per['client']:.2f}, "
            f"{DEFAULT_SERVER} {per['api']:.2f}")
    add(f"   {f'Vigil submit p99 at {RATE}/s':56}{ms(v_p99):>12}   {'<= 10 ms':>10}  "
        f"{met(v_p99 * 1000 <= GOALS['p99_ms'] if v_p99 == v_p99 else None)}")
    # Like for like: both while batch checks go on (Vigil's in its workers, (b)'s in its
    # handler). (b) alone, for information: its submits then have its cores to themselves.
    for offered, b99, v99, goal, how in (
            (RATE, b_p99, v_p99, True, "both busy"), (LOW_RATE, b_low99, v_low99, False, "both busy"),
            (RATE, alone_p99, v_p99, False, "(b) alone"),
            (LOW_RATE, alone_low99, v_low99, False, "(b) alone")):
        both_out = math.isinf(b99) and math.isinf(v99)
        # (b) beyond the timeout: its p99 is at least TIMEOUT_S, so the ratio at least this.
        b_out = math.isinf(b99) and not both_out
        vs_b = nan if both_out else ratio(TIMEOUT_S if b_out else b99, v99)
        text = "both > timeout" if both_out else ("> " if b_out else "") + times(vs_b)
        verdict = (met(vs_b >= GOALS["vs_b"] if vs_b == vs_b else None) if goal
                   else "(for information)")
        add(f"   {f'(b) p99 / Vigil p99 at {offered}/s, {how}':56}{text:>12}   "
            f"{'>= 10x' if goal else '':>10}  {verdict}")
    add("-" * width)

    add("4. Per-event cost vs history size: batch path as in 1., one event type each "
        f"({SECONDS['scale'] * scale:.0f} s)")
    add(f"   {'history':>10}{'all-time n':>14}{'rows kept':>11}{'model rows':>12}{'events/s':>10}"
        f"{'worker CPU ms/event':>21}{'all CPU ms/event':>18}")
    for size, figs, phase in get("scale", []):
        add(f"   {f'10^{round(math.log10(size))}':>10}{figs['n']:>14,}{figs['rows']:>11,}"
            f"{figs['model_rows'] or 0:>12,}{rate(phase.result.per_s):>10}"
            f"{cpu_ms_per_event(phase, ('worker', 'events')):>21.3f}"
            f"{cpu_ms_per_event(phase):>18.3f}")
    add("   History import: 10^3 and 10^5 rows through the API (jobs of 10,000); 10^7: 10^4 rows "
        "through the API (the")
    add("   history list keeps VIGIL_HISTORY_MAX_ROWS=10,000 anyway) + the moments of 10^7 - 10^4 "
        "numpy values merged")
    add("   with tasks.store.baselines.apply_batch. Judging reads O(1) moments per field and scores with a "
        "model of 100 trees of")
    add("   at most 256 samples each, trained on at most 10,000 rows: neither grows with history. "
        "events/s moves with")
    add("   the machine's other load; CPU per event is the figure to compare across rows.")
    add("-" * width)
    lines.extend(fairness_lines(results, width))

    add("Where the CPU went: core-ms per event (per request sent in latency phases), by component. "
        "'api' is Vigil's")
    add("API or (b)'s handler; 'flower+' is Flower, beat and scripts/run.py (which relays every log "
        "line); 'machine'")
    add("is every process outside this benchmark on the shared machine; 'busy' is cores busy on average "
        f"(of {os.cpu_count()}).")
    add("Latency phases (@N/s) include the workers' work on the batch backlog, so their per-request "
        "figures are not")
    add("the cost of a submit alone.")
    phases = [get(key) for key in ("batch", "single", "latency_low", "latency", "a_single",
                                   "a_latency_low", "a_latency", "b_single", "b_latency_low",
                                   "b_latency", "b_busy_latency_low", "b_busy_latency", "floor_single",
                                   "floor_latency_low", "floor_latency")]
    phases = [p for p in phases if p]
    add(f"   {'phase':16}{'events':>8}{'wall s':>8}" + "".join(f"{c:>9}" for c in COLUMNS)
        + f"{'busy':>7}")
    for p in phases:
        busy = sum(v for k, v in p.cpu.items() if k != "wall") / max(p.cpu.get("wall", 1), 1e-9)
        add(f"   {p.name:16}{p.events:>8,}{p.cpu.get('wall', 0):>8.1f}"
            + "".join(f"{cpu_ms_per_event(p, roles):>9.2f}" for roles in COLUMNS.values())
            + f"{busy:>7.2f}")
    add("=" * width)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply every phase's duration (e.g. 0.3 for a quick look)")
    parser.add_argument("--only", default="vigil,a,b,floor,fair",
                        help="comma-separated subset of vigil, a, b, floor, fair")
    args = parser.parse_args(argv)
    wanted = {x.strip() for x in args.only.split(",")}

    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    # Ctrl-C reaches the stacks too (same process group), so what fails first may be a
    # connection they reset rather than this KeyboardInterrupt: the flag tells them apart.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = datetime.now(UTC)
    header = machine()
    results: dict = {}
    procs = Processes()
    code = 0
    try:
        if "vigil" in wanted:
            bench_vigil(procs, args.time_scale, results)
        if "a" in wanted:
            bench_reference_a(procs, args.time_scale, results)
        if "b" in wanted:
            bench_reference_b(procs, args.time_scale, results)
        if "floor" in wanted:
            bench_http_floor(procs, args.time_scale, results)
        if "fair" in wanted:
            bench_fairness(procs, args.time_scale, results)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        code = 130
    except Exception as exc:
        if interrupted:
            log("interrupted: stopping everything")
            code = 130
        else:
            code = failed(procs, exc)
    finally:
        procs.stop_all()
    if results:
        try:
            print(report(results, started, header, args.time_scale), flush=True)
        except Exception:  # never lose a run's figures to a formatting bug
            traceback.print_exc()
            print(results, flush=True)
            code = code or 1
    return code


def failed(procs: Processes, exc: Exception) -> int:
    """Say what failed, with the end of every running child's log."""
    log(f"failed: {type(exc).__name__}: {exc}")
    traceback.print_exc()
    for started_proc in procs.started:
        tail = started_proc.log_tail(2000)
        if tail:
            log(f"--- end of {started_proc.name}'s log ---\n{tail}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
