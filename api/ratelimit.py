"""Requests per second per tenant (VIGIL_RATE_LIMIT): a fixed one-second window in Redis."""

from __future__ import annotations

import time

import flask
import redis
from flask_smorest import abort

from api.services import services
from core import keys

# Window keys outlive their second a little, so a slow request still finds its counter.
WINDOW_TTL_S = 2
# Counts a request and gives a new window its expiry, in one command (one EVALSHA costs the
# API less than MULTI, INCR, EXPIRE, EXEC).
_COUNT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


def limit_rate() -> None:
    """before_request hook, after require_tenant: 429 with Retry-After once the tenant has made
    more than VIGIL_RATE_LIMIT requests in the current second (0: no limit)."""
    svc = services()
    per_second = svc.settings.rate_limit
    if over_limit(svc.redis, flask.g.tenant, per_second):
        abort(429, message=f"More than {per_second} requests per second with this API key; "
                           "retry after Retry-After seconds.",
              headers={"Retry-After": "1"})


def over_limit(r: redis.Redis, tenant: str, per_second: int) -> bool:
    """Count one request of the tenant's; True if that makes more than per_second this second."""
    if per_second <= 0:
        return False
    key = keys.rate_window(tenant, int(time.time()))
    return r.register_script(_COUNT)(keys=[key], args=[WINDOW_TTL_S]) > per_second
