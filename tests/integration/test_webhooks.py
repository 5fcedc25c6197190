"""A finished job is POSTed to its callback_url, signed with its tenant's own secret, and
retried while the receiver fails; a slow or flooding receiver holds nothing for long."""

from __future__ import annotations

import base64
import dataclasses
import json
import select
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import httpx
import pytest
from helpers import EVENT, KEYS, WEBHOOK_SECRET, problem, wait_for, wait_until, webhook_secret
from receivers import Receiver
from standardwebhooks import Webhook, WebhookVerificationError
from werkzeug.serving import make_server

from core import keys
from core.config import Settings, key_digest
from core.localredis import free_port


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


def submit(client, event_type: str, callback_url: str) -> str:
    response = client.post("/v1/jobs", json={"callback_url": callback_url, "events": [
        {"event_type": event_type, "timestamp": 1_790_000_000, "payload": {"x": 1.5}}]})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def wait_webhook(client, job_id: str, status: str, timeout_s: float = 15) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        webhook = client.get(f"/v1/jobs/{job_id}").json()["webhook"]
        if webhook and webhook["status"] == status:
            return webhook
        time.sleep(0.05)
    raise AssertionError(f"webhook of {job_id} never became {status}: {webhook}")


def test_finished_job_is_delivered_signed(alpha, event_type, receiver):
    secret = webhook_secret(alpha)
    job_id = submit(alpha, event_type, receiver.url)
    receiver.wait(1)
    headers, body = receiver.received[0]
    # Raises unless the signature over id.timestamp.body matches the tenant's secret.
    payload = Webhook(secret).verify(body, headers)
    assert headers["webhook-id"] == f"msg_{job_id}"
    assert payload["type"] == "job.completed"
    assert payload["data"]["job_id"] == job_id
    assert payload["data"]["status"] == "succeeded"
    assert payload["data"]["results"][0]["valid"] is True

    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==").verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"succeeded", b"failed"), headers)
    with pytest.raises(WebhookVerificationError):  # two tenants: the env secret signs for none
        Webhook(WEBHOOK_SECRET).verify(body, headers)

    assert wait_for(alpha, f"/v1/jobs/{job_id}")["status"] == "succeeded"
    assert wait_webhook(alpha, job_id, "delivered", timeout_s=10) == {
        "status": "delivered", "attempts": 1, "http_status": 204, "message_id": f"msg_{job_id}"}


def test_failing_receiver_is_retried_with_the_same_id_until_it_accepts(alpha, event_type,
                                                                        receiver):
    receiver.statuses = [500, 503]
    secret = webhook_secret(alpha)
    job_id = submit(alpha, event_type, receiver.url)
    receiver.wait(3)
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert ids == {f"msg_{job_id}"}
    for headers, body in receiver.received:
        Webhook(secret).verify(body, headers)
    assert wait_webhook(alpha, job_id, "delivered", timeout_s=10)["attempts"] == 3


def test_delivery_that_never_succeeds_is_kept_as_failed(alpha, event_type, receiver):
    receiver.statuses = [500] * 10
    webhook_secret(alpha)
    job_id = submit(alpha, event_type, receiver.url)
    receiver.wait(4)  # VIGIL_WEBHOOK_MAX_ATTEMPTS=4 in the test environment
    webhook = wait_webhook(alpha, job_id, "failed", timeout_s=10)
    assert webhook == {"status": "failed", "attempts": 4,
                       "last_error": "receiver answered HTTP 500",
                       "message_id": f"msg_{job_id}"}
    time.sleep(1)
    assert len(receiver.received) == 4
    assert json.loads(receiver.received[-1][1])["data"]["job_id"] == job_id


