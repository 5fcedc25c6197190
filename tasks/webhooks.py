"""Webhooks: a pure payload builder, a signed sender, and a delivery task that retries."""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx
import redis
from celery import shared_task
from standardwebhooks import Webhook

from core import metrics, ssrf
from core.config import Settings
from tasks import episodes, webhook_secrets
from tasks.context import redis_client, settings
from tasks.documents import iso, job_document
from tasks.store import encoding, job_data, jobs, webhook_schedule

log = logging.getLogger(__name__)
EVENT_TYPE = "job.completed"
# Retries sooner than this wait in the broker as a countdown; later ones in the schedule.
MAX_COUNTDOWN_S = 300
# A receiver's answer is its status (and Retry-After); of its body at most this much is read
# before the connection is closed, so a receiver answering 300 MB costs a worker nothing.
MAX_ANSWER_BYTES = 4096
# A request body is written in pieces of this size, each granted only the attempt's time left.
WRITE_PIECE_BYTES = 16 * 1024


class DeliveryError(Exception):
    """The receiver did not accept the webhook."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RefusedDelivery(DeliveryError):
    """The callback URL may not be called (core/ssrf.py): a final failure, never retried."""


def build_payload(job: dict[str, Any], results: list[dict] | None) -> dict[str, Any]:
    """The Standard Webhooks body for a finished job."""
    return {"type": EVENT_TYPE, "timestamp": iso(job.get("finished_at")),
            "data": job_document(job, results)}


def message_id(job_id: str) -> str:
    """Stable across retries, so a receiver can drop duplicates of one delivery."""
    return f"msg_{job_id}"


def _time_left(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    """The socket timeout for one operation: its own, cut to what is left of the attempt."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the delivery attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write waits at most until the attempt's deadline.

    httpx's timeouts apply per socket operation: a receiver trickling a byte every second (in
    its headers or its body) would otherwise keep an attempt, and the worker, for as long as it
    likes. Each operation here is granted only the time left, so the attempt ends by then.
    """

    def __init__(self, stream: httpcore.NetworkStream, deadline: float):
        self.stream, self.deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, _time_left(self.deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # In pieces: one write may loop over many sends, each granted its timeout afresh.
        for start in range(0, len(buffer), WRITE_PIECE_BYTES):
            self.stream.write(buffer[start:start + WRITE_PIECE_BYTES],
                              _time_left(self.deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        tls = self.stream.start_tls(ssl_context, server_hostname,
                                    _time_left(self.deadline, timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls, self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.stream.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    """Plain sockets, every connection (each address tried) bounded by the attempt's deadline."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None,
                    socket_options=None) -> httpcore.NetworkStream:
        stream = super().connect_tcp(host, port,
                                     _time_left(self.deadline, timeout, httpcore.ConnectTimeout),
                                     local_address, socket_options)
        return _DeadlineStream(stream, self.deadline)


def _read_a_little(response: httpx.Response) -> None:
    """Read at most MAX_ANSWER_BYTES of the answer (raw: no decompression), then stop: closing
    the response then drops the connection with the rest unread."""
    seen = 0
    try:
        for chunk in response.iter_raw():
            seen += len(chunk)
            if seen >= MAX_ANSWER_BYTES:
                return
    except httpx.HTTPError:
        pass  # the status line was the answer; a body cut short (or too slow) changes nothing


def vetted(url: str, allow_private: bool | tuple[str, ...] = False) -> list[str]:
    """The addresses the callback URL may be sent to now (its DNS may have changed since
    submission); RefusedDelivery if none may, DeliveryError if it does not resolve."""
    try:
        return ssrf.vetted_addresses(url, allow_private)
    except ssrf.RefusedURL as exc:
        raise RefusedDelivery(f"refused: {exc}") from exc
    except ssrf.UnresolvableHost as exc:
        raise DeliveryError(str(exc)) from exc


