"""Dependencies go away and come back: Redis restarts, a webhook receiver is down for a while.

What a user relies on: a job answered 202 is not lost when Redis restarts (AOF); while Redis
is down the API says so (503 with Retry-After, readiness unready) instead of failing with a
500; once Redis is back the API and the running workers reconnect by themselves; a webhook
whose receiver was down is delivered, signed, once it comes up.
"""

from __future__ import annotations

import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fault_helpers import (
    BIG_JOB,
    FINISHED,
    WEBHOOK_SCHEDULE_S,
    FaultStack,
    accepted,
    get_job,
    wait_finished,
    wait_until,
)
from helpers import webhook_secret
from standardwebhooks import Webhook

from core.localredis import free_port

T0 = 1_790_000_000
JOBS = 20


def one_event(i: int, event_type: str = "restart") -> dict:
    return {"event_type": event_type, "timestamp": T0 + i, "payload": {"x": 10.0 + i % 7}}


def submit_both_ways(client, n: int, event_type: str = "restart") -> list[str]:
    """n jobs, half as batches (POST /v1/jobs, the jobs worker), half as single events
    (POST /v1/events/validate, the events worker)."""
    ids = []
    for i in range(n):
        if i % 2:
            ids.append(accepted(client.post("/v1/events/validate", json=one_event(i, event_type))))
        else:
            ids.append(accepted(client.post("/v1/jobs", json={
                "events": [one_event(i, event_type), one_event(i + 1, event_type)]})))
    return ids


def readyz(client) -> int:
    return client.get("/readyz").status_code


def assert_unavailable(response, what: str) -> None:
    """503 problem+json with Retry-After: nothing accepted, try again later (not a 500)."""
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
    assert response.headers["Content-Type"].startswith("application/problem+json"), what
    assert int(response.headers["Retry-After"]) > 0, what
    assert response.json()["status"] == 503, what


def assert_down_answers(client, job_id: str) -> None:
    """What clients get while Redis is down: fast, explicit answers."""
    started = time.monotonic()
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["status"] == "unready" and ready.json()["redis"] is False, ready.text
    assert_unavailable(client.post("/v1/events/validate", json=one_event(0)), "POST /v1/events/validate")
    assert_unavailable(client.post("/v1/jobs", json={"events": [one_event(0)]}), "POST /v1/jobs")
    assert_unavailable(client.get(f"/v1/jobs/{job_id}"), "GET /v1/jobs/{id}")
    assert time.monotonic() - started < 15, "answers while Redis is down took too long"