def test_failed_delivery_is_listed_and_can_be_sent_again(alpha, beta, event_type, receiver):
    receiver.statuses = [500] * 4
    webhook_secret(alpha)
    job_id = submit(alpha, event_type, receiver.url)
    wait_webhook(alpha, job_id, "failed")
    listed = alpha.get("/v1/webhooks/failed").json()["webhooks"]
    [mine] = [w for w in listed if w["job_id"] == job_id]
    assert mine["message_id"] == f"msg_{job_id}" and mine["attempts"] == 4
    assert mine["last_error"] == "receiver answered HTTP 500"
    assert mine["callback_url"] == receiver.url
    # Another tenant neither sees nor retries it.
    assert job_id not in {w["job_id"] for w in beta.get("/v1/webhooks/failed").json()["webhooks"]}
    assert beta.post(f"/v1/webhooks/msg_{job_id}/retry").status_code == 404

    response = alpha.post(f"/v1/webhooks/msg_{job_id}/retry")
    assert response.status_code == 202, response.text
    assert response.json() == {"message_id": f"msg_{job_id}", "job_id": job_id,
                               "status": "retrying"}
    webhook = wait_webhook(alpha, job_id, "delivered")
    assert webhook["attempts"] == 1
    receiver.wait(5)
    assert {h["webhook-id"] for h, _ in receiver.received} == {f"msg_{job_id}"}
    assert job_id not in {w["job_id"] for w in alpha.get("/v1/webhooks/failed").json()["webhooks"]}
    # Only failed deliveries are sent again.
    assert alpha.post(f"/v1/webhooks/msg_{job_id}/retry").status_code == 409


def test_retry_after_from_the_receiver_is_honoured(alpha, event_type, receiver):
    receiver.statuses = [(503, {"Retry-After": "2"})]
    webhook_secret(alpha)
    job_id = submit(alpha, event_type, receiver.url)
    receiver.wait(2)
    # The schedule says 0.2 s in the tests; the receiver asked for 2 s.
    assert receiver.times[1] - receiver.times[0] >= 2.0
    assert wait_webhook(alpha, job_id, "delivered")["attempts"] == 2


def test_two_active_secrets_both_sign(receiver):
    from tasks.webhooks import send_webhook

    old = "whsec_" + "b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA=="
    send_webhook(receiver.url, {"type": "job.completed", "data": {}}, "msg_rot", (WEBHOOK_SECRET, old),
                 5, ("127.0.0.0/8",))
    headers, body = receiver.received[0]
    assert len(headers["webhook-signature"].split()) == 2
    Webhook(WEBHOOK_SECRET).verify(body, headers)  # receivers on the new secret
    Webhook(old).verify(body, headers)  # and those still on the old one


# --- each tenant's own secret -----------------------------------------------------------------

@contextmanager
def api_knowing(settings: Settings, tenant: str, key: str) -> Iterator[httpx.Client]:
    """A second API instance (same Redis, same workers) that knows one more tenant: one that
    surely has no webhook secret yet."""
    from api import create_app

    changed = dataclasses.replace(settings, api_keys={**settings.api_keys, key_digest(key): tenant})
    server = make_server("127.0.0.1", free_port(), create_app(changed), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            yield client
    finally:
        server.shutdown()


def test_a_delivery_verifies_with_its_owners_secret_and_no_one_elses(alpha, beta, event_type,
                                                                     receiver):
    alpha_secret, beta_secret = webhook_secret(alpha), webhook_secret(beta)
    assert alpha_secret != beta_secret
    job_id = submit(alpha, event_type, receiver.url)
    receiver.wait(1)
    headers, body = receiver.received[0]
    assert Webhook(alpha_secret).verify(body, headers)["data"]["job_id"] == job_id
    # A receiver of beta's (or one still on the env secret) rejects alpha's delivery: what one
    # tenant signs, another cannot pass off as its own, and the reverse.
    for other in (beta_secret, WEBHOOK_SECRET):
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(body, headers)


def test_rotation_signs_with_both_secrets_until_the_overlap_is_ended(alpha, event_type, receiver):
    old = webhook_secret(alpha)
    response = alpha.post("/v1/webhooks/secret")
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    rotated = response.json()
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old
    assert len(base64.b64decode(new.removeprefix("whsec_"))) == 32
    assert rotated["overlap_seconds"] == 24 * 3600 and "not shown again" in rotated["message"]
    overlap = (datetime.fromisoformat(rotated["previous_expires_at"])
               - datetime.fromisoformat(rotated["created_at"]))
    assert abs(overlap - timedelta(hours=24)) <= timedelta(milliseconds=1)
    shown = alpha.get("/v1/webhooks/secret")
    assert shown.json() == {"has_secret": True, "created_at": rotated["created_at"],
                            "previous_signing": True,
                            "previous_expires_at": rotated["previous_expires_at"],
                            "overlap_seconds": 24 * 3600}
    assert new not in shown.text and old not in shown.text  # never shown again

    first = submit(alpha, event_type, receiver.url)
    receiver.wait(1)
    headers, body = receiver.received[0]
    assert headers["webhook-id"] == f"msg_{first}"
    assert len(headers["webhook-signature"].split()) == 2
    Webhook(new).verify(body, headers)  # receivers already on the new secret
    Webhook(old).verify(body, headers)  # and those still on the old one

    assert alpha.delete("/v1/webhooks/secret/previous").status_code == 204
    assert alpha.get("/v1/webhooks/secret").json()["previous_signing"] is False
    second = submit(alpha, event_type, receiver.url)
    receiver.wait(2)
    headers, body = receiver.received[1]
    assert headers["webhook-id"] == f"msg_{second}"
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, headers)


