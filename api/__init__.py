"""The HTTP API: parse, validate, authorise, store, enqueue, answer. No statistics here."""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Flask
from flask_smorest import Blueprint as ApiBlueprint

from api import observability
from api.errors import ProblemApi, register_outage_handlers
from api.parsing import VigilParser
from api.services import Services
from core.config import API_REDIS_TIMEOUT_S, Settings
from core.connections import broker_redis, store_client
from core.logs import configure_logging
from tasks import create_celery

# Swagger UI 5's dist files ship inside a Flask-only package, so /docs works without internet.
# Only the files are used: flask-smorest renders the page. No ReDoc: no lean package ships it.
SWAGGER_UI_ASSETS = Path(flask_swagger_ui.__file__).parent / "dist"
ApiBlueprint.ARGUMENTS_PARSER = VigilParser()


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging()  # JSON lines, secrets redacted; VIGIL_LOG_LEVEL
    app = Flask(__name__, static_folder=None)
    app.config.update(
        API_TITLE="Vigil",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="/assets/swagger-ui/",
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    app.extensions["vigil"] = Services(
        settings=settings,
        redis=store_client(settings, socket_timeout=API_REDIS_TIMEOUT_S, socket_connect_timeout=2,
                           health_check_interval=30),
        celery=create_celery(settings),
        broker=broker_redis(settings, socket_timeout=5, socket_connect_timeout=2),
    )
    api = ProblemApi(app, spec_kwargs={"info": {"description": (
        "Send events; get a verdict per event from statistical and learned checks. "
        "Authenticate with `Authorization: Bearer <key>`.\n\n"
        "For people: the web page [/ui](/ui) (sign in with an API key) shows each event "
        "type's history against its band, the flagged events with feedback buttons, a "
        "backtest form and the latest jobs.")}})
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    register_outage_handlers(app, api)
    observability.init_app(app)

    app.register_blueprint(Blueprint("swagger_ui", __name__, static_folder=str(SWAGGER_UI_ASSETS),
                                     static_url_path="/assets/swagger-ui"))

    # Imported here, after ARGUMENTS_PARSER is set: their views take the parser when defined.
    from api import event_types, feedback, health, jobs, ui, webhooks
    from api.fast_submit import FastSubmit

    for module in (jobs, event_types, feedback, webhooks, health):
        api.register_blueprint(module.blp)
    app.register_blueprint(ui.blp)  # the /ui web page: plain Flask, not in the OpenAPI document
    # The hot request, single events, answered without the framework where it can be.
    app.wsgi_app = FastSubmit(app.wsgi_app, app.extensions["vigil"])  # type: ignore[method-assign]
    return app