def test_accepted_jobs_survive_a_redis_restart(fault_stack: FaultStack):
    stack = fault_stack
    stack.stop_workers()  # nothing consumes: the jobs wait in Redis when it goes down
    client = stack.client()
    job_ids = submit_both_ways(client, JOBS)
    assert len(job_ids) == JOBS
    time.sleep(1.5)  # appendfsync everysec
    stack.redis.stop(signal.SIGTERM)

    assert_down_answers(client, job_ids[0])

    stack.redis.start()
    stack.start_workers("worker", "events")
    # The API was not restarted: its Redis client and Celery connections recover by themselves.
    wait_until(lambda: readyz(client) == 200, 20, "/readyz to answer 200 again", 0.2)
    jobs = [wait_finished(client, job_id, 30, stack) for job_id in job_ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * JOBS, jobs
    assert all(job["summary"]["events"] >= 1 for job in jobs)


BIG = BIG_JOB
# Long enough that the running task meets the outage (and a Celery retry could not be
# published before Redis is back: the case that used to lose the job), short enough that the
# workers reconnect on their first attempt, 2 s after the loss, before the message could be
# restored as abandoned (VIGIL_VISIBILITY_TIMEOUT=5).
OUTAGE_S = 1.2


@pytest.fixture(scope="module")
def restarted_under_load(fault_stack: FaultStack) -> dict:
    """Redis restarted (SIGTERM, ~1.2 s down) while the workers run and a large job is mid-run;
    what clients were answered while it was down."""
    stack = fault_stack
    workers = stack.ensure_workers("worker", "events")
    client = stack.client()
    wait_until(lambda: readyz(client) == 200, 20, "/readyz 200 before the restart", 0.2)
    in_flight = accepted(client.post("/v1/jobs", json={"events": [
        {"event_type": "in-flight", "timestamp": T0 + i, "payload": {"x": 95 + (i % 101) / 10}}
        for i in range(BIG)]}))

    def mid_run():
        job = get_job(client, in_flight)
        if job["status"] not in ("queued", "running"):
            raise RuntimeError(f"the large job finished before the restart: {job}")
        return job["status"] == "running" and 1000 <= job["progress"]["done"] < BIG

    wait_until(mid_run, 30, "the large job running", 0.01)
    pids = [w.pid for w in workers]
    stack.redis.stop(signal.SIGTERM)
    stopped = time.monotonic()
    down = {"readyz": client.get("/readyz"),
            "validate": client.post("/v1/events/validate", json=one_event(0))}
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    stack.redis.start()
    return {"stack": stack, "client": client, "workers": workers, "pids": pids, "down": down,
            "in_flight": in_flight, "back_at": time.monotonic()}


def test_running_workers_and_api_reconnect_after_redis_restart(restarted_under_load):
    stack, client = restarted_under_load["stack"], restarted_under_load["client"]
    workers, down = restarted_under_load["workers"], restarted_under_load["down"]
    assert down["readyz"].status_code == 503, down["readyz"].text
    assert down["readyz"].json()["redis"] is False
    assert_unavailable(down["validate"], "POST /v1/events/validate while Redis was down")

    wait_until(lambda: readyz(client) == 200, 30, "/readyz to answer 200 after Redis came back", 0.2)
    job_ids = submit_both_ways(client, 4, "after-restart")
    jobs = [wait_finished(client, job_id, 30, stack) for job_id in job_ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, jobs
    # The same worker processes did it: they reconnected by themselves.
    assert [w.pid for w in workers] == restarted_under_load["pids"]
    assert all(w.alive and w.answers(timeout_s=2) for w in workers)


def test_job_running_during_a_redis_restart_finishes(restarted_under_load):
    """The job's task meets the outage mid-run. It must wait it out, not hand the job to a
    Celery retry: publishing a retry needs Redis, and a retry that cannot be published gets
    the message rejected, which loses the job (the job stays `running` forever)."""
    client, job_id = restarted_under_load["client"], restarted_under_load["in_flight"]
    # The job takes ~2 s; the workers reconnect within ~2 s of the restart. Allow 15 s.
    deadline = restarted_under_load["back_at"] + 15
    while (job := get_job(client, job_id))["status"] not in FINISHED and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job["status"] == "succeeded", (
        f"15 s after Redis came back the job is {job['status']} at {job['progress']}")
    baseline = client.get("/v1/event-types/in-flight/baseline").json()["fields"][0]
    assert baseline["count"] == job["summary"]["valid"]  # its events counted exactly once


class LateReceiver:
    """A webhook receiver on a port that refuses connections until ``start()``."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def submit_with_callback(client, url: str) -> str:
    return accepted(client.post("/v1/jobs", json={"callback_url": url,
                                                  "events": [one_event(1, "hooked")]}))


def refused_once(client, job_id: str) -> bool:
    webhook = get_job(client, job_id)["webhook"]
    return bool(webhook) and webhook["attempts"] >= 1 and webhook["status"] == "retrying"


# The fault stack's VIGIL_WEBHOOK_SCHEDULE (fault_helpers.WEBHOOK_SCHEDULE_S): retries after
# 0.2, 0.4, 0.8, 1.6, then every 2 s (+-20% jitter), 8 attempts in all.
ALL_RETRIES_S = sum(WEBHOOK_SCHEDULE_S[min(k, len(WEBHOOK_SCHEDULE_S) - 1)] for k in range(7)) * 1.2


@pytest.fixture(scope="module")
def receiver_outage(fault_stack: FaultStack) -> dict:
    """Two jobs with callbacks to receivers that refuse connections: one comes up 2 s after
    its first refusal, the other never does. Waits until both settled (or long enough)."""
    stack = fault_stack
    stack.ensure_workers("worker", "webhooks")
    client = stack.client()
    secret = webhook_secret(client)  # two tenants: each verifies with its own
    late, never = LateReceiver(), LateReceiver()
    jobs = {"late": submit_with_callback(client, late.url),
            "never": submit_with_callback(client, never.url)}
    wait_until(lambda: all(refused_once(client, j) for j in jobs.values()), 20,
               "a refused delivery attempt of each job")
    refused_at = time.monotonic()
    time.sleep(2.0)
    late.start()

    def settled():
        states = {name: get_job(client, j)["webhook"] for name, j in jobs.items()}
        return states["late"]["status"] == "delivered" and states["never"]["status"] == "failed"

    deadline = refused_at + ALL_RETRIES_S + 3
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.1)
    yield {"client": client, "jobs": jobs, "late": late, "refused_after_s": 2.0, "secret": secret}
    late.stop()


def test_webhook_is_delivered_once_its_receiver_comes_up(receiver_outage):
    client, job_id = receiver_outage["client"], receiver_outage["jobs"]["late"]
    received = receiver_outage["late"].received
    job = get_job(client, job_id)
    assert received, f"the receiver came up 2 s after refusing, but got nothing: {job['webhook']}"
    headers, body = received[0]
    # Raises unless signed with the tenant's secret.
    payload = Webhook(receiver_outage["secret"]).verify(body, headers)
    assert headers["webhook-id"] == f"msg_{job_id}"
    assert payload["type"] == "job.completed"
    assert payload["data"]["job_id"] == job_id and payload["data"]["status"] == "succeeded"
    # Every delivery (duplicates are allowed) carries the same id, so receivers can drop them.
    assert {h["webhook-id"] for h, _ in received} == {f"msg_{job_id}"}

    assert job["webhook"]["status"] == "delivered", job["webhook"]
    assert 2 <= job["webhook"]["attempts"] <= 8, job["webhook"]
    assert job["webhook"]["message_id"] == f"msg_{job_id}"


def test_webhook_is_kept_as_failed_after_its_last_attempt(receiver_outage):
    client, job_id = receiver_outage["client"], receiver_outage["jobs"]["never"]
    webhook = get_job(client, job_id)["webhook"]
    assert webhook["status"] == "failed", webhook
    assert webhook["attempts"] == 8, webhook  # VIGIL_WEBHOOK_MAX_ATTEMPTS
    assert "Connect" in webhook["last_error"], webhook
    failed = client.get("/v1/webhooks/failed")
    assert failed.status_code == 200, failed.text
    assert f"msg_{job_id}" in failed.text
