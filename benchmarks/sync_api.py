"""Reference design (b): the checks inside the request handler (the classic synchronous API).

A minimal Flask app for `make bench` only, served as Vigil's API is (core/server.py):

    REDIS_URL=redis://... granian --interface wsgi --workers 2 --blocking-threads 1 \
        --port 8000 --factory benchmarks.sync_api:create_app

POST /v1/events/validate authenticates like Vigil (Bearer key), parses the event with
Vigil's own marshmallow EventSchema, judges it with Vigil's own tasks.validate.judge_chunk
(baselines, latest values and the current model from Redis, the model cached per process
by version; the same verdict document) inline, stores the result (one SET) and answers
200 with the verdict. It does not merge the
event into the baselines (Vigil's workers do; this reference gets that work for free).

POST /v1/jobs does the same for a batch (Vigil's JobSubmitSchema; judge_chunk per event type
and chunk, in time order, as Vigil's workers judge a job) and answers 200 with the verdicts:
the batch work that `make bench` keeps this design busy with while it measures submit
latency, as it keeps Vigil's workers busy with a backlog of batch jobs.
"""

from __future__ import annotations

import json
import uuid

import flask
import marshmallow as ma
import redis

from api.auth import tenant_for
from api.schemas import EventSchema, JobSubmitSchema
from core import keys
from core.config import Settings
from tasks.store import encoding
from tasks.validate import chunks_by_type, judge_chunk
from tasks.verdicts import Judge


def create_app(settings: Settings | None = None) -> flask.Flask:
    cfg = settings or Settings.from_env()
    r = redis.Redis.from_url(cfg.redis_url, socket_timeout=5, socket_connect_timeout=2)
    schema, job_schema = EventSchema(), JobSubmitSchema()
    rules = Judge(cfg.z_threshold, cfg.min_history, cfg.model_min_rows, cfg.baseline_mode)
    api_keys = dict(cfg.api_keys)
    app = flask.Flask(__name__)

    def problem(status: int, detail: str, errors: dict | None = None) -> flask.Response:
        body = {"status": status, "detail": detail, **({"errors": errors} if errors else {})}
        return flask.Response(json.dumps(body), status, mimetype="application/problem+json")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    def judge(load: ma.Schema, judge_body) -> flask.Response:
        """Authenticate, parse with `load`, then `judge_body(tenant, parsed)` -> the answer."""
        tenant = tenant_for(flask.request.headers.get("Authorization"), api_keys)
        if tenant is None:
            return problem(401, "Missing or unknown API key.")
        try:
            parsed = load.load(json.loads(flask.request.get_data()))
        except ValueError as exc:  # JSONDecodeError
            return problem(400, f"Malformed JSON: {exc}")
        except ma.ValidationError as exc:
            return problem(422, "Invalid request.", {"json": exc.messages})
        body = encoding.dumps(judge_body(tenant, parsed))
        r.set(keys.job_results(tenant, uuid.uuid4().hex), body, ex=cfg.job_ttl_s)
        return flask.Response(body, 200, mimetype="application/json")

    def one_event(tenant: str, event: dict) -> dict:
        return judge_chunk(r, cfg, tenant, event["event_type"], [("", 0, event)],
                           rules).results[0]

    def batch(tenant: str, job: dict) -> dict:
        # In the chunks tasks.validate.judge_jobs judges: per event type, in time order.
        entries = [("", i, event) for i, event in enumerate(job["events"])]
        results = [result for event_type, chunks in chunks_by_type(entries) for chunk in chunks
                   for result in judge_chunk(r, cfg, tenant, event_type, chunk, rules).results]
        return {"results": sorted(results, key=lambda result: result["index"])}

    @app.post("/v1/events/validate")
    def validate():
        return judge(schema, one_event)

    @app.post("/v1/jobs")
    def validate_batch():
        return judge(job_schema, batch)

    return app
