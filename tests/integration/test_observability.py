"""/metrics (API and worker processes added up) and the JSON log lines, over real HTTP.

The session fixtures put the API (in the test process) and the workers (subprocesses) in
Prometheus multiprocess mode with one shared directory, as `make run` does.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import uuid

import httpx
import redis
from helpers import KEYS, wait_for
from prometheus_client.parser import text_string_to_metric_families
from workers import child_pids

from core.localredis import free_port
from core.logs import json_handler
from core.metrics import QueueDepthCollector

T0 = 1_790_000_000
Samples = dict[tuple[str, frozenset], float]


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def submit(client: httpx.Client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 202, response.text
    return response.json()


def test_http_metrics_are_labelled_by_url_rule_not_path(alpha, anonymous):
    accepted = submit(alpha, "/v1/jobs", {"events": [
        {"event_type": "metrics-http", "timestamp": T0, "payload": {"amount": 1.0}}]})
    job_id = accepted["job_id"]
    assert wait_for(alpha, accepted["status_url"])["status"] == "succeeded"
    assert alpha.get(f"/v1/jobs/{'0' * 32}").status_code == 404
    assert anonymous.get("/v1/jobs").status_code == 401
    assert anonymous.get(f"/no/such/path/{job_id}").status_code == 404

    samples = scrape(alpha)
    route = "/v1/jobs/<job_id>"
    assert value(samples, "vigil_http_requests_total", method="GET", route=route, status="200") >= 2
    assert value(samples, "vigil_http_requests_total", method="GET", route=route, status="404") >= 1
    assert value(samples, "vigil_http_requests_total", method="POST", route="/v1/jobs",
                 status="202") >= 1
    assert value(samples, "vigil_http_requests_total", method="GET", route="/v1/jobs",
                 status="401") >= 1
    assert value(samples, "vigil_http_requests_total", method="GET", route="<unmatched>",
                 status="404") >= 1
    # A histogram per route: cumulative buckets up to +Inf, which counts every request.
    inf = value(samples, "vigil_http_request_duration_seconds_bucket", method="GET", route=route,
                le="+Inf")
    assert inf >= 3
    assert value(samples, "vigil_http_request_duration_seconds_count", method="GET",
                 route=route) == inf
    assert value(samples, "vigil_http_request_duration_seconds_bucket", method="GET", route=route,
                 le="10.0") <= inf
    # No raw job id (nor any other raw path) became a label value.
    assert not [key for key in samples if any(job_id in v for _, v in key[1])]


def test_pipeline_metrics_of_the_worker_processes_reach_the_api(alpha, event_type):
    before = scrape(alpha)
    # 40 events of history (VIGIL_MIN_HISTORY is 30; no model: VIGIL_MODEL_MIN_ROWS is 50).
    history = submit(alpha, f"/v1/event-types/{event_type}/history", {"events": [
        {"timestamp": T0 + i, "payload": {"amount": 100.0 + (i % 5)}} for i in range(40)]})
    assert wait_for(alpha, history["status_url"])["status"] == "succeeded"
    # A batch job (one task per job) with one ordinary and one extreme event...
    batch = submit(alpha, "/v1/jobs", {"events": [
        {"event_type": event_type, "timestamp": T0 + 100, "payload": {"amount": 102.0}},
        {"event_type": event_type, "timestamp": T0 + 101, "payload": {"amount": 900.0}}]})
    summary = wait_for(alpha, batch["status_url"])["summary"]
    assert summary["invalid"] == 1 and summary["warnings"] == {"out_of_range": 1}
    # ...and a single extreme event (the micro-batch worker).
    single = submit(alpha, "/v1/events/validate", {
        "event_type": event_type, "timestamp": T0 + 102, "payload": {"amount": -500.0}})
    assert wait_for(alpha, single["status_url"])["summary"]["invalid"] == 1

    expected = {
        ("vigil_jobs_total", (("kind", "history"), ("status", "succeeded"))): 1,
        ("vigil_jobs_total", (("kind", "validate"), ("status", "succeeded"))): 2,
        ("vigil_events_validated_total", (("event_type", event_type), ("valid", "true"))): 1,
        ("vigil_events_validated_total", (("event_type", event_type), ("valid", "false"))): 2,
        ("vigil_warnings_total", (("code", "out_of_range"),)): 2,
        ("vigil_task_duration_seconds_count", (("task", "vigil.import_history"),)): 1,
        ("vigil_task_duration_seconds_count", (("task", "vigil.validate_job"),)): 1,
        ("vigil_task_duration_seconds_count", (("task", "vigil.validate_events"),)): 1,
    }

    def missing(samples: Samples) -> dict:
        return {k: (value(samples, k[0], **dict(k[1])) - value(before, k[0], **dict(k[1])), n)
                for k, n in expected.items()
                if value(samples, k[0], **dict(k[1])) - value(before, k[0], **dict(k[1])) < n}

    # The workers count a job right after finishing it and time a task once it returned:
    # a client can see the job finished a moment before that.
    deadline = time.monotonic() + 10
    while missing(after := scrape(alpha)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not missing(after), missing(after)
    assert value(after, "vigil_task_duration_seconds_bucket", task="vigil.validate_job",
                 le="+Inf") >= 1
    # Queue depth is read from Redis at scrape time, for both queues.
    assert value(after, "vigil_queue_depth", queue="celery") >= 0
    assert ("vigil_queue_depth", frozenset({("queue", "celery")})) in after
    assert ("vigil_queue_depth", frozenset({("queue", "events")})) in after


def test_one_json_log_line_per_request_and_per_task(alpha, worker):
    stream = io.StringIO()
    handler = json_handler(stream)
    logger = logging.getLogger("vigil.http")
    logger.addHandler(handler)
    try:
        accepted = submit(alpha, "/v1/jobs", {"events": [
            {"event_type": "metrics-logs", "timestamp": T0, "payload": {"amount": 1.0}}]})
        wait_for(alpha, accepted["status_url"])
    finally:
        logger.removeHandler(handler)
    job_id = accepted["job_id"]

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(line["event"] == "request" and line["tenant"] == "alpha" for line in lines)
    post = next(line for line in lines if line["method"] == "POST")
    assert post["route"] == "/v1/jobs" and post["path"] == "/v1/jobs" and post["status"] == 202
    assert post["job_id"] == job_id and post["duration_ms"] >= 0
    polls = [line for line in lines if line["route"] == "/v1/jobs/<job_id>"]
    assert polls and all(p["job_id"] == job_id and p["path"] == f"/v1/jobs/{job_id}" for p in polls)
    assert KEYS["alpha"] not in stream.getvalue()

    # The worker's line for the task that ran the job (written once the task returned).
    deadline = time.monotonic() + 10
    while True:
        found = [doc for doc in map(_json_or_none, worker.log_path.read_text().splitlines())
                 if doc and doc.get("event") == "task" and doc.get("job_id") == job_id]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert found, worker.log_path.read_text()[-3000:]
    [task] = found
    assert task["task"] == "vigil.validate_job" and task["tenant"] == "alpha"
    assert task["state"] == "SUCCESS" and task["duration_ms"] > 0 and task["task_id"]
    assert task["level"] == "INFO" and task["logger"] == "vigil.task"


def _json_or_none(line: str) -> dict | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def test_metrics_need_no_key(anonymous):
    response = anonymous.get("/metrics")
    assert response.status_code == 200 and "vigil_queue_depth" in response.text


def test_queue_depth_counts_priority_lists_and_skips_an_unreachable_redis(broker_server):
    client = broker_server.client()
    queue = f"obs-{uuid.uuid4().hex[:8]}"
    client.rpush(queue, "a", "b")
    client.rpush(f"{queue}\x06\x163", "c")  # kombu's list for priority 3
    try:
        [family] = QueueDepthCollector(client, [queue, queue]).collect()
        assert [(s.labels, s.value) for s in family.samples] == [({"queue": queue}, 3)]
    finally:
        client.delete(queue, f"{queue}\x06\x163")
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    assert list(QueueDepthCollector(down, ["celery"]).collect()) == []


def _niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])  # field 19: nice


def test_workers_and_their_pools_run_nicer_than_the_api(worker, settings):
    """Busy workers must yield the CPU to API requests (VIGIL_WORKER_NICE, default 10)."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    expected = min(19, ours + settings.worker_nice)
    pool = child_pids(worker.proc.pid)
    assert pool, "the worker has no pool processes"
    assert [_niceness(pid) for pid in [worker.proc.pid, *pool]] == [expected] * (1 + len(pool))
