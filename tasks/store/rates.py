"""Rate-limit windows (VIGIL_RATE_LIMIT): a tenant's requests counted per epoch second.

The window's key gets its expiry when it is new (it outlives its second a little, so a slow
request still finds its counter). One Lua function (lua/counted.lua) counts for
api.ratelimit's script and for jobs' create script alike.
"""

from __future__ import annotations

import time

import redis

from core import keys
from tasks.store import lua

RATE_WINDOW_TTL_S = 2
_COUNT_REQUEST = lua.text("counted", "count_request")


class OverRateLimit(Exception):
    """The request counted made its tenant exceed VIGIL_RATE_LIMIT; nothing was stored."""


def current_window(tenant: str) -> str:
    """The key of the tenant's window for this second."""
    return keys.rate_window(tenant, int(time.time()))


def count_request(r: redis.Redis, tenant: str) -> int:
    """Count one request of the tenant's in the current window; returns the window's count."""
    return int(r.register_script(_COUNT_REQUEST)(keys=[current_window(tenant)],
                                                 args=[RATE_WINDOW_TTL_S]))
