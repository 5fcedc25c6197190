"""Per request: a count and a duration for /metrics, and one JSON log line.

Labels use the URL rule (``/v1/jobs/<job_id>``), never the raw path, so every job id does not
become a time series. The log line carries the path, the tenant once authenticated and the job
id when there is one; never a header, a body or a query string.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import flask

from core import metrics

log = logging.getLogger("vigil.http")

# Anything else (werkzeug accepts any token as a method) is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"  # 404s for unknown paths: one series, whatever the path
# Probes and scrapes log at DEBUG: at INFO they would drown the requests that matter.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# Bodies parsed for a job_id at most this large (submissions answer a few hundred bytes).
MAX_SCANNED_BODY = 16_384
MAX_LOGGED_PATH = 512


def init_app(app: flask.Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)


def _start() -> None:
    flask.g.vigil_started = time.perf_counter()


def _job_id(response: flask.Response) -> str | None:
    # Set by the view that created the job (api.jobs.accept): no need to parse the answer.
    job_id = (flask.request.view_args or {}).get("job_id") or flask.g.get("job_id")
    if job_id is None and response.is_json and not response.direct_passthrough \
            and (response.content_length or 0) <= MAX_SCANNED_BODY:
        body = response.get_json(silent=True)
        job_id = body.get("job_id") if isinstance(body, dict) else None
    return job_id if isinstance(job_id, str) else None


def _finish(response: flask.Response) -> flask.Response:
    request = flask.request
    started = flask.g.get("vigil_started")
    rule = request.url_rule
    record(request.method, rule.rule if rule is not None else UNMATCHED, request.path,
           response.status_code, time.perf_counter() - started if started is not None else None,
           tenant=flask.g.get("tenant"), job_id=lambda: _job_id(response))
    return response


def record(method: str, route: str, path: str, status: int, duration: float | None, *,
           tenant: str | None, job_id: Callable[[], str | None]) -> None:
    """Count and time one request, and log its line (job_id is asked for only if logged).
    Flask's requests come through _finish; api.fast_submit's through here directly."""
    method = method if method in METHODS else "other"
    metrics.HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    if duration is not None:
        metrics.HTTP_DURATION.labels(method=method, route=route).observe(duration)

    level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
    if log.isEnabledFor(level):
        fields = {"event": "request", "method": method, "route": route,
                  "path": path[:MAX_LOGGED_PATH], "status": status,
                  "duration_ms": round(duration * 1000, 2) if duration is not None else None}
        if tenant:
            fields["tenant"] = tenant
        logged_job = job_id()
        if logged_job:
            fields["job_id"] = logged_job
        log.log(level, "%s %s %s", method, fields["path"], status, extra=fields)