def test_a_callback_is_refused_until_the_tenant_has_its_own_secret(settings, worker, receiver,
                                                                   event_type):
    tenant, key = f"gamma-{uuid.uuid4().hex[:8]}", f"key-{uuid.uuid4().hex}"
    events = [{**EVENT, "event_type": event_type}]
    with api_knowing(settings, tenant, key) as gamma:
        refused = problem(gamma.post("/v1/jobs", json={"callback_url": receiver.url,
                                                       "events": events}), 409)
        assert "create your webhook secret first: POST /v1/webhooks/secret" in refused["detail"]
        assert gamma.get("/v1/webhooks/secret").json()["has_secret"] is False
        assert gamma.post("/v1/jobs", json={"events": events}).status_code == 202  # no callback
        secret = webhook_secret(gamma)
        job_id = submit(gamma, event_type, receiver.url)
        receiver.wait(1)
    headers, body = receiver.received[0]
    assert Webhook(secret).verify(body, headers)["data"]["job_id"] == job_id


def test_a_delivery_finding_no_secret_fails_at_once_saying_what_to_do(settings, redis_server,
                                                                      worker, receiver,
                                                                      event_type):
    """Submission refuses such a callback; a job stored anyway (say, before an upgrade) is never
    signed with the env secret another tenant holds."""
    from tasks import create_celery
    from tasks.store import jobs

    tenant, r = f"gamma-{uuid.uuid4().hex[:8]}", redis_server.client()
    job_id = jobs.create_job(r, settings, tenant, kind="validate",
                              events=[{**EVENT, "event_type": event_type}],
                              callback_url=receiver.url)
    create_celery(settings).send_task("vigil.validate_job", args=[tenant, job_id])
    deadline, webhook = time.monotonic() + 20, None
    while time.monotonic() < deadline and (webhook or {}).get("status") != "failed":
        webhook = (jobs.get_job(r, tenant, job_id) or {}).get("webhook")
        time.sleep(0.05)
    assert webhook and webhook["status"] == "failed" and webhook["attempts"] == 1, webhook
    assert f"tenant '{tenant}' has no webhook secret" in webhook["last_error"]
    assert "POST /v1/webhooks/secret" in webhook["last_error"]
    assert f"POST /v1/webhooks/msg_{job_id}/retry" in webhook["last_error"]
    time.sleep(0.5)
    assert receiver.received == []


