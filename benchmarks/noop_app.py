"""A WSGI app that does nothing, for the HTTP floor `make bench` prints (run_all.bench_http_floor).

Served as Vigil's API is (core/server.py) and driven by the same client as the single-event phases,
it measures what one exchange costs before any design does anything with the event.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# A verdict as reference (b) answers one: benchmarks.load.sync_stream counts it.
ANSWER = b'{"valid": true, "anomaly_score": 0.0}'


def app(environ: "WSGIEnvironment", start_response: "StartResponse") -> Iterable[bytes]:
    """Reads the body and answers 200 with a fixed verdict: no parsing, no Redis."""
    length = environ.get("CONTENT_LENGTH") or "0"
    if length.isdigit() and int(length):
        environ["wsgi.input"].read(int(length))
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(ANSWER)))])
    return [ANSWER]
