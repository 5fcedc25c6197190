"""Anomaly models: training from history, versioned storage, a per-worker cache, retraining."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import redis
from celery import shared_task

from core import keys
from core.config import DERIVED_FEATURES, Settings
from ml.anomaly import AnomalyModel, training_frame
from ml.calibration import (
    MIN_CALIBRATION_VALUES,
    Calibration,
    calibrate,
    gaussian_z,
    seasonality,
)
from ml.features import DELTA_PREFIX, TIME_OF_DAY, model_frame
from ml.model_io import dump_model, load_model
from tasks import type_settings
from tasks.context import redis_client, settings
from tasks.store import baselines, encoding, model_blobs

log = logging.getLogger(__name__)
TRAINING_LOCK_S = 600
# Share of the kept history that must be new before a model is retrained.
RETRAIN_GROWTH = 0.1

# (redis url, tenant, event type) -> (version, model). A worker loads each version once and
# notices a new one with a single HGET per job.
_cache: dict[tuple[str, str, str], tuple[int, AnomalyModel]] = {}


def current_model(r: redis.Redis, url: str, tenant: str,
                  event_type: str) -> tuple[int, AnomalyModel] | None:
    version = model_blobs.model_version(r, tenant, event_type)
    if version is None:
        return None
    key = (url, tenant, event_type)
    cached = _cache.get(key)
    if cached and cached[0] == version:
        return cached
    found = model_blobs.model_blob(r, tenant, event_type)
    if found is None:
        return None
    loaded = (found[0], load_model(found[1]))
    _cache[key] = loaded
    return loaded


# (redis url, tenant, event type) -> (version, its meta): read once per version, like the model.
_metas: dict[tuple[str, str, str], tuple[int, dict]] = {}


def meta_of(r: redis.Redis, cfg: Settings, tenant: str, event_type: str,
            version: int) -> dict:
    """The metadata of model ``version`` ({} if a newer one landed meanwhile: read next time)."""
    key = (cfg.redis_url, tenant, event_type)
    cached = _metas.get(key)
    if cached and cached[0] == version:
        return cached[1]
    meta = model_blobs.model_meta(r, tenant, event_type) or {}
    if meta.get("version") != version:
        return {}
    _metas[key] = (version, meta)
    return meta


def calibrated_thresholds(r: redis.Redis, cfg: Settings, tenant: str, event_type: str,
                          version: int | None) -> dict[str, float]:
    """Per field, the z threshold calibrated when model ``version`` was trained; {} with no
    model or with VIGIL_Z_THRESHOLD set (the Judge's fallback or fixed threshold applies)."""
    if version is None or cfg.z_threshold is not None:
        return {}
    meta = meta_of(r, cfg, tenant, event_type, version)
    return {f: float(c["threshold"]) for f, c in meta.get("z_thresholds", {}).items()
            if c.get("source") != "VIGIL_Z_THRESHOLD"}


def rows_for_new_level(cfg: Settings) -> int:
    """Rows of history since a level shift before a model is trained on the new level alone:
    enough for its z thresholds to be calibrated (MIN_CALIBRATION_VALUES scored values after
    the first VIGIL_MIN_HISTORY), and at least VIGIL_MODEL_MIN_ROWS."""
    return max(cfg.model_min_rows, MIN_CALIBRATION_VALUES + cfg.min_history)


def level_shift_at(r: redis.Redis, tenant: str, event_type: str) -> float | None:
    """When the type's latest level shift completed (tasks.level_shifts), or None."""
    raw = r.get(keys.level_shift_at(tenant, event_type))
    return float(raw) if raw is not None else None


def outdated(meta: dict, shift_at: float | None) -> bool:
    """Whether a model (by its meta) learnt a level the type has since shifted away from:
    it would flag every event of the new level, and flagged events never join the history
    it retrains on, so it is set aside until a model is trained on the new level."""
    trained_from = meta.get("trained_from")
    return shift_at is not None and (trained_from is None or trained_from < shift_at)


def outdated_note(shift_at: float, cfg: Settings) -> dict:
    """The note of an event judged without its outdated model (a note: nothing failed)."""
    return {"code": "model_outdated", "level_shift_at": shift_at,
            "message": "the anomaly model learnt the level before this type's level shift "
                       f"(at timestamp {shift_at:g}); it is set aside, and a model is trained "
                       f"on the new level once {rows_for_new_level(cfg)} events of it are in "
                       "the history. Judged by the z-check alone"}


def no_model_note(r: redis.Redis, cfg: Settings, tenant: str, event_type: str) -> dict:
    """The note of an event judged while its type has no model: one is being trained (a
    training or history import holds the type's training lock, or the history is long
    enough: training follows), or how much history one needs."""
    rows = baselines.history_count(r, tenant, event_type)
    if rows >= cfg.model_min_rows or r.exists(keys.training_lock(tenant, event_type)):
        message = ("no anomaly model for this event type yet: one is being trained on its "
                   f"history ({rows} events so far) and judges the events sent once it is "
                   "ready. Judged by the z-check alone")
    else:
        message = ("no anomaly model for this event type yet; one is trained once "
                   f"{cfg.model_min_rows} events of history exist ({rows} so far)")
    return {"code": "no_model", "message": message}


def train(r: redis.Redis, cfg: Settings, tenant: str, event_type: str,
          settings_version: int = 0) -> dict | None:
    """Fit a model on the stored history with the type's settings ``cfg`` (version
    ``settings_version``) and store it as a new version.

    Returns its metadata, or None when the history is too short to learn from (or no field
    of it is checked).
    """
    new_rows = model_blobs.new_rows_since_training(r, tenant, event_type)
    rows = baselines.history_rows(r, tenant, event_type)
    if len(rows) < cfg.model_min_rows:
        return None
    rows.sort(key=lambda row: row["ts"])
    # After a level shift, the new level alone once it has enough rows (else the model
    # trained stays outdated, set aside, like the one before it).
    trained_from = level_shift_at(r, tenant, event_type)
    since = [row for row in rows if trained_from is not None and row["ts"] >= trained_from]
    if trained_from is not None and len(since) >= rows_for_new_level(cfg):
        rows = since
    else:
        trained_from = None
    fitted = fit(cfg, rows)
    if fitted is None:
        return None
    model, meta = fitted
    meta.update(trained_from=trained_from, settings_version=settings_version)
    version = model_blobs.save_model(r, tenant, event_type, dump_model(model), meta,
                               trained_on_new_rows=new_rows)
    log.info("trained model", extra={"tenant": tenant, "event_type": event_type,
                                     "version": version, "rows": model.n_rows_})
    return model_blobs.model_meta(r, tenant, event_type)


def fit(cfg: Settings, rows: list[dict]) -> tuple[AnomalyModel, dict] | None:
    """A model of these history rows (time order) and its card: features, the threshold
    and the z thresholds calibrated to ``cfg``'s alert budget. None: no field is checked."""
    values = training_frame([row["v"] for row in rows])
    # The fields the settings check (the history keeps the others too).
    values = values[[f for f in values.columns if cfg.checks(f)]]
    if values.columns.empty:
        return None
    timestamps = [row["ts"] for row in rows]
    derived, why = earned_features(cfg, timestamps)
    frame = model_frame(values, timestamps, {}, derived)
    model = AnomalyModel(contamination=cfg.model_contamination).fit(frame)
    training_scores = model.score(frame)
    return model, {
        "rows": model.n_rows_, "features": model.features_,
        "derived_features": list(derived), "derived_features_why": why,
        "contamination": model.contamination, "threshold": model.threshold_,
        "implied_rate": float(np.mean(training_scores > model.threshold_)),
        "alert_rate": cfg.alert_rate,
        "z_thresholds": {str(f): calibration_meta(cfg, calibrate_field(cfg, values[f]))
                         for f in values.columns}}


def earned_features(cfg: Settings, timestamps: list[float]) -> tuple[list[str], dict[str, str]]:
    """The derived features a model of this history uses, and why each is on or off:
    allowed by VIGIL_DERIVED_FEATURES, and time_of_day only once the history spans two days."""
    used, why = [], {}
    for name in DERIVED_FEATURES:
        if name not in cfg.derived_features:
            why[name] = "off: not in VIGIL_DERIVED_FEATURES"
            continue
        earned, reason = seasonality(timestamps) if name == "time_of_day" else (True, "allowed")
        why[name] = f"{'on' if earned else 'off'}: {reason}"
        if earned:
            used.append(name)
    return used, why


def calibrate_field(cfg: Settings, column: pd.Series) -> Calibration:
    """The z threshold of one field from its history (time order), as the z-rule judges it."""
    return calibrate(column.dropna().to_numpy(dtype=float), cfg.z_rate,
                     min_history=cfg.min_history, alpha=cfg.recent_alpha, clip=cfg.recent_clip,
                     mode=cfg.baseline_mode, fixed=cfg.z_threshold)


def calibration_meta(cfg: Settings, c: Calibration) -> dict:
    """A field's threshold as the model card shows it."""
    if cfg.z_threshold is not None:
        source = "VIGIL_Z_THRESHOLD"
    elif c.method == "gaussian":
        source = f"gaussian: {c.values} values are too few to calibrate on"
    else:
        source = f"calibrated on {c.values} values ({c.method})"
    return {"threshold": c.threshold, "source": source, "implied_rate": c.implied_rate}


def z_thresholds(cfg: Settings, meta: dict | None, fields: list[str]) -> dict[str, dict]:
    """The z threshold in force per field, its source and the rate it implies on the
    history: VIGIL_Z_THRESHOLD if set; else the one calibrated when the model was trained;
    else (no model yet, or a field it never saw) the Gaussian z of the z-rule's share."""
    calibrated = (meta or {}).get("z_thresholds", {})
    found = {}
    for f in fields:
        c = calibrated.get(f)
        if cfg.z_threshold is not None:
            same = c is not None and c["source"] == "VIGIL_Z_THRESHOLD" \
                and c["threshold"] == cfg.z_threshold
            found[f] = {"threshold": cfg.z_threshold, "source": "VIGIL_Z_THRESHOLD",
                        "implied_rate": c["implied_rate"] if same else None}
        elif c is not None and c["source"] != "VIGIL_Z_THRESHOLD":
            found[f] = c
        else:
            found[f] = {"threshold": gaussian_z(cfg.z_rate),
                        "source": "gaussian: no calibration yet", "implied_rate": None}
    return found


def derived_in(model: AnomalyModel) -> list[str]:
    """The derived features a model was trained with (its own, whatever the settings say now)."""
    names = set(model.features_)
    return [name for name, present in (("time_of_day", TIME_OF_DAY[0] in names),
                                       ("delta", any(f.startswith(DELTA_PREFIX) for f in names)))
            if present]


def wants_training(r: redis.Redis, cfg: Settings, tenant: str, event_type: str) -> bool:
    """No model yet and enough history for one; or enough new history since the last one
    (VIGIL_RETRAIN_MIN_NEW_ROWS, and at least a tenth of the kept history) and the last one is
    older than VIGIL_RETRAIN_INTERVAL. Training and every worker's reload cost about a second
    of CPU: under steady load, retraining at every few hundred events would eat the workers.
    A model outdated by a level shift is replaced as soon as the new level has enough rows."""
    rows = baselines.history_count(r, tenant, event_type)
    meta = model_blobs.model_meta(r, tenant, event_type)
    if meta is None:
        return rows >= cfg.model_min_rows
    shift_at = level_shift_at(r, tenant, event_type)
    if outdated(meta, shift_at):  # at once when the new level has enough rows
        return baselines.has_rows_since(r, tenant, event_type, shift_at, rows_for_new_level(cfg))
    new = model_blobs.new_rows_since_training(r, tenant, event_type)
    return (new >= max(cfg.retrain_min_new_rows, RETRAIN_GROWTH * rows)
            and encoding.now() - meta["trained_at"] >= cfg.retrain_interval_s)


def schedule_training(r: redis.Redis, cfg: Settings, tenant: str, event_type: str) -> bool:
    """Enqueue a training task unless one is already pending for this type."""
    if not r.set(keys.training_lock(tenant, event_type), "1", nx=True, ex=TRAINING_LOCK_S):
        return False
    train_model.delay(tenant, event_type)
    return True


@shared_task(name="vigil.train_model", ignore_result=True)
def train_model(tenant: str, event_type: str) -> None:
    r = redis_client()
    try:
        typed, version = type_settings.effective(r, settings(), tenant, event_type)
        train(r, typed, tenant, event_type, version)
    finally:
        r.delete(keys.training_lock(tenant, event_type))


@shared_task(name="vigil.retrain_due", ignore_result=True)
def retrain_due() -> int:
    """Beat: train every event type that has no model yet or enough new history."""
    r, cfg = redis_client(), settings()
    scheduled = 0
    for tenant, event_type in baselines.known_types(r):
        typed, _ = type_settings.effective(r, cfg, tenant, event_type)
        if wants_training(r, typed, tenant, event_type):
            scheduled += schedule_training(r, typed, tenant, event_type)
    return scheduled