def test_the_env_secret_signs_only_where_one_tenant_exists(redis_server, settings):
    from tasks import webhook_secrets as ws

    r, tenant, now = redis_server.client(), f"solo-{uuid.uuid4().hex[:8]}", time.time()
    single = dataclasses.replace(settings, api_keys={key_digest("solo-key"): tenant})
    assert ws.signing_secrets(r, single, tenant, now) == (WEBHOOK_SECRET,)  # make run's dev tenant
    with pytest.raises(ws.NoSecret):
        ws.signing_secrets(r, settings, tenant, now)  # alpha and beta: never a shared secret
    first = ws.rotate(r, tenant, now)
    assert first.previous_expires_at is None
    assert ws.signing_secrets(r, single, tenant, now) == (first.secret,)  # its own wins
    second = ws.rotate(r, tenant, now + 10)
    assert second.previous_expires_at == now + 10 + ws.OVERLAP_S
    assert ws.signing_secrets(r, settings, tenant, now + 20) == (second.secret, first.secret)
    # The overlap ends by itself after OVERLAP_S.
    assert ws.signing_secrets(r, settings, tenant, second.previous_expires_at + 1) == (second.secret,)
    assert r.exists(keys.webhook_secrets(tenant))


def test_the_cli_prints_a_secret_that_verifies_the_tenants_deliveries(api_url, worker, beta,
                                                                      event_type, receiver,
                                                                      capsys):
    from vigil_client.cli import main

    vigil = ["--url", api_url, "--key", KEYS["beta"]]
    assert main([*vigil, "webhook-secret"]) == 0
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("whsec_") and "not shown again" in err
    assert main([*vigil, "webhook-secret", "--status"]) == 0
    out, _ = capsys.readouterr()
    assert "webhook secret created" in out and secret not in out
    job_id = submit(beta, event_type, receiver.url)
    receiver.wait(1)
    headers, body = receiver.received[0]
    assert Webhook(secret).verify(body, headers)["data"]["job_id"] == job_id


# --- receivers that are slow or answer too much -----------------------------------------------

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"


