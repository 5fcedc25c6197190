"""POST /v1/events/validate for the requests that need nothing from the framework.

A single event is the request clients send by the thousand per second, and Flask with
flask-smorest and webargs costs several times what checking and storing the event costs.
This WSGI middleware answers the common case itself: an authorised, well-formed, valid event
under the rate limit, without an Idempotency-Key (micro-batched, or with VIGIL_MICRO_BATCH=off
a task per event, as api.jobs.admit_single_event decides for both). Every
other request, and every one of these that is not that case, goes on to the Flask app
unchanged: the errors have one place that words them, and the view (api.jobs.ValidateEvent)
stays the documented resource. The answer is the same either way (tests/integration/
test_fast_submit.py compares them).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import kombu.exceptions
import marshmallow as ma
import orjson
import redis

from api import observability
from api.auth import tenant_for
from api.errors import not_replicated
from api.jobs import JOB_ID_ENVIRON, admit_single_event, job_eta
from api.replication import NotReplicated
from api.schemas import EVENT_SCHEMA
from api.services import Services
from tasks import eta
from tasks.store import jobs, rates

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PATH = "/v1/events/validate"
ROUTE = PATH  # its URL rule, the label /metrics and the log line know it by


class FastSubmit:
    """Wraps the Flask app's WSGI callable (app.wsgi_app = FastSubmit(app.wsgi_app, ...))."""

    def __init__(self, app: WSGIApplication, services: Services) -> None:
        self.app = app
        self.services = services
        self.api_keys = dict(services.settings.api_keys)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST"
                or "HTTP_IDEMPOTENCY_KEY" in environ):  # the Flask view keeps the replay store
            return self.app(environ, start_response)
        started = time.perf_counter()
        body = self._body(environ)
        if body is None:
            return self.app(environ, start_response)
        try:
            accepted = self._accept(environ, body)
        except NotReplicated as exc:  # stored, not yet on enough replicas: said as Flask says it
            problem, headers = not_replicated(exc)
            answer, unreplicated = orjson.dumps(problem), exc.job_id
            start_response("503 SERVICE UNAVAILABLE", [
                ("Content-Type", "application/problem+json"),
                ("Content-Length", str(len(answer))), *headers.items()])
            observability.record("POST", ROUTE, PATH, 503, time.perf_counter() - started,
                                 tenant=exc.tenant, job_id=lambda: unreplicated)
            return [answer]
        if accepted is None:
            environ["wsgi.input"] = io.BytesIO(body)  # read once here; Flask reads it again
            return self.app(environ, start_response)
        tenant, job_id = accepted
        status_url = f"{environ.get('SCRIPT_NAME', '')}/v1/jobs/{job_id}"
        lane = eta.EVENTS if self.services.settings.micro_batch else eta.JOBS
        eta_s = job_eta(self.services, tenant, job_id, lane, 1)
        answer = orjson.dumps({"job_id": job_id, "status": jobs.QUEUED, "status_url": status_url,
                               "eta_s": eta_s})
        start_response("202 ACCEPTED", [("Content-Type", "application/json"),
                                         ("Content-Length", str(len(answer))),
                                         ("Location", status_url),
                                         ("Retry-After", str(eta.retry_after(eta_s)))])
        observability.record("POST", ROUTE, PATH, 202, time.perf_counter() - started,
                             tenant=tenant, job_id=lambda: job_id)
        return [answer]

    def _body(self, environ: WSGIEnvironment) -> bytes | None:
        """The JSON body, or None where Flask must answer (wrong type, no length, too large)."""
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= self.services.settings.max_body_bytes:
            return None
        try:
            return environ["wsgi.input"].read(int(length))
        except OSError:  # the client went away mid-body (uWSGI raises): Flask answers it
            return b""

    def _accept(self, environ: WSGIEnvironment, body: bytes) -> tuple[str, str] | None:
        """(tenant, job id) once stored; None where Flask must answer instead."""
        tenant = tenant_for(environ.get("HTTP_AUTHORIZATION"), self.api_keys)
        if tenant is None:
            return None
        try:
            event: Any = EVENT_SCHEMA.load(orjson.loads(body))
        except (orjson.JSONDecodeError, ma.ValidationError):
            return None
        job_id = jobs.new_job_id()
        try:
            return tenant, admit_single_event(self.services, tenant, event, check_rate_limit=True,
                                              job_id=job_id)
        except rates.OverRateLimit:
            # Flask counts the request again and answers 429; the extra count lands in a
            # window that is refusing anyway.
            return None
        except (redis.RedisError, kombu.exceptions.OperationalError):
            # Redis failed (nothing stored, or the script ran and only its reply was lost), or
            # with VIGIL_MICRO_BATCH=off the broker refused the stored job's task. Flask tries
            # once more under the same job id: it finds the job if it was stored (and then
            # enqueues its task), stores it otherwise, and answers 503 if that fails too.
            environ[JOB_ID_ENVIRON] = job_id
            return None
