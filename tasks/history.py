"""History import and on-demand training, run as jobs like any other."""

from __future__ import annotations

from typing import Any

import redis
from celery import shared_task

from core import keys
from core.config import Settings
from ml.features import payload_frame
from ml.stats import column_moments
from tasks import type_settings
from tasks.lifecycle import JOB_TASK_OPTIONS, JobError, run_job
from tasks.models import TRAINING_LOCK_S, train
from tasks.store import baselines, job_data, jobs
from tasks.validate import accepted_rows, values_in_order

# Rows merged per script call: keeps each Redis call short so it never blocks others long.
CHUNK = 5000


def import_history(r: redis.Redis, cfg: Settings, tenant: str,
                   job: dict[str, Any]) -> tuple[dict, None]:
    """Merge every event into the baselines and history unchecked, then train the model."""
    job_id, event_type = job["job_id"], job["event_type"]
    # Held while importing and training: events judged meanwhile say a model is being
    # trained (tasks.models.no_model_note), and beat schedules no second training.
    lock = keys.training_lock(tenant, event_type)
    locked = r.set(lock, job_id, nx=True, ex=TRAINING_LOCK_S)
    try:
        return _import(r, cfg, tenant, job_id, event_type)
    finally:
        if locked:
            r.delete(lock)


def _import(r: redis.Redis, cfg: Settings, tenant: str, job_id: str,
            event_type: str) -> tuple[dict, None]:
    events = sorted(job_data.get_events(r, tenant, job_id), key=lambda e: e["timestamp"])
    fields: set[str] = set()
    for start in range(0, len(events), CHUNK):
        chunk = events[start:start + CHUNK]
        values = payload_frame([e["payload"] for e in chunk])
        fields.update(values.columns)
        matrix, columns = values.to_numpy(dtype=float), list(values.columns)
        baselines.apply_batch(r, cfg, tenant, event_type, f"{job_id}:{start}",
                          column_moments(matrix, columns),
                          accepted_rows(values, [e["timestamp"] for e in chunk]),
                          recent=values_in_order(matrix, columns))
        jobs.set_progress(r, tenant, job_id, start + len(chunk))
    summary = {"events": len(events), "fields": sorted(fields)}
    return {**summary, **_train_summary(r, cfg, tenant, event_type)}, None


def _train_summary(r: redis.Redis, cfg: Settings, tenant: str, event_type: str) -> dict:
    typed, settings_version = type_settings.effective(r, cfg, tenant, event_type)
    meta = train(r, typed, tenant, event_type, settings_version)
    if meta is None:
        rows = baselines.history_count(r, tenant, event_type)
        if rows >= typed.model_min_rows:
            return {"model": None, "model_note": "the type's settings check none of its "
                                                 "fields (check_fields, ignore_fields)"}
        return {"model": None,
                "model_note": f"{rows} events of history; the anomaly model needs "
                              f"{typed.model_min_rows}"}
    return {"model": meta}


def train_now(r: redis.Redis, cfg: Settings, tenant: str,
              job: dict[str, Any]) -> tuple[dict, None]:
    summary = _train_summary(r, cfg, tenant, job["event_type"])
    if summary["model"] is None:
        raise JobError(summary["model_note"])
    return summary, None


@shared_task(name="vigil.import_history", **JOB_TASK_OPTIONS)
def import_history_job(tenant: str, job_id: str) -> str | None:
    return run_job(tenant, job_id, import_history)


@shared_task(name="vigil.train_job", **JOB_TASK_OPTIONS)
def train_job(tenant: str, job_id: str) -> str | None:
    return run_job(tenant, job_id, train_now)