class RawReceiver:
    """A webhook receiver over raw sockets that reads the request, then answers as ``mode``
    says, noting when each connection opened and closed and how much body it sent:

    trickle-head: the status line and headers one byte every 0.5 s (about 25 s in all);
    trickle-body: the head at once (200), then the body one byte every 0.5 s (30 s);
    flood: a 200 announcing ``FLOOD_BYTES`` of body, sent as fast as the client takes it.
    """

    FLOOD_BYTES = 300 * 2**20

    def __init__(self, mode: str):
        self.mode = mode
        self.connections: list[dict] = []
        self.stop = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                conn = {"opened": time.monotonic(), "closed": None, "sent": 0}
                outer.connections.append(conn)
                try:
                    read_request(self.request)
                    outer.answer(self.request, conn)
                except OSError:
                    pass  # the client closed the connection
                finally:
                    conn["closed"] = conn["closed"] or time.monotonic()

        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, sock: socket.socket, conn: dict) -> None:
        if self.mode == "flood":
            sock.sendall(HEAD + f"Content-Length: {self.FLOOD_BYTES}\r\n\r\n".encode())
            chunk = bytes(2**20)
            while conn["sent"] < self.FLOOD_BYTES and not self.stop.is_set():
                sock.sendall(chunk)
                conn["sent"] += len(chunk)
            return
        if self.mode == "trickle-head":
            head, body = HEAD + b"Content-Length: 0\r\n\r\n", b""
        else:
            sock.sendall(HEAD + b"Content-Length: 60\r\n\r\n")
            head, body = b"", b"x" * 60
        for byte in head + body:
            if self.stop.is_set() or self.closed_by_client(sock, 0.5):
                conn["closed"] = time.monotonic()
                return
            sock.sendall(bytes([byte]))

    @staticmethod
    def closed_by_client(sock: socket.socket, wait_s: float) -> bool:
        """Waits up to wait_s; True as soon as the client closes (the request was read: all
        that can arrive now is its end)."""
        readable, _, _ = select.select([sock], [], [], wait_s)
        return bool(readable) and not sock.recv(1)

    def __enter__(self) -> RawReceiver:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def read_request(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise OSError("closed before the end of the request's head")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            raise OSError("closed mid-request")
        body += more


PAYLOAD = {"type": "job.completed", "data": {"job_id": "slow"}}


@pytest.mark.parametrize("mode", ["trickle-head", "trickle-body"])
def test_a_trickling_receiver_holds_an_attempt_no_longer_than_its_limit(mode):
    from tasks.webhooks import DeliveryError, send_webhook

    with RawReceiver(mode) as slow:
        started = time.monotonic()
        try:
            outcome = send_webhook(slow.url, PAYLOAD, "msg_slow", WEBHOOK_SECRET, 2.0,
                                   ("127.0.0.0/8",)).status_code
        except DeliveryError as exc:
            outcome = str(exc)
        elapsed = time.monotonic() - started
        assert wait_until(lambda: slow.connections and slow.connections[0]["closed"], 5)
    # Generous: the limit is 2 s; a per-read timeout alone let the receiver keep it 25-30 s.
    assert elapsed < 2.0 + 3.0, (mode, elapsed, outcome)
    assert slow.connections[0]["closed"] - slow.connections[0]["opened"] < 2.0 + 3.0
    if mode == "trickle-head":
        assert outcome == "no answer within the attempt's 2 s limit (VIGIL_WEBHOOK_TIMEOUT; ReadTimeout)"
    else:  # a 200 status line is the answer, however slow the body that follows
        assert outcome == 200


def test_a_flooding_receiver_is_read_a_few_kb_then_dropped():
    from tasks.webhooks import send_webhook

    with RawReceiver("flood") as flood:
        response = send_webhook(flood.url, PAYLOAD, "msg_flood", WEBHOOK_SECRET, 10.0,
                                ("127.0.0.0/8",))
        assert response.status_code == 200
        assert wait_until(lambda: flood.connections and flood.connections[0]["closed"], 10)
    # What the sockets' buffers hold at most, not the 300 MB the old sender read whole.
    assert flood.connections[0]["sent"] < 32 * 2**20, flood.connections[0]


def test_slow_receivers_hold_neither_judging_nor_a_delivery_past_its_limit(alpha, event_type,
                                                                          settings):
    webhook_secret(alpha)
    with RawReceiver("trickle-head") as slow:
        hooked = [submit(alpha, event_type, slow.url) for _ in range(2)]
        # As many held deliveries as the jobs worker has processes (tasks.WORKER_ARGS).
        assert wait_until(lambda: len(slow.connections) >= 2, 30), slow.connections
        held = slow.connections[:2]
        response = alpha.post("/v1/jobs", json={"events": [
            {"event_type": event_type, "timestamp": 1_790_000_100, "payload": {"x": 2.0}}]})
        assert response.status_code == 202, response.text
        judged = wait_for(alpha, response.json()["status_url"], timeout_s=30)
        judged_at = time.monotonic()
        assert judged["status"] == "succeeded"
        # Judged while both deliveries were still being held: they never had its worker.
        assert all(c["closed"] is None or c["closed"] > judged_at for c in held), (held, judged_at)

        assert wait_until(lambda: all(c["closed"] for c in held), 20), held
        for c in held:  # VIGIL_WEBHOOK_TIMEOUT=4 (tests/conftest.py); generous bound
            assert c["closed"] - c["opened"] < settings.webhook_timeout_s + 4, held
        for job_id in hooked:
            state = wait_webhook_attempted(alpha, job_id)
            assert "within the attempt's 4 s limit" in state["last_error"], state


def wait_webhook_attempted(client, job_id: str, timeout_s: float = 15) -> dict:
    deadline = time.monotonic() + timeout_s
    webhook = None
    while time.monotonic() < deadline:
        webhook = client.get(f"/v1/jobs/{job_id}").json()["webhook"]
        if webhook and webhook.get("last_error"):
            return webhook
        time.sleep(0.05)
    raise AssertionError(f"no failed attempt recorded for {job_id}: {webhook}")
