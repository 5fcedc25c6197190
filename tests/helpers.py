"""What tests do as clients: authenticate, submit, poll."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx

KEYS = {"alpha": "key-alpha-test", "beta": "key-beta-test"}
WEBHOOK_SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC1mb3ItdmlnaWw="


EVENT = {"event_type": "checkout", "timestamp": 1_790_000_000, "payload": {"amount": 1.0}}


def problem(response, status: int) -> dict:
    """Assert an RFC 9457 problem answer with this status; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


def client_for(base_url: str, tenant: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {KEYS[tenant]}"} if tenant else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=30)


def wait_for(client: httpx.Client, status_url: str, timeout_s: float = 60) -> dict:
    """Poll a job until it finishes, as a client would."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(status_url)
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert "Retry-After" not in response.headers
            return job
        assert response.headers["Retry-After"]
        time.sleep(0.1)
    raise AssertionError(f"job {status_url} did not finish in {timeout_s}s: {job}")


def webhook_secret(client: httpx.Client) -> str:
    """The tenant's own webhook secret, created (or rotated) as a user does: POST
    /v1/webhooks/secret, which shows it this once."""
    response = client.post("/v1/webhooks/secret")
    assert response.status_code == 201, response.text
    return response.json()["secret"]


def wait_until(predicate: Callable[[], object], timeout_s: float) -> object:
    """Poll ``predicate`` until it returns something truthy; its last value otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def form_token(client: httpx.Client) -> str:
    """The CSRF token of the /ui page's forms (login, or once signed in logout, feedback and
    backtest: one token per session), as a browser gets it: by loading the page, which also
    sets the session cookie the token belongs to."""
    tokens = set(re.findall(r'name="csrf_token" value="([^"]+)"', client.get("/ui").text))
    [token] = tokens
    return token


def own_client(r):
    """A client for another thread on the same store as ``r`` (its pool's connections are
    handed out per thread); a RedisCluster client is shared as it is, being thread-safe."""
    import redis
    from redis.cluster import RedisCluster

    return r if isinstance(r, RedisCluster) else redis.Redis(connection_pool=r.connection_pool)
