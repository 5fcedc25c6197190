"""Each tenant's own webhook signing secrets, kept in Redis.

A tenant verifies its deliveries with its secret, so no tenant may ever hold another's: a
secret shared by every tenant would let any of them forge a delivery another accepts.
Rotation keeps the previous secret signing beside the new one for OVERLAP_S (or until the
tenant ends the overlap), so receivers can move to the new secret without losing deliveries.

The secrets are stored as they are: signing (HMAC) needs them, a digest would not do.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

import redis

from core import keys
from core.config import Settings
from tasks.store import lua

# How long a rotated-out secret keeps signing beside the new one.
OVERLAP_S = 24 * 3600
# Where a tenant gets its secret; said in every refusal for want of one.
CREATE_HINT = "create your webhook secret first: POST /v1/webhooks/secret (vigil webhook-secret)"

# Atomic, so two rotations at once cannot both keep the same previous secret or lose one.
# KEYS[1] the tenant's hash; ARGV: new secret, now, when the previous one stops signing.
_ROTATE = lua.text("webhook_secrets_rotate")


class NoSecret(LookupError):
    """The tenant has no webhook secret and the bootstrap secret may not sign for it."""


@dataclass(frozen=True)
class Rotation:
    secret: str
    created_at: float
    # When the previous secret stops signing; None when this is the tenant's first secret.
    previous_expires_at: float | None


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes: the form Standard Webhooks libraries take."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def rotate(r: redis.Redis, tenant: str, now: float) -> Rotation:
    """A new current secret for the tenant; the one it replaces signs on for OVERLAP_S."""
    secret, expires = new_secret(), now + OVERLAP_S
    had_one = r.eval(_ROTATE, 1, keys.webhook_secrets(tenant), secret, repr(now), repr(expires))
    return Rotation(secret, now, expires if had_one else None)


def end_overlap(r: redis.Redis, tenant: str) -> bool:
    """Stop signing with the previous secret now; False if none was signing."""
    return bool(r.hdel(keys.webhook_secrets(tenant), "previous", "previous_expires_at"))


def _stored(r: redis.Redis, tenant: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(keys.webhook_secrets(tenant)).items()}


def _previous_signs(stored: dict[str, str], now: float) -> bool:
    return "previous" in stored and float(stored.get("previous_expires_at", 0)) > now


def tenant_secrets(r: redis.Redis, tenant: str, now: float) -> tuple[str, ...]:
    """The tenant's own secrets that sign now: the current one, and the previous one during
    its overlap. Empty if the tenant never created one."""
    stored = _stored(r, tenant)
    if "current" not in stored:
        return ()
    previous = (stored["previous"],) if _previous_signs(stored, now) else ()
    return (stored["current"], *previous)


def metadata(r: redis.Redis, tenant: str, now: float) -> dict:
    """What may be shown about the tenant's secrets: never the secrets themselves."""
    stored = _stored(r, tenant)
    overlapping = "current" in stored and _previous_signs(stored, now)
    return {"has_secret": "current" in stored,
            "created_at": float(stored["created_at"]) if "created_at" in stored else None,
            "previous_signing": overlapping,
            "previous_expires_at": float(stored["previous_expires_at"]) if overlapping else None}


def bootstrap_allowed(settings: Settings) -> bool:
    """The env secret (VIGIL_WEBHOOK_SECRET) signs only where one tenant exists: with several,
    each holding it could forge the others' deliveries."""
    return settings.single_tenant


def signing_secrets(r: redis.Redis, settings: Settings, tenant: str, now: float) -> tuple[str, ...]:
    """The secrets a delivery for the tenant is signed with; raises NoSecret if none may."""
    own = tenant_secrets(r, tenant, now)
    if own:
        return own
    if bootstrap_allowed(settings):
        return settings.webhook_secrets
    raise NoSecret(f"tenant {tenant!r} has no webhook secret; {CREATE_HINT}")


def can_sign(r: redis.Redis, settings: Settings, tenant: str) -> bool:
    """Whether a delivery for the tenant could be signed (checked when a callback is given)."""
    return bootstrap_allowed(settings) or r.hexists(keys.webhook_secrets(tenant), "current")
