"""Feedback on verdicts: mark a flagged event a false alarm, or confirm an anomaly."""

from __future__ import annotations

import flask
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.auth import require_tenant
from api.event_types import checked_type
from api.jobs import load_job
from api.loop_schemas import FeedbackBodySchema, FeedbackSchema, FeedbackSummarySchema
from api.ratelimit import limit_rate
from api.services import services
from tasks import feedback
from tasks.documents import iso

blp = Blueprint("feedback", __name__, url_prefix="/v1",
                description="Feedback on verdicts: false alarms join the baselines and the "
                            "training history, confirmed anomalies stay out of them.")
blp.before_request(require_tenant)
blp.before_request(limit_rate)


@blp.route("/jobs/<job_id>/results/<int:index>/feedback")
class Feedback(MethodView):
    @blp.arguments(FeedbackBodySchema, examples={
        "false alarm": {"value": {"label": "false_alarm", "note": "planned load test"}},
        "confirmed": {"value": {"label": "confirmed"}},
        "withdraw": {"value": {"label": None}}})
    @blp.response(200, FeedbackSchema)
    def post(self, body: dict, job_id: str, index: int):
        """Give, change or withdraw (`label: null`) feedback on one verdict

        A false alarm's values join the all-time baseline and the training history (once,
        however often it is posted); a confirmed anomaly's stay out of them, even if it was
        judged valid. The model and the calibrated thresholds learn it at the type's next
        training (`POST /v1/event-types/{type}/model` trains now). Every change is kept in
        the audit trail (`GET /v1/event-types/{type}/feedback`).
        """
        svc, tenant = services(), flask.g.tenant
        load_job(job_id)  # 404 for an unknown job or another tenant's
        try:
            event = feedback.judged_event(svc.redis, tenant, job_id, index)
        except feedback.FeedbackRefused as exc:
            abort(exc.status, message=str(exc))
        given = feedback.give(svc.redis, svc.settings.history_max_rows, tenant, event,
                              body["label"], body.get("note"), flask.g.actor)
        return {**given, "at": iso(given["at"])}


@blp.route("/event-types/<event_type>/feedback")
class FeedbackSummary(MethodView):
    @blp.response(200, FeedbackSummarySchema)
    def get(self, event_type: str):
        """The type's feedback: counts per label, the current items, the audit trail"""
        r, tenant = services().redis, flask.g.tenant
        items = sorted(feedback.labels(r, tenant, checked_type(event_type)).values(),
                       key=lambda item: item["at"], reverse=True)
        counts = {label: sum(item["label"] == label for item in items)
                  for label in (feedback.FALSE_ALARM, feedback.CONFIRMED)}
        return {"event_type": event_type, **counts,
                "items": [{**item, "at": iso(item["at"])} for item in items],
                "audit": [{**entry, "at": iso(entry["at"])}
                          for entry in feedback.audit(r, tenant, event_type)]}
