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
from ml.features import model_frame, payload_frame
from ml.stats import Moments, frame_moments
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


def values_in_order(values: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every value of each field, in row (time) order, for the recent baseline."""
    return {field: column.dropna().to_numpy(dtype=float) for field, column in values.items()}


def snapshot(fields: list[str], baseline: dict[str, Moments],
             recent: dict[str, Moments]) -> dict[str, dict]:
    """The baselines an event was judged against, per field, so its verdict can be redone."""
    return {f: {"n": baseline[f].n, "mean": baseline[f].mean, "std": baseline[f].std,
                **({"recent_n": recent[f].n, "recent_mean": recent[f].mean,
                    "recent_std": recent[f].std} if f in recent else {})}
            for f in fields if f in baseline}


def check_events(r: redis.Redis, cfg: Settings, tenant: str,
                 job: dict[str, Any]) -> tuple[dict, list]:
    job_id = job["job_id"]
    events = store.get_events(r, tenant, job_id)
    rules = Judge(cfg.z_threshold, cfg.min_history, cfg.model_min_rows, cfg.baseline_mode)
    by_type: dict[str, list[int]] = defaultdict(list)
    # Time order within each type: deltas and the recent baseline follow the series.
    for i in sorted(range(len(events)), key=lambda i: events[i]["timestamp"]):
        by_type[events[i]["event_type"]].append(i)

    results: list[dict] = [{} for _ in events]
    done = 0
    for event_type, indices in by_type.items():
        for start in range(0, len(indices), CHUNK):
            chunk = indices[start:start + CHUNK]
            values = payload_frame([events[i]["payload"] for i in chunk])
            timestamps = [events[i]["timestamp"] for i in chunk]
            fields = list(values.columns)
            baseline = store.load_baseline(r, tenant, event_type, fields)
            recent = store.load_recent(r, tenant, event_type, fields)
            found = current_model(r, cfg.redis_url, tenant, event_type)
            version, model = found if found else (None, None)
            model_input = None
            if model is not None:
                model_input = model_frame(values, timestamps,
                                          store.load_last_values(r, tenant, event_type, fields),
                                          cfg.derived_features)
            verdicts = judge_events(values, baseline, rules, model, version, recent=recent,
                                    model_input=model_input)
            processed_at = datetime.now(UTC).isoformat(timespec="milliseconds")

            # Only valid events move the all-time baseline and join the history (no poisoning);
            # the recent baseline sees every value but clips outliers itself.
            valid = np.array([v["valid"] for v in verdicts], dtype=bool)
            accepted = values[valid]
            store.apply_batch(r, cfg, tenant, event_type, f"{job_id}:{event_type}:{start}",
                              frame_moments(accepted),
                              accepted_rows(accepted, [t for t, ok in zip(timestamps, valid) if ok]),
                              recent=values_in_order(values),
                              flagged=[{"ts": row["ts"], "v": row["v"],
                                        "codes": sorted({w["code"] for w in v["warnings"]})}
                                       for row, v in zip(accepted_rows(values, timestamps), verdicts)
                                       if not v["valid"]])
            present = values.notna().to_numpy()
            for row, (i, verdict) in enumerate(zip(chunk, verdicts)):
                judged_fields = [f for f, has in zip(fields, present[row]) if has]
                results[i] = {"index": i, "event_id": events[i].get("event_id"),
                              "event_type": event_type, "timestamp": events[i]["timestamp"],
                              "processed_at": processed_at, **verdict,
                              "model_version": version,
                              "baseline": snapshot(judged_fields, baseline, recent)}
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
