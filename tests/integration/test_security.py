"""Idempotent submissions, callback URLs that cannot reach private networks, rate limits."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from helpers import EVENT, client_for, problem, wait_for
from werkzeug.serving import make_server

from core import keys
from core.config import Settings
from core.localredis import free_port


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """A second API instance (own settings, same Redis) on a free port."""
    from api import create_app

    server = make_server("127.0.0.1", free_port(), create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture
def app_with(settings) -> Callable[..., httpx.Client]:
    """app_with(rate_limit=5): an alpha client of an API instance with these settings changed."""
    opened = []

    def make(**changes) -> httpx.Client:
        context = serve(dataclasses.replace(settings, **changes))
        client = client_for(context.__enter__(), "alpha")
        opened.append((context, client))
        return client

    yield make
    for context, client in opened:
        client.close()
        context.__exit__(None, None, None)


def idem(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


# --- Idempotency-Key --------------------------------------------------------------------------

def test_retry_with_the_same_key_returns_the_same_job(alpha, event_type):
    key = f"order-{uuid.uuid4()}"
    event = {**EVENT, "event_type": event_type}
    first = alpha.post("/v1/events/validate", json=event, headers=idem(key))
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = alpha.post("/v1/events/validate", json=event, headers=idem(key))
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    job_id = first.json()["job_id"]
    listed = [j["job_id"] for j in alpha.get("/v1/jobs").json()["jobs"]]
    assert listed.count(job_id) == 1
    # The one job runs once and replays still point at it after it finished.
    assert wait_for(alpha, first.json()["status_url"])["status"] == "succeeded"
    third = alpha.post("/v1/events/validate", json=event, headers=idem(key))
    assert third.json()["job_id"] == job_id and third.headers["Idempotent-Replayed"] == "true"
    # Without a key, the same body is a new submission.
    assert alpha.post("/v1/events/validate", json=event).json()["job_id"] != job_id


def test_key_reused_with_another_body_is_422(alpha, event_type):
    key = f"k-{uuid.uuid4()}"
    body = {"events": [{**EVENT, "event_type": event_type}]}
    assert alpha.post("/v1/jobs", json=body, headers=idem(key)).status_code == 202
    other = {"events": [{**EVENT, "event_type": event_type, "payload": {"amount": 2.0}}]}
    errors = problem(alpha.post("/v1/jobs", json=other, headers=idem(key)), 422)["errors"]
    assert "used with another request" in errors["headers"]["Idempotency-Key"][0]
    # Same body, other path: another request too.
    problem(alpha.post("/v1/events/validate", json=body["events"][0], headers=idem(key)), 422)


@pytest.mark.parametrize("key", ["", "x" * 201, "tab\there", b"caf\xe9"])
def test_invalid_keys_are_422(alpha, key):
    errors = problem(alpha.post("/v1/events/validate", json=EVENT, headers=idem(key)), 422)["errors"]
    assert "printable ASCII" in errors["headers"]["Idempotency-Key"][0]


def test_keys_are_per_tenant_and_cover_every_submission_route(alpha, beta, event_type):
    key = f"shared-{uuid.uuid4()}"
    a = alpha.post("/v1/events/validate", json=EVENT, headers=idem(key)).json()["job_id"]
    b = beta.post("/v1/events/validate", json=EVENT, headers=idem(key))
    assert b.status_code == 202 and "Idempotent-Replayed" not in b.headers
    assert b.json()["job_id"] != a
    history = {"events": [{"timestamp": 1_790_000_000 + i, "payload": {"x": float(i)}}
                          for i in range(5)]}
    for path, kwargs in ((f"/v1/event-types/{event_type}/history", {"json": history}),
                         (f"/v1/event-types/{event_type}/model", {}),
                         ("/v1/jobs", {"content": b"event_type,timestamp,x\nt,1790000000,1\n",
                                       "headers": {"Content-Type": "text/csv"}})):
        key = f"{path}-{uuid.uuid4()}"
        headers = {**kwargs.pop("headers", {}), **idem(key)}
        first = alpha.post(path, headers=headers, **kwargs)
        assert first.status_code == 202, first.text
        again = alpha.post(path, headers=headers, **kwargs)
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"


def test_concurrent_duplicates_create_one_job(alpha, event_type):
    key = f"race-{uuid.uuid4()}"
    event = {**EVENT, "event_type": event_type}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda _: alpha.post("/v1/events/validate", json=event, headers=idem(key)), range(16)))
    assert {r.status_code for r in responses} <= {202, 409}
    accepted = [r for r in responses if r.status_code == 202]
    assert len({r.json()["job_id"] for r in accepted}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in accepted) == 1
    for r in responses:
        if r.status_code == 409:
            assert "in progress" in problem(r, 409)["detail"]
    listed = [j["job_id"] for j in alpha.get("/v1/jobs").json()["jobs"]]
    assert listed.count(accepted[0].json()["job_id"]) == 1


def test_a_key_whose_first_request_is_still_running_is_409(alpha, redis_server):
    import hashlib

    from api.idempotency import fingerprint

    key = f"pending-{uuid.uuid4()}"
    body = json.dumps(EVENT).encode()
    pending = {"state": "pending", "claim": "x",
               "fingerprint": fingerprint("POST", "/v1/events/validate", b"", body)}
    redis_key = keys.idempotency("alpha", hashlib.sha256(key.encode()).hexdigest())
    redis_server.client().set(redis_key, json.dumps(pending), ex=60)
    response = alpha.post("/v1/events/validate", content=body, headers={
        **idem(key), "Content-Type": "application/json"})
    assert "retry" in problem(response, 409)["detail"]
    redis_server.client().delete(redis_key)
    assert alpha.post("/v1/events/validate", content=body, headers={
        **idem(key), "Content-Type": "application/json"}).status_code == 202


def test_a_rejected_submission_does_not_use_up_its_key(alpha, settings):
    key = f"retry-after-fix-{uuid.uuid4()}"
    too_many = {"events": [EVENT] * (settings.max_events_per_job + 1)}
    problem(alpha.post("/v1/jobs", json=too_many, headers=idem(key)), 422)
    assert alpha.post("/v1/jobs", json={"events": [EVENT]}, headers=idem(key)).status_code == 202


# --- callback URLs (SSRF) ---------------------------------------------------------------------

REFUSED_EVERYWHERE = ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                      "http://10.0.0.1/hook", "http://192.168.1.1/", "http://100.64.0.1/"]


def callback_error(client: httpx.Client, url: str) -> str:
    body = {"callback_url": url, "events": [EVENT]}
    errors = problem(client.post("/v1/jobs", json=body), 422)["errors"]
    return errors["json"]["callback_url"][0]


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "http://127.0.0.1:8080/",
                                 "http://localhost:9/hook", "http://[::1]/", "http://0.0.0.0/",
                                 "http://[::ffff:127.0.0.1]/", *REFUSED_EVERYWHERE])
def test_callbacks_into_private_networks_are_refused_by_default(app_with, worker, url):
    message = callback_error(app_with(allow_private_callbacks=()), url)
    # marshmallow's Url field already refuses the IPv4-mapped spelling as not a URL.
    assert "public addresses only" in message or (url.startswith("http://[::ffff:")
                                                  and "Not a valid URL" in message)


@pytest.mark.parametrize("url", REFUSED_EVERYWHERE)
def test_metadata_and_other_private_networks_stay_refused_when_loopback_is_allowed(alpha, url):
    # The test environment allows 127.0.0.0/8 and ::1 (tests/conftest.py), nothing else.
    assert "public addresses only" in callback_error(alpha, url)


def test_refused_callback_in_a_csv_submission(app_with, worker):
    client = app_with(allow_private_callbacks=())
    response = client.post("/v1/jobs", params={"callback_url": "http://localhost/hook"},
                           content=b"event_type,timestamp,x\nt,1790000000,1\n",
                           headers={"Content-Type": "text/csv"})
    assert "loopback" in problem(response, 422)["errors"]["json"]["callback_url"][0]


def test_refused_callback_does_not_use_up_an_idempotency_key(app_with, worker):
    client = app_with(allow_private_callbacks=())
    key = f"ssrf-{uuid.uuid4()}"
    bad = {"callback_url": "http://127.0.0.1/", "events": [EVENT]}
    problem(client.post("/v1/jobs", json=bad, headers=idem(key)), 422)
    assert client.post("/v1/jobs", json={"events": [EVENT]}, headers=idem(key)).status_code == 202


def test_delivery_to_a_refused_address_fails_at_once_without_retries(alpha, redis_server,
                                                                    settings, event_type):
    """A job whose callback became refused after submission (say its DNS changed): the worker
    checks again before sending and gives up at once."""
    from tasks import create_celery, store

    job_id = store.create_job(redis_server.client(), settings, "alpha", kind="validate",
                              events=[{**EVENT, "event_type": event_type}],
                              callback_url="http://169.254.169.254/latest/meta-data/")
    create_celery(settings).send_task("vigil.validate_job", args=["alpha", job_id])
    wait_for(alpha, f"/v1/jobs/{job_id}")
    deadline = time.monotonic() + 15
    webhook = None
    while time.monotonic() < deadline:
        webhook = alpha.get(f"/v1/jobs/{job_id}").json()["webhook"]
        if webhook:
            break
        time.sleep(0.05)
    assert webhook["status"] == "failed" and webhook["attempts"] == 1, webhook
    assert webhook["last_error"].startswith("refused: ") and "metadata" in webhook["last_error"]
    time.sleep(1)  # no retry changes it
    assert alpha.get(f"/v1/jobs/{job_id}").json()["webhook"] == webhook


# --- rate limit -------------------------------------------------------------------------------

def test_exceeding_the_rate_limit_is_429_with_retry_after(app_with, worker, redis_server):
    client = app_with(rate_limit=5)
    responses = [client.get("/v1/jobs") for _ in range(30)]
    limited = [r for r in responses if r.status_code == 429]
    assert limited, [r.status_code for r in responses]
    assert {r.status_code for r in responses} == {200, 429}
    body = problem(limited[0], 429)
    assert "5 requests per second" in body["detail"]
    assert int(limited[0].headers["Retry-After"]) >= 1
    # Another tenant has its own budget.
    with client_for(str(client.base_url), "beta") as beta:
        assert beta.get("/v1/jobs").status_code == 200
    # Windows expire: counters do not pile up in Redis, one per second forever. (TTL -1: a
    # key without expiry; -2: gone already, between the scan and the TTL.)
    r = redis_server.client()
    ttls = [r.ttl(w) for w in r.scan_iter("vigil:alpha:rate:*")]
    assert ttls and -1 not in ttls and max(ttls) <= 2, ttls
    # The limit is per second: the next window answers again.
    time.sleep(1.1)
    assert client.get("/v1/jobs").status_code == 200


def test_rate_limit_zero_disables_it(app_with, worker):
    client = app_with(rate_limit=0)
    assert all(client.get("/v1/event-types").status_code == 200 for _ in range(30))

