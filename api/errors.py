"""Every error as application/problem+json, including 404s, 405s, 413s and crashes."""

from __future__ import annotations

import logging

import flask
import kombu.exceptions
import redis
from flask_smorest import Api
from werkzeug.exceptions import HTTPException, MethodNotAllowed, ServiceUnavailable

from api.replication import NotReplicated

log = logging.getLogger(__name__)

DETAILS = {
    401: "Send an API key: Authorization: Bearer <key>.",
    404: "Nothing here: check the URL (the API lives under /v1; see /docs).",
    405: "This path does not take that method; see /docs.",
    422: "Some fields are invalid; `errors` says what is wrong with each.",
    413: "The request body is larger than this server accepts (VIGIL_MAX_BODY_BYTES).",
    500: "Internal error; it has been logged.",
}


class ProblemApi(Api):
    """flask-smorest's Api with RFC 9457 problem documents for errors."""

    def handle_http_exception(self, error: HTTPException):
        payload, code, headers = super().handle_http_exception(error)
        if code >= 500:
            log.error("request failed", exc_info=getattr(error, "original_exception", None))
        problem = {"type": "about:blank", "title": payload["status"], "status": code,
                   "detail": payload.get("message") or DETAILS.get(code) or error.description}
        if "errors" in payload:
            problem["errors"] = payload["errors"]
        response = flask.jsonify(problem)
        response.status_code = code
        response.headers.update(headers or {})
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        response.mimetype = "application/problem+json"
        return response


UNAVAILABLE = "Vigil's store is unreachable right now."
# A store call can fail after it took effect (its reply lost): a submission then answered 503
# may still have been stored, and a blind retry would store it twice.
UNAVAILABLE_WRITE = (" This request may or may not have taken effect: a submission may have "
                     "been stored and be judged. Retry after Retry-After seconds with the same "
                     "Idempotency-Key header (send one with every submission): the retry then "
                     "gets the job the first request stored, if it did, instead of a second one.")


# A job not yet on enough replicas (api/replication.py) is asked for again this soon: a
# replica that lags catches up within moments; one that is down keeps refusing.
NOT_REPLICATED_RETRY_S = 1


def not_replicated(exc: NotReplicated) -> tuple[dict, dict[str, str]]:
    """The problem document (with the job's id) and headers of the 503 answered when a stored
    job did not reach VIGIL_REDIS_WAIT_REPLICAS replicas in time; the Flask app's and the
    fast path's (api/fast_submit.py)."""
    detail = (f"Job {exc.job_id} is stored on the primary and queued, and will be judged unless "
              f"the primary fails before its replicas have it: {exc.acknowledged} of the "
              f"{exc.wanted} replicas required (VIGIL_REDIS_WAIT_REPLICAS) acknowledged it within "
              f"{exc.timeout_ms} ms. Retry after Retry-After seconds with the same "
              "Idempotency-Key: the retry answers 202 with this job once replicas have it, and "
              "stores no second one (without the key, a retry stores another job).")
    return ({"type": "about:blank", "title": "Service Unavailable", "status": 503,
             "detail": detail, "job_id": exc.job_id},
            {"Retry-After": str(NOT_REPLICATED_RETRY_S)})


def register_outage_handlers(app: flask.Flask, api: ProblemApi) -> None:
    """Redis or the broker unreachable: 503 with Retry-After, not a 500."""

    def unavailable(exc: Exception):
        log.warning("backing store unavailable: %s", type(exc).__name__)
        error = ServiceUnavailable()
        error.data = {"message": UNAVAILABLE + (UNAVAILABLE_WRITE if flask.request.method
                                                not in ("GET", "HEAD") else " Retry shortly."),
                      "headers": {"Retry-After": "5"}}
        return api.handle_http_exception(error)

    def unreplicated(exc: NotReplicated):
        log.warning("job not replicated in time", extra={"job_id": exc.job_id,
                                                         "replicas": exc.acknowledged})
        problem, headers = not_replicated(exc)
        response = flask.jsonify(problem)
        response.status_code = 503
        response.headers.update(headers)
        response.mimetype = "application/problem+json"
        return response

    app.register_error_handler(redis.RedisError, unavailable)
    app.register_error_handler(NotReplicated, unreplicated)
    app.register_error_handler(kombu.exceptions.OperationalError, unavailable)
