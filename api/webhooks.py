"""Webhooks: the tenant's signing secret (create, rotate, end an overlap), and deliveries that
finally failed (list them, send them again)."""

from __future__ import annotations

import flask
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.auth import require_tenant
from api.callbacks import refuse_unusable_url
from api.jobs import load_job
from api.ratelimit import limit_rate
from api.schemas import (
    EpisodeWebhookBodySchema,
    EpisodeWebhookSchema,
    FailedWebhookListSchema,
    WebhookRetrySchema,
    WebhookSecretCreatedSchema,
    WebhookSecretInfoSchema,
)
from api.services import services
from tasks import episodes, webhook_secrets
from tasks.documents import iso
from tasks.store import encoding, jobs, webhook_schedule

blp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks",
                description="Each tenant's webhook signing secret; deliveries that failed after "
                            "their last attempt; where episode webhooks go.")
blp.before_request(require_tenant)
blp.before_request(limit_rate)


@blp.route("/secret")
class WebhookSecret(MethodView):
    @blp.response(200, WebhookSecretInfoSchema)
    def get(self):
        """Whether the tenant has a webhook secret, since when, and whether a replaced one still
        signs: never the secret itself"""
        info = webhook_secrets.metadata(services().redis, flask.g.tenant, encoding.now())
        return {**info, "created_at": iso(info["created_at"]),
                "previous_expires_at": iso(info["previous_expires_at"]),
                "overlap_seconds": webhook_secrets.OVERLAP_S}

    @blp.response(201, WebhookSecretCreatedSchema)
    def post(self):
        """Create the tenant's webhook secret, or rotate it: the answer shows the new secret
        once. A replaced secret keeps signing beside the new one for 24 h (or until DELETE
        /v1/webhooks/secret/previous)"""
        rotation = webhook_secrets.rotate(services().redis, flask.g.tenant, encoding.now())
        answer = {"secret": rotation.secret, "created_at": iso(rotation.created_at),
                  "overlap_seconds": webhook_secrets.OVERLAP_S}
        hours = webhook_secrets.OVERLAP_S / 3600
        if rotation.previous_expires_at is None:
            answer["message"] = ("Store this secret now: it is not shown again. Every delivery "
                                 "for this tenant is signed with it from now on.")
        else:
            answer["previous_expires_at"] = iso(rotation.previous_expires_at)
            answer["message"] = (f"Store this secret now: it is not shown again. For {hours:g} h "
                                 "deliveries carry both signatures, the replaced secret's and this "
                                 "one's; move your receivers to this one, then end the overlap "
                                 "early with DELETE /v1/webhooks/secret/previous if you like.")
        return answer, 201, {"Cache-Control": "no-store"}


@blp.route("/secret/previous")
class PreviousWebhookSecret(MethodView):
    @blp.response(204)
    def delete(self):
        """Stop signing with the replaced secret now, before its overlap ends (204 also when
        none was signing)"""
        webhook_secrets.end_overlap(services().redis, flask.g.tenant)
        return ""


@blp.route("/failed")
class FailedWebhooks(MethodView):
    @blp.response(200, FailedWebhookListSchema)
    def get(self):
        """Deliveries kept as failed, newest first"""
        r, tenant = services().redis, flask.g.tenant
        failed = []
        for job_id in webhook_schedule.failed_webhooks(r, tenant):
            job = jobs.get_job(r, tenant, job_id) or {}
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
        webhook_schedule.set_webhook_state(svc.redis, flask.g.tenant, job_id, {
            "status": "retrying", "attempts": 0, "message_id": f"msg_{job_id}",
            "last_error": state.get("last_error")})
        svc.enqueue("vigil.deliver_webhook", flask.g.tenant, job_id)
        return {"message_id": f"msg_{job_id}", "job_id": job_id, "status": "retrying"}


EPISODE_EVENTS = ["episode.opened", "episode.closed"]


def episode_webhook_document(hook: dict) -> dict:
    return {"url": hook["url"], "created_at": iso(hook["created_at"]), "events": EPISODE_EVENTS}


@blp.route("/episodes")
class EpisodeWebhook(MethodView):
    @blp.response(200, EpisodeWebhookSchema)
    def get(self):
        """Where the tenant's episode webhooks go"""
        hook = episodes.get_webhook(services().redis, flask.g.tenant)
        if hook is None:
            abort(404, message="No episode webhook registered; PUT /v1/webhooks/episodes "
                               '{"url": ...} to register one.')
        return episode_webhook_document(hook)

    @blp.arguments(EpisodeWebhookBodySchema)
    @blp.response(200, EpisodeWebhookSchema)
    def put(self, body: dict):
        """Register (or replace) the URL POSTed `episode.opened` and `episode.closed`: one
        webhook per episode's start and end rather than one per flagged event, signed with the
        tenant's webhook secret"""
        refuse_unusable_url(body["url"], "url", "episode webhooks")
        return episode_webhook_document(episodes.set_webhook(
            services().redis, flask.g.tenant, body["url"], encoding.now()))

    @blp.response(204)
    def delete(self):
        """Stop sending episode webhooks (204 also when none was registered)"""
        episodes.delete_webhook(services().redis, flask.g.tenant)
        return ""
