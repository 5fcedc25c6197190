"""Events and HTTP load for the benchmark (asyncio streams, a minimal HTTP/1.1 client).

Every generator measures from the client's side and returns figures; none asserts anything.
Request bodies are serialised once, before the clock starts, so the client spends its time
sending and reading, not building JSON.

Every generator uses Http below: HTTP/1.1 over asyncio streams, connections kept alive
between requests as production clients do. The load generator shares the machine's cores
with the system it measures, and Http costs the client about 0.3 ms of CPU per request where
httpx costs about 1.6 ms (measured here): with httpx, a 500 req/s open loop alone would take
most of a core from the server.

`python -m benchmarks.load saturate --url ... --redis ... --seconds ...` is the backlog of
batch jobs that keeps Vigil's workers busy while submit latency is measured, and
`python -m benchmarks.load judge-batches --url ... --seconds ...` the same jobs judged in
reference (b)'s handler (separate processes, so they share no event loop or GIL with the
measuring client).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import orjson

from core import keys
from core.config import DEV_API_KEY, DEV_TENANT
from tasks.store import jobs

HEADERS = {"Authorization": f"Bearer {DEV_API_KEY}", "Content-Type": "application/json"}
FINISHED = ("succeeded", "failed", "cancelled")
START_TS = 1_790_000_000
STEP_S = 60
# Three numeric fields, one of them nested: amount ~ N(100, 10), cart.items ~ N(5, 1),
# latency_ms ~ N(200, 20).
MEANS = np.array([100.0, 5.0, 200.0])
STDS = np.array([10.0, 1.0, 20.0])


# --- events ---------------------------------------------------------------------------------

def _payloads(values: np.ndarray) -> list[dict]:
    return [{"amount": round(float(a), 2), "cart": {"items": round(float(i), 2)},
             "latency_ms": round(float(ms), 1)} for a, i, ms in values]


def history(n: int, seed: int = 1) -> list[dict]:
    """History rows ({timestamp, payload}) for POST /v1/event-types/{type}/history."""
    rng = np.random.default_rng(seed)
    values = rng.normal(MEANS, STDS, size=(n, 3))
    return [{"timestamp": START_TS + STEP_S * i, "payload": p}
            for i, p in enumerate(_payloads(values))]


def events(n: int, event_type: str, seed: int = 2, first_index: int = 10**6,
           outlier_share: float = 0.01) -> list[dict]:
    """Events like the history, a share of them with amount at +6 sigma (out_of_range)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(MEANS, STDS, size=(n, 3))
    outliers = rng.random(n) < outlier_share
    values[outliers, 0] = MEANS[0] + 6 * STDS[0]
    return [{"event_type": event_type, "timestamp": START_TS + STEP_S * (first_index + i),
             "event_id": f"e{first_index + i}", "payload": p}
            for i, p in enumerate(_payloads(values))]


def job_bodies(event_type: str, jobs: int, per_job: int = 1000, seed: int = 2) -> list[bytes]:
    """POST /v1/jobs bodies of per_job events each, consecutive in time."""
    evs = events(jobs * per_job, event_type, seed)
    return [json.dumps({"events": evs[k:k + per_job]}).encode()
            for k in range(0, len(evs), per_job)]


def event_bodies(event_type: str, n: int, seed: int = 3) -> list[bytes]:
    """POST /v1/events/validate bodies, one event each."""
    return [json.dumps(e).encode() for e in events(n, event_type, seed, first_index=2 * 10**6)]


# --- results --------------------------------------------------------------------------------

