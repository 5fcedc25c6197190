"""Marshmallow schemas: what clients send and what they get back."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate
from webargs.fields import DelimitedList

from ml.features import DERIVED_PREFIX, SEPARATOR
from ml.stats import MAX_MAGNITUDE

# \Z, not $: validate.Regexp uses match(), and $ would let a trailing newline through.
EVENT_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,100}\Z")
EVENT_TYPE_RULE = "1-100 characters: letters, digits, '_', '.', ':' or '-'"
# Payload limits: generous for real events, small enough that one event cannot tie up a worker.
MAX_DEPTH = 8
MAX_LEAVES = 500
MAX_KEY_LENGTH = 200
MAX_STRING_LENGTH = 10_000
# Timestamps outside [1970, 2200) are almost certainly milliseconds sent as seconds.
MAX_EPOCH_S = 7_258_118_400


class Timestamp(fields.Field):
    """Epoch seconds (number) or an ISO-8601 string; loaded as epoch seconds (float, UTC)."""

    default_error_messages = {
        "invalid": "Not a timestamp: send epoch seconds or an ISO-8601 string such as "
                   "2026-11-23T12:00:00Z.",
        "range": "Timestamp out of range: epoch seconds must be between 0 and "
                 f"{MAX_EPOCH_S} (milliseconds sent as seconds?).",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Mapping | None, **kwargs) -> float:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, str):
            text = value.strip()
            try:
                epoch = float(text)
            except ValueError:
                try:
                    parsed = datetime.fromisoformat(text)
                except ValueError as exc:
                    raise self.make_error("invalid") from exc
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=UTC)
                epoch = parsed.timestamp()
        elif isinstance(value, int | float):
            epoch = float(value)
        else:
            raise self.make_error("invalid")
        if not (math.isfinite(epoch) and 0 <= epoch < MAX_EPOCH_S):
            raise self.make_error("range")
        return epoch

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs) -> Any:
        return value


_NUMBERS = frozenset({int, float, bool, type(None)})
MAGNITUDE_RULE = (f"numbers in a payload must be within +/-{MAX_MAGNITUDE:g} (beyond that a "
                  "field's baseline can no longer be computed); send such a value in other "
                  "units or as a string")
RESERVED_RULE = (f"payload keys starting with '{DERIVED_PREFIX}' are reserved for Vigil's "
                 "derived features; rename the field")


def check_payload(payload: Mapping) -> None:
    """Depth, size, key and string limits, numbers within MAX_MAGNITUDE, no field in the
    derived features' namespace, no two keys naming one field; raises ValidationError
    naming the first breach."""
    leaves = 0
    dotted = nested = False  # both needed for two keys to flatten to one dotted path
    # Locals, not globals: this runs for every value of every event on the hot path.
    limit, separator, reserved, max_key = MAX_MAGNITUDE, SEPARATOR, DERIVED_PREFIX, MAX_KEY_LENGTH
    # fields: the node was reached through objects only, so its numbers are fields (as
    # ml.features.numeric_leaves finds them), not list items.
    stack: list[tuple[Any, int, str, bool]] = [(payload, 1, "", True)]
    while stack:
        node, depth, path, fields_above = stack.pop()
        if depth > MAX_DEPTH:
            raise ma.ValidationError(f"{path} nests deeper than {MAX_DEPTH} levels.")
        in_list = isinstance(node, list)
        has_fields = fields_above and not in_list
        # Fields under a reserved top-level key are reserved; top-level keys are checked one
        # by one.
        under_reserved = has_fields and path.startswith(reserved)
        top = not path
        # Only containers go on the stack, and a child's path is spelt out only when it is
        # needed: most of a payload is numbers, checked here in one step each.
        for key, value in enumerate(node) if in_list else node.items():
            if not in_list:
                if not key or len(key) > max_key:
                    raise ma.ValidationError(f"Keys must be 1-{max_key} characters "
                                             f"(under {path or 'payload'}).")
                if separator in key:
                    dotted = True
            kind = type(value)
            if kind is float or kind is int:  # numbers first: most of a payload
                leaves += 1
                if value > limit or value < -limit:
                    raise ma.ValidationError(
                        f"{_child(path, key, in_list)} is out of range: {MAGNITUDE_RULE}.")
                if under_reserved or (top and key[0] == reserved):
                    raise ma.ValidationError(f"{_child(path, key, False)}: {RESERVED_RULE}.")
            elif kind not in _NUMBERS and isinstance(value, Mapping | list):
                nested = nested or has_fields
                stack.append((value, depth + 1, _child(path, key, in_list), has_fields))
                continue
            else:
                leaves += 1
                if isinstance(value, str) and len(value) > MAX_STRING_LENGTH:
                    raise ma.ValidationError(f"{_child(path, key, in_list)} is longer than "
                                             f"{MAX_STRING_LENGTH} characters.")
            if leaves > MAX_LEAVES:
                raise ma.ValidationError(f"More than {MAX_LEAVES} values in one payload.")
    if dotted and nested:
        _check_one_key_per_field(payload)


def _check_one_key_per_field(payload: Mapping) -> None:
    """{"a.b": 1, "a": {"b": 2}}: both are the field a.b, and one would silently replace
    the other. Walked only for a payload with both a dotted key and nesting."""
    seen: set[str] = set()
    stack: list[tuple[Mapping, str]] = [(payload, "")]
    while stack:
        node, prefix = stack.pop()
        for key, value in node.items():
            kind = type(value)
            if kind is float or kind is int:
                field = f"{prefix}{key}"
                if field in seen:
                    raise ma.ValidationError(
                        f"Two keys name the field {field} (a dotted key and nested objects "
                        "spell the same path, and one value would replace the other); "
                        "rename one of them.")
                seen.add(field)
            elif kind not in _NUMBERS and isinstance(value, Mapping):
                stack.append((value, f"{prefix}{key}{SEPARATOR}"))


def _child(path: str, key: str | int, in_list: bool) -> str:
    if in_list:
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class Payload(fields.Dict):
    # No key field: JSON object keys are strings already and check_payload checks their
    # length; deserialising each key through fields.String was a tenth of a batch's cost.
    def __init__(self, **kwargs):
        super().__init__(validate=check_payload, **kwargs)


class HistoryEventSchema(ma.Schema):
    timestamp = Timestamp(required=True, metadata={"example": "2026-11-23T12:00:00Z"})
    payload = Payload(required=True, metadata={"example": {"amount": 42.5, "items": 3}})


class EventSchema(HistoryEventSchema):
    event_type = fields.String(required=True, validate=validate.Regexp(EVENT_TYPE,
                               error=f"event_type must be {EVENT_TYPE_RULE}."),
                               metadata={"example": "checkout"})
    event_id = fields.String(validate=validate.Length(1, 200),
                             metadata={"description": "Your own id, echoed in the result"})


EVENT_SCHEMA = EventSchema()  # shared: building a schema costs more than loading an event


def _csv_events(rows: list[dict], fixed: tuple[str, ...]) -> list[dict]:
    """CSV rows -> events: the fixed columns stay, every other column goes into the payload."""
    return [{**{k: row[k] for k in fixed if k in row},
             "payload": {k: v for k, v in row.items() if k not in fixed}} for row in rows]


class JobSubmitSchema(ma.Schema):
    events = fields.List(fields.Nested(EventSchema), required=True,
                         validate=validate.Length(min=1, error="Send at least one event."))
    callback_url = fields.Url(schemes={"http", "https"}, require_tld=False,
                              validate=validate.Length(max=2000),
                              metadata={"description": "POSTed the finished job, signed"})

    csv_columns = ("event_type", "timestamp")
    # VIGIL_MAX_EVENTS_PER_JOB bounds this list; api.parsing refuses a longer one unbuilt.
    events_list = "events"

    @classmethod
    def from_csv(cls, rows: list[dict], query: Mapping[str, str]) -> dict:
        body: dict[str, Any] = {"events": _csv_events(rows, ("event_type", "timestamp",
                                                             "event_id"))}
        if query.get("callback_url"):
            body["callback_url"] = query["callback_url"]
        return body


class HistorySubmitSchema(ma.Schema):
    events = fields.List(fields.Nested(HistoryEventSchema), required=True,
                         validate=validate.Length(min=1, error="Send at least one event."))

    csv_columns = ("timestamp",)
    events_list = "events"  # bounded as JobSubmitSchema's

    @classmethod
    def from_csv(cls, rows: list[dict], query: Mapping[str, str]) -> dict:
        return {"events": _csv_events(rows, ("timestamp",))}


ETA_DESCRIPTION = (
    "Estimated seconds until the job finishes: the events queued ahead of it (its own "
    "included) over the throughput its kind of worker measured in the last minute (with none "
    "measured, a conservative default). An estimate, not a promise; `Retry-After` (whole "
    "seconds, 1 to 30) follows it.")


class JobAcceptedSchema(ma.Schema):
    job_id = fields.String()
    status = fields.String()
    status_url = fields.String()
    eta_s = fields.Float(metadata={"description": ETA_DESCRIPTION})


class BaselineFiguresSchema(ma.Schema):
    n = fields.Integer()
    mean = fields.Float()
    std = fields.Float()
    z = fields.Float(allow_none=True)
    expected_range = fields.List(fields.Float())


class LevelSchema(ma.Schema):
    mean = fields.Float()
    std = fields.Float()


class WarningSchema(ma.Schema):
    code = fields.String(metadata={"description": "out_of_range, anomaly or level_shift"})
    field = fields.String(allow_none=True)
    message = fields.String()
    value = fields.Float()
    mean = fields.Float()
    std = fields.Float()
    z = fields.Float(allow_none=True)
    expected_range = fields.List(fields.Float())
    baseline = fields.String(metadata={"description": "which baseline(s) judged it: all_time, "
                                                      "recent, or all_time+recent"})
    baselines = fields.Dict(keys=fields.String(), values=fields.Nested(BaselineFiguresSchema))
    score = fields.Float()
    threshold = fields.Float()
    model_version = fields.Integer()
    contributors = fields.List(fields.Dict())
    # level_shift: VIGIL_LEVEL_SHIFT_RUN values in a row out of range on one side.
    run = fields.Integer(metadata={"description": "level_shift: how many values in a row, out "
                                                  "of range on the same side, made it"})
    before = fields.Nested(LevelSchema, metadata={
        "description": "level_shift: the recent baseline the value was judged against"})
    after = fields.Nested(LevelSchema, metadata={
        "description": "level_shift: the recent baseline re-seeded from the run's values, "
                       "which later values are judged against"})


class NoteSchema(ma.Schema):
    code = fields.String(metadata={"description": "insufficient_history, no_model or model_error"})
    field = fields.String()
    message = fields.String()
    count = fields.Integer()
    needed = fields.Integer()


class ResultSchema(ma.Schema):
    index = fields.Integer()
    event_id = fields.String(allow_none=True)
    event_type = fields.String()
    timestamp = fields.Float()
    valid = fields.Boolean()
    processed_at = fields.String()
    warnings = fields.List(fields.Nested(WarningSchema))
    notes = fields.List(fields.Nested(NoteSchema))
    anomaly_score = fields.Float(allow_none=True)
    model_version = fields.Integer(allow_none=True)
    settings_version = fields.Integer(metadata={
        "description": "the version of the type's settings it was judged with (0: the "
                       "environment's; GET /v1/event-types/{type}/settings)"})
    baseline = fields.Dict(metadata={"description": "per field, the baselines it was judged "
                                                    "against (n, mean, std, recent_*)"})
    episode = fields.String(allow_none=True, metadata={
        "description": "the episode a flagged event belongs to (GET /v1/event-types/{type}/"
                       "episodes); null for a valid event"})


class ProgressSchema(ma.Schema):
    done = fields.Integer()
    total = fields.Integer()


class JobSchema(ma.Schema):
    job_id = fields.String()
    kind = fields.String(metadata={"description": "validate, history, train, backtest or "
                                                 "revalidate"})
    status = fields.String(metadata={"description": "queued, running, succeeded, failed, cancelled"})
    event_type = fields.String(allow_none=True)
    progress = fields.Nested(ProgressSchema)
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    summary = fields.Dict(allow_none=True, metadata={
        "description": "what the job found; a backtest's or a replay's whole answer"})
    params = fields.Dict(metadata={"description": "what a backtest or replay was asked"})
    error = fields.String(allow_none=True)
    callback_url = fields.String(allow_none=True)
    webhook = fields.Dict(allow_none=True)
    results = fields.List(fields.Nested(ResultSchema))
    eta_s = fields.Float(metadata={"description": ETA_DESCRIPTION + " In GET /v1/jobs/{id} "
                                   "while the job is queued or running; absent once it "
                                   "finished, and from job lists."})


class JobListSchema(ma.Schema):
    jobs = fields.List(fields.Nested(JobSchema))
    next_before = fields.String(allow_none=True, metadata={
        "description": "Without `ids`: pass it as `?before=` for the next (older) page; null "
                       "when this page is the last. Absent with `ids`."})


JOB_ID = re.compile(r"[0-9a-f]{32}")
MAX_JOB_IDS = 100
DEFAULT_JOBS_PAGE = 20
MAX_JOBS_PAGE = 200
RECENT_JOBS_LISTED = 200  # tasks.store.jobs.RECENT_JOBS_KEPT (api/schemas.py imports no tasks/)


class JobQuerySchema(ma.Schema):
    ids = DelimitedList(
        fields.String(validate=validate.Regexp(rf"\A{JOB_ID.pattern}\Z",
                                               error="A job id is 32 hexadecimal digits.")),
        validate=validate.Length(min=1, max=MAX_JOB_IDS,
                                 error=f"Ask for 1 to {MAX_JOB_IDS} jobs at a time."),
        metadata={"description": "Comma-separated job ids: these jobs, with their results "
                                 "once finished, in this order (unknown or expired ids are "
                                 "left out). Without it: the latest jobs, without results, "
                                 "newest first, a page at a time (`limit`, `before`)."})
    limit = fields.Integer(load_default=DEFAULT_JOBS_PAGE, validate=validate.Range(
        min=1, max=MAX_JOBS_PAGE, error=f"limit is 1 to {MAX_JOBS_PAGE}."), metadata={
        "description": f"Without `ids`: jobs per page (default {DEFAULT_JOBS_PAGE}, at most "
                       f"{MAX_JOBS_PAGE}). The list keeps the tenant's latest "
                       f"{RECENT_JOBS_LISTED} jobs."})
    before = fields.String(validate=validate.Regexp(rf"\A{JOB_ID.pattern}\Z",
                                                    error="A job id is 32 hexadecimal digits."),
                           metadata={"description": "Without `ids`: the jobs listed after this "
                                     "one (older), as `next_before` of the previous page says. "
                                     "404 if that job is no longer in the list."})


class EventTypeSchema(ma.Schema):
    event_type = fields.String()
    events = fields.Integer(metadata={"description": "events accepted into its history"})
    model_version = fields.Integer(allow_none=True)


class EventTypeListSchema(ma.Schema):
    event_types = fields.List(fields.Nested(EventTypeSchema))


class ZThresholdSchema(ma.Schema):
    threshold = fields.Float(metadata={"description": "|z| beyond which a value is out of range"})
    source = fields.String(metadata={"description": "'calibrated on N values (method)', "
                                                    "'gaussian: ...' or 'VIGIL_Z_THRESHOLD'"})
    implied_rate = fields.Float(allow_none=True, metadata={
        "description": "share of the history's values the threshold would have flagged, each "
                       "judged against the baselines of the values before it (null: not "
                       "measured)"})


class FieldBaselineSchema(ma.Schema):
    field = fields.String()
    count = fields.Integer()
    mean = fields.Float()
    std = fields.Float()
    checked = fields.Boolean(metadata={"description": "enough history to be checked"})
    z_threshold = fields.Nested(ZThresholdSchema)


class BaselineSchema(ma.Schema):
    event_type = fields.String()
    min_history = fields.Integer()
    alert_rate = fields.Float(metadata={"description": "VIGIL_ALERT_RATE: the share of "
                                                      "ordinary events that may be flagged"})
    fields_ = fields.List(fields.Nested(FieldBaselineSchema), data_key="fields")


class ModelSchema(ma.Schema):
    version = fields.Integer()
    trained_at = fields.Float()
    rows = fields.Integer()
    features = fields.List(fields.String())
    derived_features = fields.List(fields.String(), metadata={
        "description": "the derived features this model uses (earned by its history)"})
    derived_features_why = fields.Dict(keys=fields.String(), values=fields.String(), metadata={
        "description": "per derived feature, on or off and why"})
    contamination = fields.Float()
    threshold = fields.Float()
    implied_rate = fields.Float(metadata={"description": "share of the training rows scoring "
                                                        "above the threshold"})
    alert_rate = fields.Float()
    z_thresholds = fields.Dict(keys=fields.String(), values=fields.Nested(ZThresholdSchema),
                               metadata={"description": "per field, the z-rule's threshold"})
    trained_from = fields.Float(allow_none=True, metadata={
        "description": "trained on the history from this timestamp on (the level shift it "
                       "learnt); null: on all of the kept history"})
    outdated = fields.Boolean(metadata={
        "description": "true: the type's level shifted after this model was trained; it is "
                       "set aside (verdicts note model_outdated) until one learns the new level"})
    level_shift_at = fields.Float(allow_none=True, metadata={
        "description": "timestamp of the type's latest level shift, if any"})
    settings_version = fields.Integer(metadata={
        "description": "the version of the type's settings it was trained with"})


class FailedWebhookSchema(ma.Schema):
    message_id = fields.String(metadata={"description": "the webhook-id every attempt carried"})
    job_id = fields.String()
    callback_url = fields.String(allow_none=True)
    attempts = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    job_finished_at = fields.String(allow_none=True)


class FailedWebhookListSchema(ma.Schema):
    webhooks = fields.List(fields.Nested(FailedWebhookSchema))


class WebhookRetrySchema(ma.Schema):
    message_id = fields.String()
    job_id = fields.String()
    status = fields.String()


class WebhookSecretCreatedSchema(ma.Schema):
    secret = fields.String(metadata={
        "description": "whsec_<base64>: verify this tenant's deliveries with it. Shown once: "
                       "no GET ever shows it again"})
    created_at = fields.String()
    previous_expires_at = fields.String(metadata={
        "description": "when the secret this one replaced stops signing (both sign until then); "
                       "absent for a tenant's first secret"})
    overlap_seconds = fields.Integer(metadata={
        "description": "how long a replaced secret keeps signing beside the new one"})
    message = fields.String()


class WebhookSecretInfoSchema(ma.Schema):
    has_secret = fields.Boolean(metadata={
        "description": "false: deliveries are signed with VIGIL_WEBHOOK_SECRET (one-tenant "
                       "deployments only) or refused"})
    created_at = fields.String(allow_none=True)
    previous_signing = fields.Boolean(metadata={
        "description": "the replaced secret still signs beside the current one"})
    previous_expires_at = fields.String(allow_none=True)
    overlap_seconds = fields.Integer()


class EpisodePeakSchema(ma.Schema):
    code = fields.String(metadata={"description": "the warning: out_of_range, level_shift or "
                                                  "anomaly"})
    field = fields.String(allow_none=True)
    value = fields.Float()
    z = fields.Float(allow_none=True)
    score = fields.Float()


class EpisodeSchema(ma.Schema):
    id = fields.String(metadata={"description": "ep_ and 16 hex digits"})
    event_type = fields.String()
    opened_at = fields.Float(metadata={"description": "timestamp of its first flagged event "
                                                     "(epoch seconds)"})
    last_flagged_at = fields.Float()
    closed_at = fields.Float(allow_none=True, metadata={
        "description": "timestamp of the valid event that closed it (VIGIL_EPISODE_QUIET valid "
                       "events in a row); null while open"})
    count = fields.Integer(metadata={"description": "flagged events in it"})
    peak = fields.Nested(EpisodePeakSchema, allow_none=True, metadata={
        "description": "its largest warning: the largest |z|, or for model warnings alone the "
                       "largest score"})
    rule = fields.String(allow_none=True, metadata={
        "description": "the warning code of the event that opened it"})


class EpisodeListSchema(ma.Schema):
    episodes = fields.List(fields.Nested(EpisodeSchema))


class EpisodeQuerySchema(ma.Schema):
    open = fields.Boolean(load_default=False, metadata={
        "description": "true: only the episodes still open"})


class EpisodeWebhookBodySchema(ma.Schema):
    url = fields.Url(schemes={"http", "https"}, require_tld=False, required=True,
                     validate=validate.Length(max=2000),
                     metadata={"description": "POSTed episode.opened and episode.closed, signed "
                                              "with the tenant's webhook secret"})


class EpisodeWebhookSchema(ma.Schema):
    url = fields.String()
    created_at = fields.String()
    events = fields.List(fields.String())
