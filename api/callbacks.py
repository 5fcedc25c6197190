"""Webhook URLs a client gives (a job's callback_url, the episode webhook): refused at once
when Vigil must not or cannot deliver there."""

from __future__ import annotations

import flask
from flask_smorest import abort

from api.services import services
from core import ssrf
from tasks import webhook_secrets


def refuse_unusable_url(url: str, field: str, purpose: str) -> None:
    """422 for a URL into a network Vigil must not call (SSRF; checked again at each
    delivery, tasks/webhooks.py), 409 when the tenant has no secret to sign ``purpose``."""
    svc, tenant = services(), flask.g.tenant
    try:
        ssrf.check_callback_url(url, svc.settings.allow_private_callbacks)
    except ValueError as exc:
        abort(422, message=f"{field} refused", errors={"json": {field: [str(exc)]}})
    if not webhook_secrets.can_sign(svc.redis, svc.settings, tenant):
        # Refused now rather than deliveries that could never be signed for this tenant.
        abort(409, message=f"No webhook secret to sign {purpose}: {webhook_secrets.CREATE_HINT}")
