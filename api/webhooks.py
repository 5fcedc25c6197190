"""Webhooks that finally failed: list them, send them again."""

from __future__ import annotations

import flask
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.auth import require_tenant
from api.jobs import load_job
from api.ratelimit import limit_rate
from api.schemas import FailedWebhookListSchema, WebhookRetrySchema
from api.services import services
from tasks import store
from tasks.documents import iso

blp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks",
                description="Deliveries that failed after their last attempt.")
blp.before_request(require_tenant)
blp.before_request(limit_rate)


@blp.route("/failed")
class FailedWebhooks(MethodView):
    @blp.response(200, FailedWebhookListSchema)
    def get(self):
        """Deliveries kept as failed, newest first"""
        r, tenant = services().redis, flask.g.tenant
        failed = []
        for job_id in store.failed_webhooks(r, tenant):
            job = store.get_job(r, tenant, job_id) or {}
            state = job.get("webhook") or {}
            failed.append({"message_id": state.get("message_id", f"msg_{job_id}"),
                           "job_id": job_id, "callback_url": job.get("callback_url"),
                           "attempts": state.get("attempts"), "last_error": state.get("last_error"),
                           "job_finished_at": iso(job.get("finished_at"))})
        return {"webhooks": failed}


@blp.route("/<message_id>/retry")
class RetryWebhook(MethodView):
    @blp.response(202, WebhookRetrySchema)
    def post(self, message_id: str):
        """Send a failed delivery again (a new series of attempts, same webhook-id)"""
        job_id = message_id.removeprefix("msg_")
        job = load_job(job_id)
        state = job.get("webhook") or {}
        if state.get("status") != "failed":
            abort(409, message=f"The delivery of {message_id!r} has not failed "
                               f"(it is {state.get('status') or 'not started'}); only failed "
                               "deliveries are sent again.")
        svc = services()
        store.set_webhook_state(svc.redis, flask.g.tenant, job_id, {
            "status": "retrying", "attempts": 0, "message_id": f"msg_{job_id}",
            "last_error": state.get("last_error")})
        svc.enqueue("vigil.deliver_webhook", flask.g.tenant, job_id)
        return {"message_id": f"msg_{job_id}", "job_id": job_id, "status": "retrying"}
