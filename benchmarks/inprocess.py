"""The in-process ceiling: Vigil's work on the same events in one process, no HTTP or Redis."""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson

from api.schemas import JobSubmitSchema
from core.config import Settings
from ml.anomaly import AnomalyModel, training_frame
from ml.features import model_frame, numeric_leaves, payload_frame
from ml.stats import frame_moments
from tasks.verdicts import Judge, judge_events


def ceiling(history: Sequence[dict], bodies: Sequence[bytes], cfg: Settings,
            min_seconds: float = 4.0, *, with_parsing: bool = True) -> tuple[int, float]:
    """(events judged, seconds) in one process, per 1,000-event job body.

    with_parsing: what the stack does with a body, minus HTTP, Redis and queues: parse the
    JSON (orjson, as the API does), load it through the API's marshmallow schema (the shape
    checks), then the statistical checks. Without: the statistical checks alone on events
    parsed beforehand (payload_frame + model_frame + judge_events per job).
    Baselines come from `history` and the model is fitted on it as tasks.models.train fits
    one; the recent baseline is taken equal to the all-time one (its figures change which
    events are flagged, not what judging costs).
    """
    rows = [numeric_leaves(h["payload"]) for h in history]
    stamps = [float(h["timestamp"]) for h in history]
    values = training_frame(rows)
    baseline = frame_moments(values)
    last = {f: float(values[f].iloc[-1]) for f in values.columns}
    model = AnomalyModel(contamination=cfg.model_contamination).fit(
        model_frame(values, stamps, {}, cfg.derived_features))
    rules = Judge(cfg.z_threshold, cfg.min_history, cfg.model_min_rows, cfg.baseline_mode)
    schema = JobSubmitSchema()

    def load(body: bytes) -> list[dict]:
        return schema.load(orjson.loads(body))["events"]

    parsed = [] if with_parsing else [load(body) for body in bodies]

    judged, k = 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < min_seconds or k < len(bodies):
        chunk = load(bodies[k % len(bodies)]) if with_parsing else parsed[k % len(bodies)]
        k += 1
        frame = payload_frame([e["payload"] for e in chunk])
        model_input = model_frame(frame, [e["timestamp"] for e in chunk], last,
                                  cfg.derived_features)
        judge_events(frame, baseline, rules, model, 1, recent=baseline, model_input=model_input)
        judged += len(chunk)
    return judged, time.perf_counter() - started
