"""Schemas of the feedback loop: per-type settings, feedback on verdicts, backtest, replay."""

from __future__ import annotations

import math

import marshmallow as ma
from marshmallow import fields, validate

from api.schemas import Timestamp
from core.config import BASELINE_MODES, DERIVED_FEATURES

FIELD_NAMES = fields.List(fields.String(validate=validate.Length(1, 200)),
                          validate=validate.Length(max=500))


def _finite(value: float) -> None:
    if not math.isfinite(value):
        raise ma.ValidationError("Must be a finite number.")


class TypeSettingsBodySchema(ma.Schema):
    """An event type's settings: each one named overrides the environment's; one left out
    (or null) reverts to it."""
    z_threshold = fields.Float(allow_none=True, validate=[
        _finite, validate.Range(min=0, min_inclusive=False)], metadata={
        "description": "a fixed |z| threshold for every field; null: calibrated per field to "
                       "alert_rate", "example": 4.0})
    baseline_mode = fields.String(allow_none=True, validate=validate.OneOf(BASELINE_MODES))
    alert_rate = fields.Float(allow_none=True, validate=[
        _finite, validate.Range(0, 0.5, min_inclusive=False, max_inclusive=False)], metadata={
        "description": "share of ordinary events that may be flagged", "example": 0.0005})
    derived_features = fields.List(fields.String(validate=validate.OneOf(DERIVED_FEATURES)),
                                   allow_none=True)
    min_history = fields.Integer(allow_none=True, validate=validate.Range(min=2, max=100_000))
    check_fields = fields.List(fields.String(validate=validate.Length(1, 200)),
                               allow_none=True, validate=validate.Length(max=500), metadata={
        "description": "only these payload fields are checked; null: every numeric field"})
    ignore_fields = fields.List(fields.String(validate=validate.Length(1, 200)),
                                allow_none=True, validate=validate.Length(max=500), metadata={
        "description": "payload fields never checked (they still join baselines and history)",
        "example": ["latency_ms"]})

    @ma.post_load
    def drop_nulls(self, data: dict, **_) -> dict:
        return {name: value for name, value in data.items() if value is not None}


class TypeSettingsSchema(ma.Schema):
    event_type = fields.String()
    version = fields.Integer(metadata={"description": "0: none set; verdicts name the version "
                                                      "they were judged with"})
    updated_at = fields.String(allow_none=True)
    settings = fields.Dict(metadata={"description": "what judges the type now"})
    overrides = fields.Dict(metadata={"description": "what the type sets itself"})
    defaults = fields.Dict(metadata={"description": "the environment's (VIGIL_*)"})
    changes = fields.List(fields.Dict(), metadata={
        "description": "latest changes, newest first: version, at, before, after"})


LABELS = ("false_alarm", "confirmed")


class FeedbackBodySchema(ma.Schema):
    label = fields.String(required=True, allow_none=True, validate=validate.OneOf(LABELS),
                          metadata={"description": "false_alarm: the event was ordinary (its "
                                    "values join the baselines and the training history); "
                                    "confirmed: a real anomaly (kept out of training for "
                                    "good); null: withdraw the feedback",
                                    "example": "false_alarm"})
    note = fields.String(validate=validate.Length(max=1000), metadata={
        "example": "deploy at 14:02, expected"})


class FeedbackSchema(ma.Schema):
    job_id = fields.String()
    index = fields.Integer()
    event_type = fields.String()
    label = fields.String(allow_none=True)
    note = fields.String(allow_none=True)
    by = fields.String(metadata={"description": "the tenant's API key that gave it (its "
                                                "digest's first 12 hex digits)"})
    at = fields.String()
    valid = fields.Boolean(metadata={"description": "the event's verdict"})
    in_history = fields.Boolean(metadata={
        "description": "whether its values are now in the baselines and training history"})
    changed = fields.Boolean(metadata={"description": "false: the same feedback was given "
                                                      "before (nothing moved)"})


class FeedbackSummarySchema(ma.Schema):
    event_type = fields.String()
    false_alarm = fields.Integer()
    confirmed = fields.Integer()
    items = fields.List(fields.Dict(), metadata={"description": "current feedback, newest "
                                                                "first"})
    audit = fields.List(fields.Dict(), metadata={
        "description": "latest changes, newest first: event, at, by, before, after"})


class RangeSchema(ma.Schema):
    since = Timestamp(load_default=None, metadata={"description": "from this time (inclusive)",
                                                   "example": "2026-11-23T00:00:00Z"})
    until = Timestamp(load_default=None, metadata={"description": "up to this time "
                                                                  "(inclusive)"})

    @ma.validates_schema
    def ordered(self, data: dict, **_) -> None:
        if data.get("since") is not None and data.get("until") is not None \
                and data["since"] > data["until"]:
            raise ma.ValidationError("since must not be after until.", "until")


class RevalidateBodySchema(RangeSchema):
    changed_limit = fields.Integer(load_default=50, validate=validate.Range(0, 10_000),
                                   metadata={"description": "how many changed verdicts to "
                                                            "list (all are counted)"})


class BacktestBodySchema(RevalidateBodySchema):
    settings = fields.Nested(TypeSettingsBodySchema, required=True, metadata={
        "description": "the proposed settings (as PUT .../settings takes them)",
        "example": {"z_threshold": 4.0}})
