"""Webhook delivery state: each job's (in its hash), the tenant's finally failed deliveries,
and the retries scheduled for beat's sweep."""

from __future__ import annotations

import json
from collections.abc import Mapping

import redis

from core import keys
from tasks.store.encoding import now


def set_webhook_state(r: redis.Redis, tenant: str, job_id: str, state: Mapping) -> None:
    pipe = r.pipeline()
    pipe.hset(keys.job(tenant, job_id), "webhook", json.dumps(state))
    if state.get("status") == "failed":
        pipe.zadd(keys.webhooks_failed(tenant), {job_id: now()})
    else:
        pipe.zrem(keys.webhooks_failed(tenant), job_id)
    pipe.execute()


def failed_webhooks(r: redis.Redis, tenant: str, limit: int = 100) -> list[str]:
    """Job ids whose webhook finally failed, newest first (expired jobs are dropped)."""
    ids = [j.decode() for j in r.zrevrange(keys.webhooks_failed(tenant), 0, limit - 1)]
    gone = [j for j in ids if not r.exists(keys.job(tenant, j))]
    if gone:
        r.zrem(keys.webhooks_failed(tenant), *gone)
    return [j for j in ids if j not in gone]


def schedule_webhook(r: redis.Redis, tenant: str, job_id: str, due: float) -> None:
    r.zadd(keys.webhooks_scheduled(), {f"{tenant}:{job_id}": due})


def take_due_webhooks(r: redis.Redis, until: float) -> list[tuple[str, str]]:
    """(tenant, job id) of retries due by ``until``, each handed out once (ZREM decides)."""
    due = [m.decode() for m in r.zrangebyscore(keys.webhooks_scheduled(), "-inf", until)]
    return [tuple(m.split(":", 1)) for m in due if r.zrem(keys.webhooks_scheduled(), m)]
