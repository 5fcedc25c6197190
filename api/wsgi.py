"""The WSGI application the API server serves (core/server.py), built once in each worker process."""

from collections.abc import Iterable
from typing import TYPE_CHECKING

from api import create_app
from core.gctuning import tune_gc

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def keep_query_string(wsgi_app: "WSGIApplication") -> "WSGIApplication":
    """uWSGI (run by `make bench-servers`) leaves QUERY_STRING out of a request whose
    variables outgrow its buffer (the query string counts twice, in REQUEST_URI too), and the
    app would answer as if no query had been sent (GET /v1/jobs?ids= with 600 ids listed the
    latest jobs). REQUEST_URI still has it; other servers always set QUERY_STRING."""
    def app(environ: "WSGIEnvironment", start_response: "StartResponse") -> Iterable[bytes]:
        if "QUERY_STRING" not in environ:
            environ["QUERY_STRING"] = environ.get("REQUEST_URI", "").partition("?")[2]
        return wsgi_app(environ, start_response)
    return app


app = create_app()
app.wsgi_app = keep_query_string(app.wsgi_app)  # type: ignore[method-assign]
# Start-up objects stay out of every collection (and shared, where a server forks after this).
tune_gc()
