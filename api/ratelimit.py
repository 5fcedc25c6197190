"""Requests per second per tenant (VIGIL_RATE_LIMIT): a fixed one-second window in Redis.

The window is counted by tasks.store.rates: here for every request of the Flask app, and for a
single event on the fast path (api.fast_submit) by the same script call that stores it.
"""

from __future__ import annotations

import flask
from flask_smorest import abort

from api.services import services
from tasks.store import rates


def limit_rate() -> None:
    """before_request hook, after require_tenant: 429 with Retry-After once the tenant has made
    more than VIGIL_RATE_LIMIT requests in the current second (0: no limit)."""
    svc = services()
    per_second = svc.settings.rate_limit
    if per_second > 0 and rates.count_request(svc.redis, flask.g.tenant) > per_second:
        abort(429, message=f"More than {per_second} requests per second with this API key; "
                           "retry after Retry-After seconds.",
              headers={"Retry-After": "1"})
