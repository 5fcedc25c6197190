"""The reply of the script that stores a job is lost: the job was stored, the API never heard.

What a user relies on: an event is stored, and judged, once. The API retries the store under
the job id it chose before the first call, so the retry finds the job (and answers 202 with
its id) rather than storing the event a second time; a client that was answered 503 and
retries with its Idempotency-Key finds it too.

The API runs in process (werkzeug's test client, the fast path in front) with its store
connection through redis_proxy.LostReplyProxy, which relays the script call to Redis and then
drops the connection instead of relaying the reply. The broker connection goes to Redis
directly, as does the events worker that judges what was stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid

import pytest
from fault_helpers import FaultStack, wait_finished
from helpers import KEYS
from redis_proxy import LostReplyProxy
from werkzeug.test import Client

from api import create_app
from core import keys
from tasks.store import baselines, job_data, jobs

TENANT = "alpha"
AUTH = {"Authorization": f"Bearer {KEYS[TENANT]}"}
CREATE_SHA = hashlib.sha1(jobs._CREATE.encode()).hexdigest().encode()


def stores_a_job(args: list[bytes]) -> bool:
    """The store script's call (tasks.store.jobs._CREATE)."""
    return args[0].upper() == b"EVALSHA" and args[1].lower() == CREATE_SHA


@pytest.fixture(scope="module")
def stack(fault_stack: FaultStack) -> FaultStack:
    # Loaded beforehand, so the EVALSHA whose reply is lost ran the script (not NOSCRIPT).
    fault_stack.redis.client().script_load(jobs._CREATE)
    return fault_stack


@pytest.fixture
def proxy(stack: FaultStack):
    proxy = LostReplyProxy(stack.redis.port)
    yield proxy
    proxy.close()


def api(stack: FaultStack, proxy: LostReplyProxy, **settings) -> Client:
    """The app with its store behind the proxy; its Celery broker reached directly."""
    return Client(create_app(dataclasses.replace(
        stack.settings, redis_url=proxy.url, broker_url=stack.redis.url, **settings)))


def event(event_type: str, x: float = 100.0) -> dict:
    return {"event_type": event_type, "timestamp": 1_790_000_000, "payload": {"x": x}}


def new_jobs(stack: FaultStack, before: list[str]) -> list[str]:
    """The tenant's jobs stored since ``before`` (its recent jobs then), newest first."""
    recent = jobs.recent_job_ids(stack.redis.client(), TENANT, 50)
    return recent[:recent.index(before[0])] if before else recent


def recent(stack: FaultStack) -> list[str]:
    return jobs.recent_job_ids(stack.redis.client(), TENANT, 1)


def test_storing_again_under_the_same_job_id_stores_nothing(stack):
    r = stack.redis.client()
    settings = dataclasses.replace(stack.settings, rate_limit=100)
    job_id, event_type = jobs.new_job_id(), f"t-{uuid.uuid4().hex[:8]}"
    inbox_before = r.lrange(keys.tenant_inbox(TENANT), 0, -1)
    recent_before = jobs.recent_job_ids(r, TENANT, 49)
    started = int(time.time())
    first = jobs.create_inbox_job(r, settings, TENANT, event(event_type), 100, job_id=job_id)
    again = jobs.create_inbox_job(r, settings, TENANT, event(event_type, 5.0), 100,
                                   job_id=job_id)
    assert first[0] == again[0] == job_id
    assert again[1] is True  # the first may have woken nobody: the retry wakes the worker
    assert r.lrange(keys.tenant_inbox(TENANT), 0, -1) == inbox_before + [job_id.encode()]
    assert jobs.recent_job_ids(r, TENANT, 50) == [job_id, *recent_before]
    assert job_data.get_events(r, TENANT, job_id) == [event(event_type)]  # the first one's
    windows = [keys.rate_window(TENANT, second) for second in range(started, int(time.time()) + 1)]
    assert sum(int(count or 0) for count in r.mget(windows)) == 1  # one request counted
    r.delete(keys.tenant_inbox(TENANT))  # not for the events worker of the next tests


def test_a_single_event_whose_store_reply_was_lost_is_stored_and_judged_once(stack, proxy):
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    client = api(stack, proxy)
    r = stack.redis.client()
    before = recent(stack)
    assert stack.running("events") is None and r.llen(keys.tenant_inbox(TENANT)) == 0
    proxy.arm(stores_a_job)
    response = client.post("/v1/events/validate", json=event(event_type), headers=AUTH)
    assert len(proxy.lost) == 1, "the fast path's store call was not the one that lost its reply"
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id = response.get_json()["job_id"]
    assert new_jobs(stack, before) == [job_id]
    assert r.lrange(keys.tenant_inbox(TENANT), 0, -1) == [job_id.encode()]

    stack.ensure_workers("events")  # judges the inbox, woken by the retry's wake message
    job = wait_finished(stack.client(), job_id, 30, stack)
    assert job["status"] == "succeeded" and len(job["results"]) == 1
    assert baselines.load_baseline(r, TENANT, event_type)["x"].n == 1
    assert baselines.history_count(r, TENANT, event_type) == 1


def test_with_a_task_per_event_a_lost_store_reply_stores_and_enqueues_once(stack, proxy):
    """VIGIL_MICRO_BATCH=off: the job is stored once and its task sent once (by the retry:
    the first call's error came before its task was sent)."""
    client = api(stack, proxy, micro_batch=False)
    r = stack.redis.client()
    before, queued = recent(stack), r.llen("celery")
    assert stack.running("worker") is None  # the task waits in its queue, to be counted
    proxy.arm(stores_a_job)
    response = client.post("/v1/events/validate", json=event("per-task"), headers=AUTH)
    assert len(proxy.lost) == 1
    assert response.status_code == 202, response.get_data(as_text=True)
    assert new_jobs(stack, before) == [response.get_json()["job_id"]]
    assert r.llen("celery") == queued + 1


def test_a_batch_job_whose_store_reply_was_lost_is_stored_once(stack, proxy):
    """The Flask view retries the store once under the same id, and answers 202 with it."""
    client = api(stack, proxy)
    before = recent(stack)
    proxy.arm(stores_a_job)
    response = client.post("/v1/jobs", json={"events": [event("batch"), event("batch", 5.0)]},
                           headers=AUTH)
    assert len(proxy.lost) == 1
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id = response.get_json()["job_id"]
    assert new_jobs(stack, before) == [job_id]
    assert len(job_data.get_events(stack.redis.client(), TENANT, job_id)) == 2


def test_a_503_after_a_stored_job_then_a_retry_with_the_idempotency_key_finds_it(stack, proxy):
    """Both store calls lose their reply: 503, saying the job may have been stored. The
    client's retry with the same Idempotency-Key is answered with that job, not a second."""
    client = api(stack, proxy)
    before = recent(stack)
    body = {"events": [event("keyed")]}
    headers = {**AUTH, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    proxy.arm(stores_a_job, times=2)
    refused = client.post("/v1/jobs", json=body, headers=headers)
    assert len(proxy.lost) == 2
    assert refused.status_code == 503, refused.get_data(as_text=True)
    detail = refused.get_json()["detail"]
    assert "may or may not have taken effect" in detail and "Idempotency-Key" in detail
    [stored] = new_jobs(stack, before)  # the first call stored it; the second found it

    retried = client.post("/v1/jobs", json=body, headers=headers)
    assert retried.status_code == 202, retried.get_data(as_text=True)
    assert retried.get_json()["job_id"] == stored
    assert new_jobs(stack, before) == [stored]
