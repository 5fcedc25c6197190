"""Event types: their baselines, history import and anomaly models."""

from __future__ import annotations

import flask
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.auth import require_tenant
from api.idempotency import HEADER_DOC
from api.jobs import CSV_BODY, submit
from api.loop_schemas import (
    BacktestBodySchema,
    RevalidateBodySchema,
    TypeSettingsBodySchema,
    TypeSettingsSchema,
)
from api.ratelimit import limit_rate
from api.schemas import (
    EVENT_TYPE,
    EVENT_TYPE_RULE,
    BaselineSchema,
    EpisodeListSchema,
    EpisodeQuerySchema,
    EventTypeListSchema,
    HistorySubmitSchema,
    JobAcceptedSchema,
    ModelSchema,
)
from api.services import services
from core.config import ConfigError
from ml.features import DERIVED_PREFIX
from tasks import episodes, type_settings
from tasks.documents import iso
from tasks.models import level_shift_at, outdated, schedule_training, z_thresholds
from tasks.store import baselines, model_blobs

blp = Blueprint("event_types", __name__, url_prefix="/v1/event-types",
                description="Baselines, history and anomaly models per event type.")
blp.before_request(require_tenant)
blp.before_request(limit_rate)


def checked_type(event_type: str) -> str:
    if not EVENT_TYPE.fullmatch(event_type):
        abort(422, message="Invalid event type", errors={"path": {"event_type": [
            f"event_type must be {EVENT_TYPE_RULE}."]}})
    return event_type


@blp.route("")
class EventTypes(MethodView):
    @blp.response(200, EventTypeListSchema)
    def get(self):
        """Known event types with the number of events in their history"""
        r, tenant = services().redis, flask.g.tenant
        counts = baselines.event_type_counts(r, tenant)
        return {"event_types": [
            {"event_type": name, "events": count,
             "model_version": model_blobs.model_version(r, tenant, name)}
            for name, count in sorted(counts.items())]}


@blp.route("/<event_type>/baseline")
class Baseline(MethodView):
    @blp.response(200, BaselineSchema)
    def get(self, event_type: str):
        """Per-field count, mean and standard deviation of the accepted history"""
        svc = services()
        moments = baselines.load_baseline(svc.redis, flask.g.tenant, checked_type(event_type))
        if not moments:
            abort(404, message=f"No history for event type {event_type!r} yet.")
        typed, _ = type_settings.effective(svc.redis, svc.settings, flask.g.tenant, event_type)
        limits = z_thresholds(typed, model_blobs.model_meta(svc.redis, flask.g.tenant, event_type),
                              list(moments))
        return {"event_type": event_type, "min_history": typed.min_history,
                "alert_rate": typed.alert_rate,
                "fields_": [{"field": name, "count": m.n, "mean": m.mean, "std": m.std,
                             "checked": typed.checks(name) and m.n >= typed.min_history,
                             "z_threshold": limits[name]}
                            for name, m in sorted(moments.items())]}


@blp.route("/<event_type>/history")
class History(MethodView):
    @blp.arguments(HistorySubmitSchema())
    @blp.doc(requestBody=CSV_BODY, parameters=[HEADER_DOC])
    @blp.response(202, JobAcceptedSchema)
    def post(self, body: dict, event_type: str):
        """Import history (JSON or CSV with `timestamp` plus field columns), then train

        The events are not validated: they seed the baselines and the model's training data.
        """
        return submit("history", body["events"], event_type=checked_type(event_type))


@blp.route("/<event_type>/model")
class Model(MethodView):
    @blp.response(200, ModelSchema)
    def get(self, event_type: str):
        """The current anomaly model: version, when trained, on how many rows, features"""
        meta = model_blobs.model_meta(services().redis, flask.g.tenant, checked_type(event_type))
        if meta is None:
            abort(404, message=f"No anomaly model for {event_type!r} yet; import history or "
                               "POST to this URL to train one.")
        # The thresholds in force now (VIGIL_Z_THRESHOLD may have been set since training).
        fields = list(meta.get("z_thresholds") or
                      [f for f in meta["features"] if not f.startswith(DERIVED_PREFIX)])
        shift_at = level_shift_at(services().redis, flask.g.tenant, event_type)
        typed, _ = type_settings.effective(services().redis, services().settings,
                                           flask.g.tenant, event_type)
        return {**meta, "z_thresholds": z_thresholds(typed, meta, fields),
                "level_shift_at": shift_at, "outdated": outdated(meta, shift_at)}

    @blp.doc(parameters=[HEADER_DOC])
    @blp.response(202, JobAcceptedSchema)
    def post(self, event_type: str):
        """Train the anomaly model now from the stored history"""
        return submit("train", [], event_type=checked_type(event_type))


@blp.route("/<event_type>/episodes")
class Episodes(MethodView):
    @blp.arguments(EpisodeQuerySchema, location="query")
    @blp.response(200, EpisodeListSchema)
    def get(self, query: dict, event_type: str):
        """The type's episodes, newest first: consecutive flagged events told as one incident
        (opened, last flagged, closed after VIGIL_EPISODE_QUIET valid events, count, peak, the
        rule that opened it); `?open=true`: only those still open"""
        r, tenant = services().redis, flask.g.tenant
        if not episodes.type_known(r, tenant, checked_type(event_type)):
            abort(404, message=f"No history for event type {event_type!r} yet.")
        return {"episodes": episodes.list_episodes(r, tenant, event_type,
                                                   open_only=query["open"])}


