"""Webhooks: a pure payload builder, a signed sender, and a delivery task that retries."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime
from typing import Any

import httpx
from celery import shared_task
from standardwebhooks import Webhook

from core import metrics, ssrf
from tasks import store
from tasks.context import redis_client, settings
from tasks.documents import iso, job_document

log = logging.getLogger(__name__)
EVENT_TYPE = "job.completed"


class DeliveryError(Exception):
    """The receiver did not accept the webhook."""


class RefusedDelivery(DeliveryError):
    """The callback URL may not be called (core/ssrf.py): a final failure, never retried."""


def build_payload(job: dict[str, Any], results: list[dict] | None) -> dict[str, Any]:
    """The Standard Webhooks body for a finished job."""
    return {"type": EVENT_TYPE, "timestamp": iso(job.get("finished_at")),
            "data": job_document(job, results)}


def message_id(job_id: str) -> str:
    """Stable across retries, so a receiver can drop duplicates of one delivery."""
    return f"msg_{job_id}"


def send_webhook(url: str, payload: dict[str, Any], msg_id: str, secret: str,
                 timeout_s: float, allow_private: bool | tuple[str, ...] = False) -> httpx.Response:
    """POST the payload signed per Standard Webhooks; raises DeliveryError unless 2xx.

    The URL is checked again here (its DNS may have changed since submission) and the connection
    goes to the very addresses checked (ssrf.PinnedTransport), so DNS rebinding cannot redirect it.
    """
    body = json.dumps(payload, separators=(",", ":"))
    sent_at = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "Vigil-Webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, sent_at, body),
    }
    try:
        addresses = ssrf.vetted_addresses(url, allow_private)
    except ssrf.RefusedURL as exc:
        raise RefusedDelivery(f"refused: {exc}") from exc
    except ssrf.UnresolvableHost as exc:
        raise DeliveryError(str(exc)) from exc
    try:
        with httpx.Client(transport=ssrf.PinnedTransport(addresses), trust_env=False,
                          timeout=timeout_s) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.InvalidURL as exc:
        raise RefusedDelivery(f"refused: {exc}") from exc
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"receiver answered HTTP {response.status_code}")
    return response


def retry_delay(base_s: float, retries: int, cap_s: float) -> float:
    """Exponential backoff with full jitter (as Celery's retry_backoff, but in fractions of a
    second too). Capped below the broker's visibility timeout: a countdown longer than it
    makes the Redis transport deliver the task twice."""
    return random.uniform(0, min(cap_s, base_s * 2**retries))


@shared_task(bind=True, name="vigil.deliver_webhook", ignore_result=True)
def deliver_webhook(self, tenant: str, job_id: str) -> str:
    r, cfg = redis_client(), settings()
    job = store.get_job(r, tenant, job_id)
    if not job or not job.get("callback_url"):
        return "gone"
    attempt = self.request.retries + 1
    payload = build_payload(job, store.get_results(r, tenant, job_id))
    try:
        response = send_webhook(job["callback_url"], payload, message_id(job_id),
                                cfg.webhook_secret, cfg.webhook_timeout_s, cfg.allow_private_callbacks)
    except DeliveryError as exc:
        final = isinstance(exc, RefusedDelivery) or attempt >= cfg.webhook_max_attempts
        store.set_webhook_state(r, tenant, job_id, {
            "status": "failed" if final else "retrying", "attempts": attempt,
            "last_error": str(exc), "message_id": message_id(job_id)})
        metrics.WEBHOOK_DELIVERIES.labels(outcome="failed" if final else "retrying").inc()
        log.warning("webhook delivery failed", extra={"tenant": tenant, "job_id": job_id,
                                                      "attempt": attempt, "error": str(exc)})
        if final:
            return "failed"
        countdown = retry_delay(cfg.webhook_backoff_s, self.request.retries,
                                cap_s=cfg.visibility_timeout_s / 2)
        raise self.retry(exc=exc, countdown=countdown, max_retries=None) from exc
    metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
    store.set_webhook_state(r, tenant, job_id, {
        "status": "delivered", "attempts": attempt, "http_status": response.status_code,
        "message_id": message_id(job_id)})
    return "delivered"
