"""The validation task: a job's events against their baselines and anomaly models."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import redis
from celery import shared_task

from core.config import Settings
from ml.features import payload_frame
from ml.stats import frame_moments
from tasks import store
from tasks.lifecycle import JOB_TASK_OPTIONS, run_job
from tasks.models import current_model, schedule_training, wants_training
from tasks.verdicts import Judge, judge_events

# Events judged and merged per step: bounds memory and shows progress on large jobs.
CHUNK = 1000


def accepted_rows(values: pd.DataFrame, timestamps: list[float]) -> list[dict]:
    """History rows for accepted events: timestamp and the fields each one has."""
    columns = list(values.columns)
    return [{"ts": ts, "v": {c: float(x) for c, x in zip(columns, row) if x == x}}
            for ts, row in zip(timestamps, values.to_numpy(dtype=float))]


def check_events(r: redis.Redis, cfg: Settings, tenant: str,
                 job: dict[str, Any]) -> tuple[dict, list]:
    job_id = job["job_id"]
    events = store.get_events(r, tenant, job_id)
    rules = Judge(cfg.z_threshold, cfg.min_history, cfg.model_min_rows)
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        by_type[event["event_type"]].append(i)

    results: list[dict] = [{} for _ in events]
    done = 0
    for event_type, indices in by_type.items():
        for start in range(0, len(indices), CHUNK):
            chunk = indices[start:start + CHUNK]
            values = payload_frame([events[i]["payload"] for i in chunk])
            baseline = store.load_baseline(r, tenant, event_type, list(values.columns))
            found = current_model(r, cfg.redis_url, tenant, event_type)
            version, model = found if found else (None, None)
            verdicts = judge_events(values, baseline, rules, model, version)
            processed_at = datetime.now(UTC).isoformat(timespec="milliseconds")

            # Only valid events move the baseline and join the history (no poisoning).
            valid = np.array([v["valid"] for v in verdicts], dtype=bool)
            accepted = values[valid]
            store.apply_batch(r, cfg, tenant, event_type, f"{job_id}:{event_type}:{start}",
                              frame_moments(accepted),
                              accepted_rows(accepted, [events[i]["timestamp"]
                                                       for i, ok in zip(chunk, valid) if ok]))
            for i, verdict in zip(chunk, verdicts):
                results[i] = {"index": i, "event_id": events[i].get("event_id"),
                              "event_type": event_type, "timestamp": events[i]["timestamp"],
                              "processed_at": processed_at, **verdict,
                              "model_version": version}
            done += len(chunk)
            store.set_progress(r, tenant, job_id, done)
        if wants_training(r, cfg, tenant, event_type):
            schedule_training(r, cfg, tenant, event_type)

    n_valid = sum(result["valid"] for result in results)
    codes = Counter(w["code"] for result in results for w in result["warnings"])
    summary = {"events": len(results), "valid": n_valid, "invalid": len(results) - n_valid,
               "warnings": dict(codes)}
    return summary, results


@shared_task(name="vigil.validate_job", **JOB_TASK_OPTIONS)
def validate_job(tenant: str, job_id: str) -> str | None:
    return run_job(tenant, job_id, check_events)
