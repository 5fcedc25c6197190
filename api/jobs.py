"""Submit events, poll jobs, fetch results, cancel."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import flask
import kombu.exceptions
import pandas as pd
import redis
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api import idempotency, replication
from api.auth import require_tenant
from api.callbacks import refuse_unusable_url
from api.parsing import too_many_events
from api.ratelimit import limit_rate
from api.schemas import (
    EVENT_SCHEMA,
    JOB_ID,
    JobAcceptedSchema,
    JobListSchema,
    JobQuerySchema,
    JobSchema,
    JobSubmitSchema,
)
from api.services import Services, services
from tasks import eta, inbox, job_queue
from tasks.documents import job_document
from tasks.store import job_data, jobs

log = logging.getLogger(__name__)

blp = Blueprint("jobs", __name__, url_prefix="/v1",
                description="Submit events for validation and read the verdicts.")
blp.before_request(require_tenant)
blp.before_request(limit_rate)

CSV_BODY = {"content": {"text/csv": {"schema": {"type": "string"}, "example":
            "event_type,timestamp,amount,items\ncheckout,2026-11-23T12:00:00Z,42.5,3\n"}}}
# WSGI environ key: the job id api.fast_submit tried to store a request under before it
# handed the request over (its store call failed, perhaps after storing): the view stores
# under the same id. No client can set it (header keys are HTTP_*).
JOB_ID_ENVIRON = "vigil.job_id"


def submit(kind: str, events: list[dict], **options):
    """accept(), at most once per Idempotency-Key (api/idempotency.py)."""
    svc = services()
    return idempotency.once(svc.redis, svc.settings, flask.g.tenant, flask.request.get_data(cache=True),
                            lambda: accept(kind, events, **options))


def accept(kind: str, events: list[dict], *, event_type: str | None = None,
           callback_url: str | None = None, task: str | None = None, single: bool = False,
           params: dict | None = None):
    """Store a job, enqueue its task and answer 202 with where to poll.

    single (POST /v1/events/validate): admitted by admit_single_event, as the fast path does.
    """
    svc, tenant = services(), flask.g.tenant
    if len(events) > svc.settings.max_events_per_job:  # bodies are counted before parsing too
        too_many_events(svc.settings.max_events_per_job, len(events))
    if callback_url:
        refuse_unusable_url(callback_url, "callback_url", "this job's callback")
    job_id = request_job_id(tenant)
    if single:  # the fast path, if it handed the request over, made the first store call
        stored_retrying(lambda: admit_single_event(svc, tenant, events[0], job_id=job_id),
                        retry=JOB_ID_ENVIRON not in flask.request.environ)
    elif task is not None:
        stored_retrying(lambda: jobs.create_job(
            svc.redis, svc.settings, tenant, kind=kind, events=events, event_type=event_type,
            callback_url=callback_url, job_id=job_id, params=params), retry=True)
        svc.enqueue(task, tenant, job_id)
    else:
        queue_fairly(svc, tenant, job_id, lambda: jobs.create_queued_job(
            svc.redis, svc.settings, tenant, kind=kind, events=events, event_type=event_type,
            callback_url=callback_url, job_id=job_id, params=params))
    if not single:  # admit_single_event confirms its own (the fast path calls it too)
        replication.confirm(svc, tenant, job_id)  # VIGIL_REDIS_WAIT_REPLICAS
    flask.g.job_id = job_id  # for the request's log line
    status_url = flask.url_for("jobs.Job", job_id=job_id)
    lane = eta.EVENTS if single and svc.settings.micro_batch else eta.JOBS
    eta_s = job_eta(svc, tenant, job_id, lane, len(events))
    return ({"job_id": job_id, "status": jobs.QUEUED, "status_url": status_url, "eta_s": eta_s},
            202, {"Location": status_url, "Retry-After": str(eta.retry_after(eta_s))})


def queue_fairly(svc: Services, tenant: str, job_id: str,
                 create: Callable[[], tuple[str, bool]]) -> None:
    """Store a job in its tenant's queue (tasks.job_queue), put the tenant in the ring if the
    queue was empty, and send the message that has a worker run the next job."""
    first: list[bool] = []
    stored_retrying(lambda: first.append(create()[1]), retry=True)
    if first[-1]:
        try:
            job_queue.join(svc.redis, tenant)
        except redis.RedisError:
            # Stored and queued: the sweep (vigil.sweep_jobs) puts the tenant in the ring.
            log.warning("tenant not put in the job ring; the sweep will", exc_info=True)
    try:
        svc.enqueue(job_queue.RUN_TASK, tenant, job_id)
    except (kombu.exceptions.OperationalError, redis.RedisError):
        # Answered 503: the job must not run later unasked (a client retrying without an
        # Idempotency-Key would have it judged twice), as with a job's own message refused.
        with contextlib.suppress(redis.RedisError):
            job_queue.unqueue(svc.redis, tenant, job_id)
        raise


def job_eta(svc: Services, tenant: str, job_id: str, lane: str, events: int) -> float:
    """eta_s of a job just stored (tasks.eta). The job is stored and its answer due: should
    the estimate's read fail, the answer carries the fallback estimate rather than a 503 a
    client would retry (storing the job again, without an Idempotency-Key)."""
    try:
        return eta.estimate(svc.redis, tenant, job_id)
    except redis.RedisError:
        log.warning("eta not read; answering the fallback estimate", exc_info=True)
        return eta.eta_seconds(eta.fallback(lane, events))


def request_job_id(tenant: str) -> str:
    """The id to store this request's job under, chosen before storing it, so that a store
    call retried after a lost reply finds the job instead of storing another:
    - the one the fast path tried, if it handed the request over (JOB_ID_ENVIRON);
    - with an Idempotency-Key, one derived from the key and the request (api.idempotency's
      fingerprint): a client's retry with the key after a 503 finds the job its first try
      stored, even though that try's key record was never completed;
    - else a new one."""
    request = flask.request
    if JOB_ID_ENVIRON in request.environ:
        return request.environ[JOB_ID_ENVIRON]
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        return jobs.new_job_id()
    fingerprint = idempotency.fingerprint(request.method, request.path, request.query_string,
                                          request.get_data(cache=True))
    return hashlib.sha256(f"{tenant}\0{key}\0{fingerprint}".encode()).hexdigest()[:32]


def stored_retrying(store_it: Callable[[], object], *, retry: bool) -> None:
    """store_it(), once more on a RedisError when ``retry``. Its job id was chosen before the
    first call: if that call stored the job and only its reply was lost (a timeout, a dropped
    connection), the second finds the job and stores nothing again (tasks.store.jobs._CREATE)."""
    try:
        store_it()
    except redis.RedisError:
        if not retry:
            raise
        log.warning("storing a job failed; trying once more under the same job id",
                    exc_info=True)
        store_it()


def admit_single_event(svc: Services, tenant: str, event: dict, *,
                       check_rate_limit: bool = False, job_id: str | None = None) -> str:
    """Store a single-event job in the inbox (tasks.inbox) and wake the events worker if the
    inbox was empty; with VIGIL_MICRO_BATCH=off (the benchmark's reference design (a)), store
    it and send it a task of its own. Returns the job id.

    check_rate_limit: count it against VIGIL_RATE_LIMIT in the same script call (the fast path,
    which has no before_request hook); over the limit, rates.OverRateLimit, nothing stored.
    job_id: the id to store it under (jobs.new_job_id()); called again with the same id
    after a failure, it finds the job stored by the first call, if any, and stores no other.
    With VIGIL_REDIS_WAIT_REPLICAS, returns only once replicas have the job, else raises
    replication.NotReplicated (the job stays stored and queued).
    """
    rate_limit = svc.settings.rate_limit if check_rate_limit else 0
    if not svc.settings.micro_batch:
        job_id = jobs.create_job(svc.redis, svc.settings, tenant, kind="validate",
                                  events=[event], rate_limit=rate_limit, job_id=job_id,
                                  single=True)
        svc.enqueue(job_queue.TASK_OF_KIND["validate"], tenant, job_id)
        replication.confirm(svc, tenant, job_id)
        return job_id
    job_id, first = jobs.create_inbox_job(svc.redis, svc.settings, tenant, event, rate_limit,
                                           job_id=job_id)
    # Only the append that made the tenant's inbox non-empty puts it in the ring, and only the
    # one that made the ring non-empty wakes the events worker (tasks.inbox).
    if first and inbox.join_ring(svc.redis, tenant):
        try:
            svc.enqueue(inbox.WAKE_TASK)
        except (kombu.exceptions.OperationalError, redis.RedisError):
            # The job is stored and in the inbox: beat's sweep (vigil.sweep_events) wakes the
            # worker once the broker answers, so the job is accepted, not refused.
            log.warning("wake message for the events inbox not sent; the sweep will send it",
                        exc_info=True)
    replication.confirm(svc, tenant, job_id)
    return job_id


def latest_jobs(svc: Services, tenant: str, limit: int, before: str | None) -> dict:
    """A page of the tenant's latest jobs (newest first) and where the next page starts."""
    # One more than asked: whether there is a next page.
    ids = jobs.recent_job_ids(svc.redis, tenant, limit + 1, before)
    if ids is None:
        abort(404, message=f"Job {before!r} is not in the list of latest jobs (it expired, or "
                           "was pushed out by newer ones); start again without `before`.")
    found = [job for job in jobs.get_jobs(svc.redis, tenant, ids[:limit]) if job]
    return {"jobs": [job_document(job, None) for job in found],
            "next_before": ids[limit - 1] if len(ids) > limit else None}


def document_json(job: dict, results_json: bytes | None) -> bytes:
    """The job's document as JSON, its stored results (JSON already) spliced in as they are
    rather than parsed and re-serialised by the thousand (JobSchema documents them)."""
    head = flask.json.dumps(job_document(job, None)).encode()
    return head if results_json is None else b"".join((head[:-1], b',"results":', results_json, b"}"))


def job_answer(job_id: str) -> flask.Response | tuple[dict, int, dict] | dict:
    """The caller's job as GET /v1/jobs/{id} answers it (the API's and the /ui page's)."""
    job = load_job(job_id)
    if job["status"] in jobs.FINISHED:
        raw = job_data.get_results_json(services().redis, flask.g.tenant, job_id)
        if raw is None:
            return job_document(job, None)
        return flask.Response(document_json(job, raw), mimetype="application/json")
    # Poll again when it is expected to finish (at most RETRY_AFTER_MAX_S from now);
    # large jobs report progress meanwhile.
    eta_s = eta.estimate(services().redis, flask.g.tenant, job_id)
    return ({**job_document(job, None), "eta_s": eta_s}, 200,
            {"Retry-After": str(eta.retry_after(eta_s))})


def load_job(job_id: str) -> dict:
    """The caller's job, or 404: another tenant's job id is as unknown as a made-up one."""
    job = jobs.get_job(services().redis, flask.g.tenant, job_id) if JOB_ID.fullmatch(job_id) \
        else None
    if job is None:
        abort(404, message=f"No job {job_id!r} (jobs expire after VIGIL_JOB_TTL seconds).")
    return job


@blp.route("/events/validate")
class ValidateEvent(MethodView):
    @blp.arguments(EVENT_SCHEMA)
    @blp.doc(parameters=[idempotency.HEADER_DOC])
    @blp.response(202, JobAcceptedSchema)
    def post(self, event: dict):
        """Validate one event

        Answers at once with a job to poll; the checks run in a worker.
        """
        return submit("validate", [event], single=True)


@blp.route("/jobs")
class Jobs(MethodView):
    @blp.arguments(JobQuerySchema(), location="query")
    @blp.response(200, JobListSchema)
    def get(self, query: dict):
        """Jobs by id with their results (?ids=), or the latest jobs without results

        `?ids=` reads up to 100 jobs in one request: a client sending many single events
        polls their verdicts in bulk rather than one GET per event. Without it, the latest
        jobs, newest first, `limit` at a time (default 20, at most 200); the next page is
        `?before=<next_before>`.
        """
        svc, tenant = services(), flask.g.tenant
        if "ids" not in query:
            return latest_jobs(svc, tenant, query["limit"], query.get("before"))
        found = [job for job in jobs.get_jobs(svc.redis, tenant, list(dict.fromkeys(query["ids"])))
                 if job]
        finished = [job["job_id"] for job in found if job["status"] in jobs.FINISHED]
        results = dict(zip(finished, job_data.get_many_results_json(svc.redis, tenant, finished)))
        documents = b",".join(document_json(job, results.get(job["job_id"])) for job in found)
        return flask.Response(b'{"jobs":[' + documents + b"]}", mimetype="application/json")

    @blp.arguments(JobSubmitSchema())
    @blp.doc(requestBody=CSV_BODY, parameters=[idempotency.HEADER_DOC])
    @blp.response(202, JobAcceptedSchema)
    def post(self, body: dict):
        """Validate a batch of events (JSON, or CSV with ?callback_url=)

        CSV columns: `event_type`, `timestamp`, optional `event_id`, then payload fields.
        """
        return submit("validate", body["events"], callback_url=body.get("callback_url"))


@blp.route("/jobs/<job_id>")
class Job(MethodView):
    @blp.response(200, JobSchema)
    def get(self, job_id: str):
        """A job: status, progress, summary and, once finished, one result per event"""
        return job_answer(job_id)

    @blp.response(200, JobSchema)
    def delete(self, job_id: str):
        """Cancel a job that has not finished"""
        load_job(job_id)
        status = jobs.cancel_job(services().redis, flask.g.tenant, job_id)
        if status != jobs.CANCELLED:
            abort(409, message=f"The job has already {status}; only unfinished jobs cancel.")
        return job_document(load_job(job_id), None)


@blp.route("/jobs/<job_id>/results.csv")
class JobResultsCsv(MethodView):
    @blp.response(200, {"type": "string"}, content_type="text/csv")
    def get(self, job_id: str):
        """The results as CSV: one row per event, warnings as JSON in a column"""
        return results_csv_response(job_id)


# A spreadsheet runs a cell starting with one of these as a formula (OWASP: CSV Injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str | None) -> str | None:
    """Text a spreadsheet shows as text: a cell that would start a formula gets a leading
    single quote, as OWASP recommends. Only text: numbers Vigil computed (a negative score)
    are written as numbers and stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def utc_iso(epoch: float) -> str:
    """An event's timestamp as ISO-8601 UTC ("2026-11-23T12:00:00Z"; fractions kept)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def results_csv_response(job_id: str) -> flask.Response:
    """The caller's job results as a CSV download (the API's and the /ui page's)."""
    job = load_job(job_id)
    results = job_data.get_results(services().redis, flask.g.tenant, job_id)
    if results is None:
        abort(409, message=f"The job is {job['status']} and has no results; results exist once it "
                           "succeeded, or once it failed after judging some of its events.")
    text = spreadsheet_text  # every cell holding text a client chose (ids, types, field names)
    frame = pd.DataFrame({
        "index": [r["index"] for r in results],
        "event_id": [text(r.get("event_id")) for r in results],
        "event_type": [text(r["event_type"]) for r in results],
        "timestamp": [utc_iso(r["timestamp"]) for r in results],
        "valid": ["true" if r["valid"] else "false" for r in results],
        "anomaly_score": [r["anomaly_score"] for r in results],
        "warning_codes": [text(";".join(w["code"] for w in r["warnings"])) for r in results],
        "warnings": [text(json.dumps(r["warnings"])) if r["warnings"] else "" for r in results],
        "processed_at": [r["processed_at"] for r in results],
    })
    out = io.StringIO()
    # CRLF (RFC 4180): with it the csv writer also quotes a cell holding a lone CR, which
    # spreadsheets read as a line break, so "x\r=HYPERLINK(...)" cannot start a row of its own.
    frame.to_csv(out, index=False, lineterminator="\r\n")
    return flask.Response(out.getvalue(), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{job_id}.csv"'})
