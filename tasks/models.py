"""Anomaly models: training from history, versioned storage, a per-worker cache, retraining."""

from __future__ import annotations

import logging

import redis
from celery import shared_task

from core import keys
from core.config import Settings
from ml.anomaly import AnomalyModel, training_frame
from ml.features import model_frame
from ml.model_io import dump_model, load_model
from tasks import store
from tasks.context import redis_client, settings

log = logging.getLogger(__name__)
TRAINING_LOCK_S = 600
# Share of the kept history that must be new before a model is retrained.
RETRAIN_GROWTH = 0.1

# (redis url, tenant, event type) -> (version, model). A worker loads each version once and
# notices a new one with a single HGET per job.
_cache: dict[tuple[str, str, str], tuple[int, AnomalyModel]] = {}


def current_model(r: redis.Redis, url: str, tenant: str,
                  event_type: str) -> tuple[int, AnomalyModel] | None:
    version = store.model_version(r, tenant, event_type)
    if version is None:
        return None
    key = (url, tenant, event_type)
    cached = _cache.get(key)
    if cached and cached[0] == version:
        return cached
    found = store.model_blob(r, tenant, event_type)
    if found is None:
        return None
    loaded = (found[0], load_model(found[1]))
    _cache[key] = loaded
    return loaded


def train(r: redis.Redis, cfg: Settings, tenant: str, event_type: str) -> dict | None:
    """Fit a model on the stored history and store it as a new version.

    Returns its metadata, or None when the history is too short to learn from.
    """
    new_rows = store.new_rows_since_training(r, tenant, event_type)
    rows = store.history_rows(r, tenant, event_type)
    if len(rows) < cfg.model_min_rows:
        return None
    rows.sort(key=lambda row: row["ts"])
    values = training_frame([row["v"] for row in rows])
    frame = model_frame(values, [row["ts"] for row in rows], {}, cfg.derived_features)
    model = AnomalyModel(contamination=cfg.anomaly_contamination).fit(frame)
    meta = {"rows": model.n_rows_, "features": model.features_,
            "derived_features": list(cfg.derived_features),
            "contamination": model.contamination, "threshold": model.threshold_}
    version = store.save_model(r, tenant, event_type, dump_model(model), meta,
                               trained_on_new_rows=new_rows)
    log.info("trained model", extra={"tenant": tenant, "event_type": event_type,
                                     "version": version, "rows": model.n_rows_})
    return store.model_meta(r, tenant, event_type)


def wants_training(r: redis.Redis, cfg: Settings, tenant: str, event_type: str) -> bool:
    """No model yet and enough history for one; or enough new history since the last one
    (VIGIL_RETRAIN_MIN_NEW_ROWS, and at least a tenth of the kept history) and the last one is
    older than VIGIL_RETRAIN_INTERVAL. Training and every worker's reload cost about a second
    of CPU: under steady load, retraining at every few hundred events would eat the workers."""
    rows = store.history_count(r, tenant, event_type)
    meta = store.model_meta(r, tenant, event_type)
    if meta is None:
        return rows >= cfg.model_min_rows
    new = store.new_rows_since_training(r, tenant, event_type)
    return (new >= max(cfg.retrain_min_new_rows, RETRAIN_GROWTH * rows)
            and store.now() - meta["trained_at"] >= cfg.retrain_interval_s)


def schedule_training(r: redis.Redis, cfg: Settings, tenant: str, event_type: str) -> bool:
    """Enqueue a training task unless one is already pending for this type."""
    if not r.set(keys.training_lock(tenant, event_type), "1", nx=True, ex=TRAINING_LOCK_S):
        return False
    train_model.delay(tenant, event_type)
    return True


@shared_task(name="vigil.train_model", ignore_result=True)
def train_model(tenant: str, event_type: str) -> None:
    r, cfg = redis_client(), settings()
    try:
        train(r, cfg, tenant, event_type)
    finally:
        r.delete(keys.training_lock(tenant, event_type))


@shared_task(name="vigil.retrain_due", ignore_result=True)
def retrain_due() -> int:
    """Beat: train every event type that has no model yet or enough new history."""
    r, cfg = redis_client(), settings()
    scheduled = 0
    for tenant, event_type in store.known_types(r):
        if wants_training(r, cfg, tenant, event_type):
            scheduled += schedule_training(r, cfg, tenant, event_type)
    return scheduled