def settings_document(event_type: str, found: type_settings.TypeSettings | None = None) -> dict:
    """The type's settings as GET and PUT answer them (``found``: as just read or saved)."""
    svc, tenant = services(), flask.g.tenant
    found = found or type_settings.load(svc.redis, tenant, event_type)
    typed, _ = type_settings.applied(svc.settings, found, tenant, event_type)
    return {"event_type": event_type, "version": found.version,
            "updated_at": iso(found.updated_at), "settings": typed.type_defaults(),
            "overrides": found.overrides, "defaults": svc.settings.type_defaults(),
            "changes": [{**c, "at": iso(c["at"])}
                        for c in type_settings.changes(svc.redis, tenant, event_type)]}


@blp.route("/<event_type>/settings")
class TypeSettings(MethodView):
    @blp.response(200, TypeSettingsSchema)
    def get(self, event_type: str):
        """The type's settings: what judges it now, what it overrides, the environment's
        defaults, and the latest changes"""
        return settings_document(checked_type(event_type))

    @blp.arguments(TypeSettingsBodySchema, examples={
        "stricter": {"value": {"z_threshold": 5.0}},
        "a noisy field left out": {"value": {"ignore_fields": ["latency_ms"]}},
        "fewer alerts, no time of day": {"value": {"alert_rate": 0.0005,
                                                   "derived_features": []}},
        "back to the environment's": {"value": {}}})
    @blp.response(200, TypeSettingsSchema)
    def put(self, body: dict, event_type: str):
        """Set the type's settings (each one named overrides the environment's; one left out
        reverts to it). A change is a new version, and retrains the type's model with it;
        `If-Match: <version>` refuses the change (412) if another landed since"""
        svc, tenant = services(), flask.g.tenant
        checked_type(event_type)
        try:
            svc.settings.for_type(body)
        except ConfigError as exc:  # the combination, where each value alone was fine
            abort(422, message=f"These settings do not hold together: {exc}")
        current = type_settings.load(svc.redis, tenant, event_type)
        expected = flask.request.headers.get("If-Match", "").strip('" ')
        if expected and expected != str(current.version):
            abort(412, message=f"The settings are at version {current.version}, not "
                               f"{expected}: read them again and retry.")
        try:
            saved = type_settings.save(svc.redis, tenant, event_type, body, current.version)
        except type_settings.Conflict as exc:
            abort(409, message=f"{exc}; read them again and retry.")
        if saved.version != current.version and baselines.history_count(
                svc.redis, tenant, event_type) >= svc.settings.model_min_rows:
            # Thresholds are calibrated when a model is trained: with the new settings now.
            schedule_training(svc.redis, svc.settings, tenant, event_type)
        return settings_document(event_type, saved)


def has_history(event_type: str, needed: int) -> None:
    """409 unless the type has ``needed`` events of history: a replay needs something to
    judge, and a backtest something to calibrate on."""
    count = baselines.history_count(services().redis, flask.g.tenant, event_type)
    if count < needed:
        abort(409, message=f"{event_type!r} has {count} events of history; this needs at "
                           f"least {needed}. Import history first (POST /v1/event-types/"
                           f"{event_type}/history).")


@blp.route("/<event_type>/backtest")
class Backtest(MethodView):
    @blp.arguments(BacktestBodySchema, examples={
        "stricter": {"value": {"settings": {"z_threshold": 4.0}}},
        "a week, a lower alert rate": {"value": {
            "settings": {"alert_rate": 0.0005}, "since": "2026-11-23T00:00:00Z",
            "until": "2026-11-30T00:00:00Z"}}})
    @blp.doc(parameters=[HEADER_DOC])
    @blp.response(202, JobAcceptedSchema)
    def post(self, body: dict, event_type: str):
        """Preview settings on the type's stored events before switching them on

        A job: the stored events (history and flagged, optionally in `since`..`until`) are
        judged under the current settings and under the proposed ones, each with a model and
        thresholds fitted on the history as training would, side by side: events flagged per
        rule, the alert rate, episodes, feedback flagged, and the events whose verdict would
        change. Nothing else moves: baselines, models and verdicts stay as they are.
        """
        svc = services()
        checked_type(event_type)
        try:
            svc.settings.for_type(body["settings"])
        except ConfigError as exc:
            abort(422, message=f"These settings do not hold together: {exc}")
        typed, _ = type_settings.effective(svc.redis, svc.settings, flask.g.tenant, event_type)
        has_history(event_type, typed.min_history)
        return submit("backtest", [], event_type=event_type, params=body)


@blp.route("/<event_type>/revalidate")
class Revalidate(MethodView):
    @blp.arguments(RevalidateBodySchema, examples={"a day": {"value": {
        "since": "2026-11-23T00:00:00Z", "until": "2026-11-24T00:00:00Z"}}})
    @blp.doc(parameters=[HEADER_DOC])
    @blp.response(202, JobAcceptedSchema)
    def post(self, body: dict, event_type: str):
        """Replay: re-judge the stored events in a time range with today's baselines, model
        and settings, and report the verdicts that changed (and why, in figures)

        A job; nothing moves (no baseline, model, verdict or episode). Useful after feedback
        or a settings change. Without `since`/`until`: every stored event.
        """
        has_history(checked_type(event_type), 1)
        return submit("revalidate", [], event_type=event_type, params=body)
