"""`make bench-servers`: the same Vigil stack with its API under each HTTP server (issue 18).

    .venv/bin/python -m benchmarks.servers [--rounds 2] [--time-scale 1] [--servers uwsgi,granian]

For each server of core.server.SERVERS, a private stack (scripts/run.py with API_SERVER set,
its own Redis on a free port), seeded and warmed up as `make bench` does, then two of make
bench's phases with its own functions: single-event events/s (16 concurrent submitters,
verdicts read back) and submit latency at 500/s while a batch backlog keeps the workers busy.
Then the API's memory (every process of the server: RSS summed, and PSS, which counts pages
shared between forked workers once), the whole stack's stop (seconds, run.py's exit
status), and how many lines run.py relayed from the API that are not its JSON log lines.

Servers run back to back, the order reversed every other round (a shared 2-core machine: its
speed drifts); each run is printed, then the median of each server's runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import load
from benchmarks.run_all import (
    HISTORY_ROWS,
    MAIN_TYPE,
    NO_RATE_LIMIT,
    RATE,
    SECONDS,
    cpu_ms_per_event,
    import_history,
    latency,
    log,
    machine,
    measured,
    run,
    wait_idle,
    warm_up,
)
from benchmarks.stack import Processes, Started, descendants, role_of
from core.server import SERVERS
from tasks import WORKER_ARGS


@dataclass
class Figures:
    server: str
    events_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    api_cpu_ms_single: float  # API core-ms per event of the events/s phase (reads included)
    api_cpu_ms_submit: float  # API core-ms per submit at 500/s
    rss_mb: float
    pss_mb: float
    stop_s: float
    stop_code: int | None
    noise_lines: int  # lines from the API process that are not its JSON log lines


def _kb(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def api_memory(stack: Started) -> tuple[float, float]:
    """(RSS, PSS) in MB of every API server process below the stack."""
    rss = pss = 0
    for pid in descendants(stack.popen.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if role_of(pid, cmd) == "api":
            rss += _kb(Path(f"/proc/{pid}/status"), "VmRSS:")
            pss += _kb(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
    return rss / 1024, pss / 1024


def noise_lines(stack: Started) -> int:
    """Lines scripts/run.py relayed from the API that are not JSON (banners, server logs)."""
    lines = stack.log_tail(10**8).splitlines()
    return sum(1 for line in lines if line.startswith("[api] ") and not line[6:].startswith("{"))


def bench_server(procs: Processes, server: str, run_no: int, scale: float) -> Figures:
    jobs = load.job_bodies(MAIN_TYPE, 16)
    singles = load.event_bodies(MAIN_TYPE, 5000)
    redis_url = procs.start_redis(f"redis-{run_no}-{server}")
    log(f"run {run_no}: {server}: starting the stack")
    stack = procs.start_vigil(f"{server}-{run_no}", redis_url, expect_workers=len(WORKER_ARGS),
                              API_SERVER=server, **NO_RATE_LIMIT)
    import_history(stack.url, MAIN_TYPE, load.history(HISTORY_ROWS))
    warm_up(stack, SECONDS["warmup"] * scale, jobs, singles)
    wait_idle(redis_url)
    log(f"run {run_no}: {server}: single events, then submits at {RATE}/s with busy workers")
    single = measured(f"{server} single", lambda: run(
        load.single_stream(stack.url, singles, SECONDS["single"] * scale)))
    busy = latency(stack, RATE, SECONDS["latency"] * scale, singles,
                   busy=["saturate", "--redis", redis_url], name=server)
    rss, pss = api_memory(stack)
    started = time.monotonic()
    procs.stop(stack)
    stop_s = time.monotonic() - started
    for other in [p for p in procs.started if p.url == redis_url]:
        procs.stop(other)
    return Figures(server, single.result.per_s, busy.result.percentile(0.5) * 1000,
                   busy.result.percentile(0.99) * 1000, busy.result.failures,
                   cpu_ms_per_event(single, ("api",)), cpu_ms_per_event(busy, ("api",)),
                   rss, pss, stop_s, stack.popen.returncode, noise_lines(stack))


HEADER = (f"{'server':18}{'events/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'failed':>7}"
          f"{'API CPU ms/event':>17}{'/submit':>8}{'RSS MB':>8}{'PSS MB':>8}{'stop s':>7}"
          f"{'exit':>5}{'noise':>6}")


def row(f: Figures, label: str | None = None) -> str:
    return (f"{label or f.server:18}{f.events_per_s:>9,.0f}{f.p50_ms:>8.1f}{f.p99_ms:>8.1f}"
            f"{f.failed:>7}{f.api_cpu_ms_single:>17.3f}{f.api_cpu_ms_submit:>8.3f}{f.rss_mb:>8.0f}"
            f"{f.pss_mb:>8.0f}{f.stop_s:>7.1f}{f.stop_code!s:>5}{f.noise_lines:>6}")


def median_of(runs: list[Figures]) -> Figures:
    fields = [(name, [getattr(r, name) for r in runs]) for name in Figures.__dataclass_fields__]
    return Figures(**{name: values[0] if name in ("server", "stop_code") else
                      (max(values) if name in ("failed", "noise_lines") else
                       statistics.median(values)) for name, values in fields})


def report(runs: list[Figures], started: datetime, rounds: int, scale: float) -> str:
    width = len(HEADER)
    lines = ["=" * width,
             f"API servers (make bench-servers), {started:%Y-%m-%d %H:%M} UTC, "
             f"{(datetime.now(UTC) - started).total_seconds():.0f} s, {rounds} round(s)"
             + (f", phases x{scale}" if scale != 1 else ""),
             f"machine: {machine()}",
             f"events/s: {SECONDS['single'] * scale:.0f} s of single events; p50/p99: submits at "
             f"{RATE}/s for {SECONDS['latency'] * scale:.0f} s, workers busy; API CPU: core-ms",
             "per event (events/s phase) and per submit (500/s phase); memory: every API process; "
             "noise: non-JSON API lines", "-" * width, "each run, in order:", HEADER]
    lines += [row(r) for r in runs]
    lines += ["-" * width, "median of each server's runs (failed, noise: the most):", HEADER]
    for server in dict.fromkeys(r.server for r in runs):
        lines.append(row(median_of([r for r in runs if r.server == server])))
    lines.append("=" * width)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown server(s) {', '.join(sorted(unknown))}; one of {', '.join(SERVERS)}")
    started = datetime.now(UTC)
    procs = Processes()
    runs: list[Figures] = []
    code = 0
    try:
        for n in range(args.rounds):
            for server in servers if n % 2 == 0 else reversed(servers):
                runs.append(bench_server(procs, server, len(runs) + 1, args.time_scale))
                log(row(runs[-1]))
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # keep the figures of the runs that finished
        log(f"failed: {type(exc).__name__}: {exc}")
        for p in procs.started:
            log(f"--- end of {p.name}'s log ---\n{p.log_tail(2000)}")
        code = 1
    finally:
        procs.stop_all()
    if runs:
        print(report(runs, started, args.rounds, args.time_scale), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
