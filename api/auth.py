"""Bearer API keys mapped to tenants."""

from __future__ import annotations

import hmac

import flask
from flask_smorest import abort

from core.config import key_digest


def tenant_for(authorization: str | None, api_keys: dict[str, str]) -> str | None:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    digest = key_digest(key.strip())
    # Compare digests in constant time so timing says nothing about which keys exist.
    for known, tenant in api_keys.items():
        if hmac.compare_digest(known, digest):
            return tenant
    return None


def require_tenant() -> None:
    """before_request hook: sets g.tenant, or answers 401."""
    settings = flask.current_app.extensions["vigil"].settings
    tenant = tenant_for(flask.request.headers.get("Authorization"), dict(settings.api_keys))
    if tenant is None:
        abort(401, message="Missing or unknown API key: send Authorization: Bearer <key>.",
              headers={"WWW-Authenticate": 'Bearer realm="vigil"'})
    flask.g.tenant = tenant
    flask.g.actor = actor_of(flask.request.headers["Authorization"])


def actor_of(authorization: str) -> str:
    """Who made a change, for audit trails: the API key by the first 12 hex digits of its
    digest (never the key)."""
    return "key:" + key_digest(authorization.partition(" ")[2].strip())[:12]
