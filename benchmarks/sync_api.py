"""Reference design (b): the checks inside the request handler (the classic synchronous API).

A minimal Flask app for `make bench` only, served as Vigil's API is (uWSGI, uwsgi.ini):

    REDIS_URL=redis://... uwsgi --ini uwsgi.ini --http-socket :8000 \
        --module 'benchmarks.sync_api:create_app()'

POST /v1/events/validate authenticates like Vigil (Bearer key), parses the event with
Vigil's own marshmallow EventSchema, judges it with Vigil's own tasks.validate.judge_chunk
(baselines, latest values and the current model from Redis, the model cached per process
by version; the same verdict document) inline, stores the result (one SET) and answers
200 with the verdict. It does not merge the
event into the baselines (Vigil's workers do; this reference gets that work for free).
"""

from __future__ import annotations

import json
import uuid

import flask
import marshmallow as ma
import redis

from api.auth import tenant_for
from api.schemas import EventSchema
from core import keys
from core.config import Settings
from tasks import store
from tasks.validate import judge_chunk
from tasks.verdicts import Judge


def create_app(settings: Settings | None = None) -> flask.Flask:
    cfg = settings or Settings.from_env()
    r = redis.Redis.from_url(cfg.redis_url, socket_timeout=5, socket_connect_timeout=2)
    schema = EventSchema()
    rules = Judge(cfg.z_threshold, cfg.min_history, cfg.model_min_rows, cfg.baseline_mode)
    api_keys = dict(cfg.api_keys)
    app = flask.Flask(__name__)

    def problem(status: int, detail: str, errors: dict | None = None) -> flask.Response:
        body = {"status": status, "detail": detail, **({"errors": errors} if errors else {})}
        return flask.Response(json.dumps(body), status, mimetype="application/problem+json")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/events/validate")
    def validate():
        tenant = tenant_for(flask.request.headers.get("Authorization"), api_keys)
        if tenant is None:
            return problem(401, "Missing or unknown API key.")
        try:
            event = schema.load(json.loads(flask.request.get_data()))
        except ValueError as exc:  # JSONDecodeError
            return problem(400, f"Malformed JSON: {exc}")
        except ma.ValidationError as exc:
            return problem(422, "Invalid event.", {"json": exc.messages})
        result = judge_chunk(r, cfg, tenant, event["event_type"], [("", 0, event)],
                             rules).results[0]
        body = store.dumps(result)
        r.set(keys.job_results(tenant, uuid.uuid4().hex), body, ex=cfg.job_ttl_s)
        return flask.Response(body, 200, mimetype="application/json")

    return app