def send_webhook(url: str, payload: dict[str, Any], msg_id: str, secrets: tuple[str, ...] | str,
                 timeout_s: float, allow_private: bool | tuple[str, ...] = False,
                 addresses: list[str] | None = None) -> httpx.Response:
    """POST the payload signed per Standard Webhooks; raises DeliveryError unless 2xx.

    The connection goes to the very addresses vetted (here, unless given) via
    ssrf.PinnedTransport, so DNS rebinding cannot redirect it. timeout_s bounds the whole
    attempt after the DNS lookup (connect, send, the answer's head and the little of its body
    read), not each socket operation.
    """
    if isinstance(secrets, str):
        secrets = (secrets,)
    body = json.dumps(payload, separators=(",", ":"))
    sent_at = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "Vigil-Webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": sign(secrets, msg_id, sent_at, body),
    }
    if addresses is None:
        addresses = vetted(url, allow_private)
    deadline = time.monotonic() + timeout_s
    transport = ssrf.PinnedTransport(addresses, _DeadlineBackend(deadline))
    try:
        with (httpx.Client(transport=transport, trust_env=False, timeout=timeout_s) as client,
              client.stream("POST", url, content=body, headers=headers) as response):
            _read_a_little(response)
    except httpx.InvalidURL as exc:
        raise RefusedDelivery(f"refused: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise DeliveryError(f"no answer within the attempt's {timeout_s:g} s limit "
                            f"(VIGIL_WEBHOOK_TIMEOUT; {type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"receiver answered HTTP {response.status_code}", retry_after(response))
    return response


def next_delay(schedule_s: tuple[float, ...], attempt: int,
               retry_after_s: float | None = None) -> float:
    """Seconds before the attempt after ``attempt`` (1-based): the schedule's step with
    +/-20% jitter (so receivers recovering from an outage are not hit in lockstep), and never
    sooner than the receiver's Retry-After."""
    step = schedule_s[min(attempt - 1, len(schedule_s) - 1)]
    delay = step * random.uniform(0.8, 1.2)
    return max(delay, retry_after_s) if retry_after_s else delay


def retry_after(response: httpx.Response) -> float | None:
    """A 429/503 answer's Retry-After, in seconds (delta-seconds or an HTTP date)."""
    if response.status_code not in (429, 503):
        return None
    raw = response.headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(raw) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


def sign(secrets: tuple[str, ...], msg_id: str, sent_at: datetime, body: str) -> str:
    """One signature per active secret, space-separated: receivers on the old or the new
    secret both verify while a secret is rotated."""
    return " ".join(Webhook(secret).sign(msg_id, sent_at, body) for secret in secrets)


def attempt_delivery(r: redis.Redis, cfg: Settings, tenant: str, job_id: str,
                     job: dict[str, Any]) -> httpx.Response:
    """One attempt, signed with the tenant's own secrets (read afresh: a rotation since the
    last attempt counts). Without a secret it may sign with, a final failure saying why."""
    addresses = vetted(job["callback_url"], cfg.allow_private_callbacks)  # a refusal comes first
    try:
        secrets = webhook_secrets.signing_secrets(r, cfg, tenant, encoding.now())
    except webhook_secrets.NoSecret as exc:
        raise RefusedDelivery(f"not sent: {exc}; then send it again: POST "
                              f"/v1/webhooks/{message_id(job_id)}/retry") from exc
    payload = build_payload(job, job_data.get_results(r, tenant, job_id))
    return send_webhook(job["callback_url"], payload, message_id(job_id), secrets,
                        cfg.webhook_timeout_s, addresses=addresses)


@shared_task(name="vigil.deliver_webhook", ignore_result=True)
def deliver_webhook(tenant: str, job_id: str) -> str:
    r, cfg = redis_client(), settings()
    job = jobs.get_job(r, tenant, job_id)
    if not job or not job.get("callback_url"):
        return "gone"
    attempt = (job.get("webhook") or {}).get("attempts", 0) + 1
    try:
        response = attempt_delivery(r, cfg, tenant, job_id, job)
    except DeliveryError as exc:
        final = isinstance(exc, RefusedDelivery) or attempt >= cfg.webhook_max_attempts
        delay = None if final else next_delay(cfg.webhook_schedule_s, attempt, exc.retry_after_s)
        webhook_schedule.set_webhook_state(r, tenant, job_id, {
            "status": "failed" if final else "retrying", "attempts": attempt,
            "last_error": str(exc), "message_id": message_id(job_id),
            **({"next_attempt_at": iso(encoding.now() + delay)} if delay is not None else {})})
        metrics.WEBHOOK_DELIVERIES.labels(outcome="failed" if final else "retrying").inc()
        log.warning("webhook delivery failed", extra={"tenant": tenant, "job_id": job_id,
                                                      "attempt": attempt, "error": str(exc)})
        if final:
            return "failed"
        # A countdown longer than the broker's visibility timeout makes the Redis transport
        # deliver the task twice; longer waits go to a schedule that beat sweeps instead.
        if delay <= min(MAX_COUNTDOWN_S, cfg.visibility_timeout_s / 2):
            deliver_webhook.apply_async((tenant, job_id), countdown=cfg.broker_countdown(delay))
        else:
            webhook_schedule.schedule_webhook(r, tenant, job_id, encoding.now() + delay)
        return "retrying"
    metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
    webhook_schedule.set_webhook_state(r, tenant, job_id, {
        "status": "delivered", "attempts": attempt, "http_status": response.status_code,
        "message_id": message_id(job_id)})
    return "delivered"


@shared_task(name="vigil.send_due_webhooks", ignore_result=True)
def send_due_webhooks() -> int:
    """Beat: enqueue the webhook retries whose time has come."""
    due = webhook_schedule.take_due_webhooks(redis_client(), encoding.now())
    for tenant, job_id in due:
        deliver_webhook.delay(tenant, job_id)
    return len(due)


# --- episode webhooks ---------------------------------------------------------------------

def build_episode_payload(transition: str, episode: dict[str, Any], at: float) -> dict[str, Any]:
    """The Standard Webhooks body of an episode's transition ("opened" or "closed"): the
    episode as it was then, ``at`` when the transition was recorded."""
    return {"type": f"episode.{transition}", "timestamp": iso(at), "data": episode}


def episode_message_id(episode_id: str, transition: str) -> str:
    """One id per episode and transition, the same on every retry."""
    return f"msg_{episode_id}_{transition}"


def announce_episodes(r: redis.Redis, tenant: str, transitions: list[tuple[str, dict]]) -> int:
    """Enqueue a delivery per transition, if the tenant registered an episode webhook (after
    the merge that recorded them applied). Returns how many were enqueued."""
    if not transitions or episodes.get_webhook(r, tenant) is None:
        return 0
    at = encoding.now()
    for transition, episode in transitions:
        deliver_episode_webhook.delay(tenant, transition, episode, at)
    return len(transitions)


def attempt_episode_delivery(r: redis.Redis, cfg: Settings, tenant: str, url: str,
                             transition: str, episode: dict[str, Any], at: float) -> None:
    """One attempt, signed with the tenant's secrets as they are now."""
    addresses = vetted(url, cfg.allow_private_callbacks)  # a refusal comes first
    try:
        secrets = webhook_secrets.signing_secrets(r, cfg, tenant, encoding.now())
    except webhook_secrets.NoSecret as exc:
        raise RefusedDelivery(f"not sent: {exc}") from exc
    send_webhook(url, build_episode_payload(transition, episode, at),
                 episode_message_id(episode["id"], transition), secrets, cfg.webhook_timeout_s,
                 addresses=addresses)


@shared_task(name="vigil.deliver_episode_webhook", bind=True, ignore_result=True)
def deliver_episode_webhook(self, tenant: str, transition: str, episode: dict[str, Any],
                            at: float) -> str:
    """Deliver an episode.opened / episode.closed webhook to the tenant's episode webhook URL
    (read afresh: one deleted meanwhile is not called), retried with Celery's own retry on
    VIGIL_WEBHOOK_SCHEDULE up to VIGIL_WEBHOOK_MAX_ATTEMPTS. Each wait is at most half the
    broker's visibility timeout: a longer countdown would make the Redis transport deliver
    the task twice."""
    r, cfg = redis_client(), settings()
    hook = episodes.get_webhook(r, tenant)
    if hook is None:
        return "gone"
    attempt = self.request.retries + 1
    try:
        attempt_episode_delivery(r, cfg, tenant, hook["url"], transition, episode, at)
    except DeliveryError as exc:
        final = isinstance(exc, RefusedDelivery) or attempt >= cfg.webhook_max_attempts
        metrics.WEBHOOK_DELIVERIES.labels(outcome="failed" if final else "retrying").inc()
        log.warning("episode webhook delivery failed", extra={
            "tenant": tenant, "episode": episode.get("id"), "transition": transition,
            "attempt": attempt, "final": final, "error": str(exc)})
        if final:
            return "failed"
        delay = min(next_delay(cfg.webhook_schedule_s, attempt, exc.retry_after_s),
                    cfg.visibility_timeout_s / 2)
        raise self.retry(countdown=cfg.broker_countdown(delay),
                         max_retries=cfg.webhook_max_attempts - 1) from exc
    metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
    return "delivered"