@dataclass
class Throughput:
    events: int = 0
    elapsed_s: float = 0.0
    errors: int = 0
    invalid: int = 0
    unmodelled: int = 0  # verdicts without an anomaly score (no model): should stay 0
    codes: Counter = field(default_factory=Counter)  # unexpected answers: HTTP status (0: none)

    @property
    def per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class Latency:
    offered_rate: float
    sent: int = 0
    late_sends: int = 0  # requests the client itself started > 5 ms after their slot
    latencies_s: list[float] = field(default_factory=list)  # successful requests only
    failures: int = 0  # errors and timeouts: count as slower than any success
    codes: Counter = field(default_factory=Counter)  # the failures: HTTP status (0: none)
    duration_s: float = 0.0

    def percentile(self, q: float) -> float:
        """The q-quantile over every request sent; inf where it falls among the failures."""
        ordered = sorted(self.latencies_s)
        total = len(ordered) + self.failures
        if not total:
            return math.nan
        rank = max(1, math.ceil(q * total))
        return ordered[rank - 1] if rank <= len(ordered) else math.inf


def _count_verdicts(results: Sequence[dict], into: Throughput) -> None:
    for result in results:
        into.invalid += not result.get("valid", True)
        into.unmodelled += result.get("anomaly_score") is None


class Http:
    """Minimal HTTP/1.1 client over asyncio streams, with keep-alive.

    Idle connections are kept and reused, as any production client (requests.Session,
    httpx.Client) does; a connection the server marks `Connection: close` is dropped after
    its answer. Concurrent requests each take their own connection.
    """

    def __init__(self, base_url: str, timeout_s: float = 60.0, api_key: str = DEV_API_KEY) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout_s = timeout_s
        self._head = f"Host: {self.host}:{self.port}\r\nAuthorization: Bearer {api_key}\r\n"
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body); raises OSError or TimeoutError (the whole exchange is bounded)."""
        return await asyncio.wait_for(self._request(method, path, body), self.timeout_s)

    def close(self) -> None:
        """Close the idle connections (before the event loop they belong to ends)."""
        while self._idle:
            self._idle.pop()[1].close()

    async def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\n{self._head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        raw = head.encode() + b"\r\n" + (body or b"")
        while self._idle:
            reader, writer = self._idle.pop()
            try:
                return await self._exchange(reader, writer, raw)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                # The server closed this idle connection (its keep-alive ran out) before
                # reading the request: try the next one, or a new one.
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise OSError("connection closed mid-answer") from exc
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            return await self._exchange(reader, writer, raw)
        except asyncio.IncompleteReadError as exc:
            raise OSError("connection closed before the answer ended") from exc

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        raw: bytes) -> tuple[int, bytes]:
        keep = False
        try:
            writer.write(raw)
            head_raw = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head_raw[:-4].decode("latin-1").split("\r\n")
            if not status_line.startswith("HTTP/"):
                raise OSError(f"not an HTTP answer: {status_line[:80]!r}")
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in header_lines)}
            if headers.get("transfer-encoding", "").lower() == "chunked":
                payload = await _read_chunked(reader)
            elif "content-length" in headers:
                payload = await reader.readexactly(int(headers["content-length"]))
            else:  # delimited by the end of the connection
                payload = await reader.read()
            keep = (headers.get("connection", "").lower() != "close"
                    and status_line.startswith("HTTP/1.1") and not reader.at_eof())
            return int(status_line.split()[1]), payload
        finally:
            if keep:
                self._idle.append((reader, writer))
            else:
                writer.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the end
                pass
            return bytes(out)
        out += await reader.readexactly(size + 2)
        del out[-2:]


# --- batch path -----------------------------------------------------------------------------

async def batch_stream(url: str, bodies: Sequence[bytes], seconds: float, *, in_flight: int = 4,
                       poll_s: float = 0.05) -> Throughput:
    """Closed loop: in_flight jobs at a time, each POSTed then polled (GET) until it finished.

    Events/s: events of every succeeded job over the time from the first POST to the last
    verdict read (jobs started before the deadline all finish). Http and orjson rather than
    httpx and json: the client shares the cores it measures, and with httpx it took a
    quarter of the machine reading 1,000-verdict answers.
    """
    result = Throughput()
    http = Http(url)
    per_job = len(orjson.loads(bodies[0])["events"])
    counter = iter(range(10**9))
    started = time.perf_counter()
    deadline = started + seconds
    last_done = started

    async def one_loop() -> None:
        nonlocal last_done
        while time.perf_counter() < deadline:
            body = bodies[next(counter) % len(bodies)]
            try:
                status, answer = await http.request("POST", "/v1/jobs", body)
            except (OSError, TimeoutError):
                status = 0
            if status != 202:
                result.errors += 1
                result.codes[status] += 1
                await asyncio.sleep(poll_s)
                continue
            status_url = f"/v1/jobs/{orjson.loads(answer)['job_id']}"
            job: dict = {}
            while job.get("status") not in FINISHED and time.perf_counter() < deadline + 60:
                await asyncio.sleep(poll_s)
                try:
                    status, answer = await http.request("GET", status_url)
                    job = orjson.loads(answer) if status == 200 else {}
                except (OSError, TimeoutError, ValueError):
                    continue
            if job.get("status") == "succeeded":
                result.events += per_job
                _count_verdicts(job["results"], result)
                last_done = time.perf_counter()
            else:
                result.errors += 1

    await asyncio.gather(*(one_loop() for _ in range(in_flight)))
    result.elapsed_s = last_done - started
    return result


# --- single events --------------------------------------------------------------------------

async def single_stream(url: str, bodies: Sequence[bytes], seconds: float, *,
                        submitters: int = 16, pollers: int = 2, max_outstanding: int = 1000,
                        read_at_once: int = 100, drain_s: float = 10.0) -> Throughput:
    """Single events submitted concurrently for `seconds`; their verdicts read in bulk.

    Submitters POST as fast as the API answers while fewer than max_outstanding events
    wait for a verdict; pollers read the oldest waiting jobs, up to read_at_once per
    `GET /v1/jobs?ids=` (backing off while fewer than half are ready), as a client sending many
    single events would. Events/s: verdicts read over the time from the first POST to the
    last verdict read. Jobs still unfinished drain_s after the deadline are left out.

    max_outstanding bounds the client, not the system: events/s can be at most about
    max_outstanding / (time from submit to verdict read). With 300, Vigil's cores were 15%
    idle and the figure was 1,457 events/s; with 1,000, 1,707, in the same minute.
    """
    result = Throughput()
    http = Http(url)
    waiting: deque[str] = deque()  # job ids, oldest first
    room = asyncio.Semaphore(max_outstanding)
    counter = iter(range(10**9))
    started = time.perf_counter()
    deadline = started + seconds
    last_done = started
    submitting = True

    async def submit() -> None:
        while time.perf_counter() < deadline:
            await room.acquire()
            try:
                status, body = await http.request("POST", "/v1/events/validate",
                                                  bodies[next(counter) % len(bodies)])
            except (OSError, TimeoutError):
                status = 0
            if status != 202:
                result.errors += 1
                result.codes[status] += 1
                room.release()
                continue
            waiting.append(orjson.loads(body)["job_id"])

    async def poll() -> None:
        nonlocal last_done
        wait = 0.0
        while waiting or submitting:
            ids = [waiting.popleft() for _ in range(min(read_at_once, len(waiting)))]
            if not ids:
                await asyncio.sleep(0.01)
                continue
            try:
                status, body = await http.request("GET", f"/v1/jobs?ids={','.join(ids)}")
                jobs = {job["job_id"]: job for job in orjson.loads(body)["jobs"]} \
                    if status == 200 else {}
            except (OSError, TimeoutError, ValueError):
                jobs = {}
            overdue = time.perf_counter() > deadline + drain_s
            unfinished = [j for j in ids if jobs.get(j, {}).get("status") not in FINISHED]
            for job_id in ids:
                job = jobs.get(job_id, {})
                if job.get("status") in FINISHED or overdue:
                    room.release()
                    if job.get("status") == "succeeded":
                        result.events += 1
                        _count_verdicts(job["results"], result)
                        last_done = time.perf_counter()
                    else:
                        result.errors += 1
            if overdue:
                continue
            waiting.extendleft(reversed(unfinished))  # still the oldest: first in line again
            # All ready: read on at once. Fewer than half: back off, so that reading the
            # oldest jobs again and again stays a small load (a design whose verdicts come
            # slowly must not pay for a client polling it flat out: with "none ready" as the
            # only back-off, reference (a)'s API spent up to 8.6 ms of CPU per verdict, most
            # of it on polls).
            ready = len(ids) - len(unfinished)
            if ready == len(ids):
                wait = 0.0
            elif 2 * ready < len(ids):
                wait = min(max(2 * wait, 0.02), 0.2)
            else:
                wait = 0.02
            await asyncio.sleep(wait)

    polling = [asyncio.create_task(poll()) for _ in range(pollers)]
    await asyncio.gather(*(submit() for _ in range(submitters)))
    submitting = False
    await asyncio.gather(*polling)
    result.elapsed_s = last_done - started
    return result


async def sync_stream(url: str, bodies: Sequence[bytes], seconds: float, *,
                      concurrency: int = 8) -> Throughput:
    """Closed loop for reference (b): the 200 answer carries the verdict."""
    result = Throughput()
    http = Http(url)
    counter = iter(range(10**9))
    started = time.perf_counter()
    deadline = started + seconds

    async def one_loop() -> None:
        while time.perf_counter() < deadline:
            try:
                status, body = await http.request("POST", "/v1/events/validate",
                                                  bodies[next(counter) % len(bodies)])
            except (OSError, TimeoutError):
                status = 0
            if status == 200:
                result.events += 1
                _count_verdicts([orjson.loads(body)], result)
            else:
                result.errors += 1
                result.codes[status] += 1

    await asyncio.gather(*(one_loop() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


# --- submit latency at a fixed offered rate -------------------------------------------------

async def open_loop(url: str, bodies: Sequence[bytes], rate: float, seconds: float, *,
                    timeout_s: float = 10.0, ok_status: int = 202) -> Latency:
    """POST /v1/events/validate at `rate` per second for `seconds`, open loop.

    Request k is due at t0 + k/rate and started then, whatever earlier requests are doing;
    its latency runs from when it was due (not when the client got round to it) to its
    answer, so a client falling behind counts against the figures rather than hiding them.
    A request that fails or takes longer than timeout_s counts as a failure.
    """
    out = Latency(offered_rate=rate)
    http = Http(url, timeout_s)
    total = int(rate * seconds)
    tasks: list[asyncio.Task] = []

    async def one(due: float, body: bytes) -> None:
        try:
            status, _ = await http.request("POST", "/v1/events/validate", body)
        except (OSError, TimeoutError):
            out.failures += 1
            out.codes[0] += 1
            return
        if status == ok_status:
            out.latencies_s.append(time.perf_counter() - due)
        else:
            out.failures += 1
            out.codes[status] += 1

    # A collection in this process (it holds the benchmark's events) would pause every
    # request in flight and count against the server: collect now, and none while measuring.
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter() + 0.05
        for k in range(total):
            due = t0 + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                out.late_sends += 1
            tasks.append(asyncio.create_task(one(due, bodies[k % len(bodies)])))
            out.sent += 1
        await asyncio.gather(*tasks)
    finally:
        gc.enable()
    out.duration_s = time.perf_counter() - t0
    return out


# --- background batch stream (a separate process) -------------------------------------------

def saturate(url: str, redis_url: str, event_type: str, seconds: float,
             backlog_rate: float = 60_000) -> int:
    """Keep the workers busy for `seconds` with a backlog of 1,000-event jobs queued ahead.

    The backlog (seconds x backlog_rate events, more than the workers judge in that time:
    with 30,000, py-spy caught the API parsing top-up jobs during the measurement on a
    machine where the workers judged faster) is submitted first, then "ready" is printed and
    the measurement starts: during it the API answers only the measured requests, so what is
    measured is whether busy workers slow submits down, not the API also parsing a
    concurrent batch stream. Should the backlog run low anyway (its newest jobs started) it
    is topped up. Statuses are read from the job
    store, not with GET /v1/jobs/{id}. On SIGTERM the jobs not yet started are cancelled, so the next
    phase starts with idle workers. Returns the number of events judged.
    """
    import signal

    import redis

    r = redis.Redis.from_url(redis_url)
    bodies = job_bodies(event_type, 8, seed=7)
    stop = False

    def on_term(signum, frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    submitted: list[str] = []

    async def submit(n: int) -> None:
        http = Http(url)  # connections belong to the event loop of this asyncio.run

        async def one(k: int) -> None:
            status, answer = await http.request("POST", "/v1/jobs", bodies[k % len(bodies)])
            if status != 202:  # an unsaturated measurement must not pass for a saturated one
                raise RuntimeError(f"POST /v1/jobs answered {status}: {answer[:300]!r}")
            submitted.append(orjson.loads(answer)["job_id"])
        try:
            for k in range(0, n, 2):  # two at a time: the API has two workers
                await asyncio.gather(*(one(k + i) for i in range(min(2, n - k))))
        finally:
            http.close()

    def statuses(job_ids: list[str]) -> list[str]:
        pipe = r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job(DEV_TENANT, job_id), "status")
        return [(s or b"").decode() for s in pipe.execute()]

    asyncio.run(submit(max(3, math.ceil(seconds * backlog_rate / 1000))))
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while not stop and time.monotonic() < deadline:
        if statuses(submitted[-5:]).count("queued") < 3:  # jobs start in order: the newest tell
            asyncio.run(submit(3))
        time.sleep(0.2)
    done = 0
    for job_id, status in zip(list(submitted), statuses(submitted)):
        if status == "queued":
            jobs.cancel_job(r, DEV_TENANT, job_id)
        elif status == "succeeded":
            done += 1000
    return done


def judge_batches(url: str, event_type: str, seconds: float, in_flight: int = 2) -> int:
    """Keep reference (b) busy for `seconds` with the same 1,000-event jobs, judged in its
    handler: a closed loop of `in_flight` POST /v1/jobs (two, as the saturator submits to
    Vigil's two API processes). (b) has no workers and no queue, so a backlog cannot be
    queued ahead: its batch work is requests being judged. "ready" is printed once the first
    job has been judged; SIGTERM stops it. Returns the number of events judged.
    """
    import signal

    bodies = job_bodies(event_type, 8, seed=7)
    judged = 0

    async def loop_all() -> None:
        nonlocal judged
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        http = Http(url)
        counter = iter(range(10**9))
        deadline = time.monotonic() + seconds

        async def one_loop() -> None:
            nonlocal judged
            while not stop.is_set() and time.monotonic() < deadline:
                status, answer = await http.request("POST", "/v1/jobs",
                                                    bodies[next(counter) % len(bodies)])
                if status != 200:  # an idle measurement must not pass for a busy one
                    raise RuntimeError(f"POST /v1/jobs answered {status}: {answer[:300]!r}")
                if not judged:
                    print("ready", flush=True)
                judged += 1000

        try:
            await asyncio.gather(*(one_loop() for _ in range(in_flight)))
        finally:
            http.close()

    asyncio.run(loop_all())
    return judged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sat = sub.add_parser("saturate", help="keep the workers busy with a backlog of batch jobs")
    sat.add_argument("--url", required=True)
    sat.add_argument("--redis", required=True)
    sat.add_argument("--event-type", default="bench")
    sat.add_argument("--seconds", type=float, required=True)
    busy = sub.add_parser("judge-batches",
                          help="keep reference (b) busy judging batch jobs in its handler")
    busy.add_argument("--url", required=True)
    busy.add_argument("--event-type", default="bench")
    busy.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    if args.command == "saturate":
        done = saturate(args.url, args.redis, args.event_type, args.seconds)
    else:
        done = judge_batches(args.url, args.event_type, args.seconds)
    print(json.dumps({"events": done}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
