"""Event types: their baselines, history import and anomaly models."""

from __future__ import annotations

import flask
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.auth import require_tenant
from api.idempotency import HEADER_DOC
from api.jobs import CSV_BODY, submit
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
from ml.features import DERIVED_PREFIX
from tasks import episodes, store
from tasks.models import level_shift_at, outdated, z_thresholds

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
        counts = store.event_type_counts(r, tenant)
        return {"event_types": [
            {"event_type": name, "events": count,
             "model_version": store.model_version(r, tenant, name)}
            for name, count in sorted(counts.items())]}


@blp.route("/<event_type>/baseline")
class Baseline(MethodView):
    @blp.response(200, BaselineSchema)
    def get(self, event_type: str):
        """Per-field count, mean and standard deviation of the accepted history"""
        svc = services()
        moments = store.load_baseline(svc.redis, flask.g.tenant, checked_type(event_type))
        if not moments:
            abort(404, message=f"No history for event type {event_type!r} yet.")
        limits = z_thresholds(svc.settings, store.model_meta(svc.redis, flask.g.tenant,
                                                               event_type), list(moments))
        return {"event_type": event_type, "min_history": svc.settings.min_history,
                "alert_rate": svc.settings.alert_rate,
                "fields_": [{"field": name, "count": m.n, "mean": m.mean, "std": m.std,
                             "checked": m.n >= svc.settings.min_history,
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
        meta = store.model_meta(services().redis, flask.g.tenant, checked_type(event_type))
        if meta is None:
            abort(404, message=f"No anomaly model for {event_type!r} yet; import history or "
                               "POST to this URL to train one.")
        # The thresholds in force now (VIGIL_Z_THRESHOLD may have been set since training).
        fields = list(meta.get("z_thresholds") or
                      [f for f in meta["features"] if not f.startswith(DERIVED_PREFIX)])
        shift_at = level_shift_at(services().redis, flask.g.tenant, event_type)
        return {**meta, "z_thresholds": z_thresholds(services().settings, meta, fields),
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
