"""A finished job is POSTed to its callback_url, signed, and retried while the receiver fails."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import WEBHOOK_SECRET, wait_for
from standardwebhooks import Webhook, WebhookVerificationError


class Receiver:
    """A local HTTP server that answers each POST with the next queued status (then 204)."""

    def __init__(self):
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.times: list[float] = []
        # Each answer: a status, or (status, headers).
        self.statuses: list[int | tuple[int, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                receiver.times.append(time.monotonic())
                answer = receiver.statuses.pop(0) if receiver.statuses else 204
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.received) >= count, f"got {len(self.received)} of {count} deliveries"


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
    job_id = submit(alpha, event_type, receiver.url)
    receiver.wait(1)
    headers, body = receiver.received[0]
    # Raises unless the signature over id.timestamp.body matches the shared secret.
    payload = Webhook(WEBHOOK_SECRET).verify(body, headers)
    assert headers["webhook-id"] == f"msg_{job_id}"
    assert payload["type"] == "job.completed"
    assert payload["data"]["job_id"] == job_id
    assert payload["data"]["status"] == "succeeded"
    assert payload["data"]["results"][0]["valid"] is True

    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==").verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(WEBHOOK_SECRET).verify(body.replace(b"succeeded", b"failed"), headers)

    assert wait_for(alpha, f"/v1/jobs/{job_id}")["status"] == "succeeded"
    assert wait_webhook(alpha, job_id, "delivered", timeout_s=10) == {
        "status": "delivered", "attempts": 1, "http_status": 204, "message_id": f"msg_{job_id}"}


def test_failing_receiver_is_retried_with_the_same_id_until_it_accepts(alpha, event_type,
                                                                        receiver):
    receiver.statuses = [500, 503]
    job_id = submit(alpha, event_type, receiver.url)
    receiver.wait(3)
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert ids == {f"msg_{job_id}"}
    for headers, body in receiver.received:
        Webhook(WEBHOOK_SECRET).verify(body, headers)
    assert wait_webhook(alpha, job_id, "delivered", timeout_s=10)["attempts"] == 3


def test_delivery_that_never_succeeds_is_kept_as_failed(alpha, event_type, receiver):
    receiver.statuses = [500] * 10
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
