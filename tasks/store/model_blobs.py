"""Trained models: each event type's blob, version and meta, and the history rows added since
its last training."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis

from core import keys
from tasks.store.encoding import now


def save_model(r: redis.Redis, tenant: str, event_type: str, blob: bytes,
               meta: Mapping[str, Any], trained_on_new_rows: int) -> int:
    """Store a new model version; every worker sees it on its next job. Returns the version."""
    key = keys.model(tenant, event_type)
    version = int(r.hincrby(key, "next_version", 1))
    meta = {**meta, "version": version, "trained_at": now()}
    pipe = r.pipeline()
    # Blob and version in one transaction: a reader never sees a version without its blob.
    pipe.hset(key, mapping={"version": version, "meta": json.dumps(meta), "blob": blob})
    # Rows that arrived while training still count toward the next retraining.
    pipe.decrby(keys.history_since_training(tenant, event_type), trained_on_new_rows)
    pipe.execute()
    return version


def model_meta(r: redis.Redis, tenant: str, event_type: str) -> dict[str, Any] | None:
    raw = r.hget(keys.model(tenant, event_type), "meta")
    return json.loads(raw) if raw else None


def model_version(r: redis.Redis, tenant: str, event_type: str) -> int | None:
    raw = r.hget(keys.model(tenant, event_type), "version")
    return int(raw) if raw else None


def model_blob(r: redis.Redis, tenant: str, event_type: str) -> tuple[int, bytes] | None:
    version, blob = r.hmget(keys.model(tenant, event_type), ["version", "blob"])
    return (int(version), blob) if version and blob else None


def new_rows_since_training(r: redis.Redis, tenant: str, event_type: str) -> int:
    return int(r.get(keys.history_since_training(tenant, event_type)) or 0)
