"""Request bodies: strict JSON or CSV, with errors a client can act on (400, 415)."""

from __future__ import annotations

import csv
import io
import itertools
import math
from typing import Any, NoReturn

import flask
import marshmallow as ma
import orjson
import pandas as pd
from flask_smorest import abort
from webargs.flaskparser import FlaskParser, is_json_request

from api.services import services

CSV = "text/csv"


def parse_json(data: bytes) -> Any:
    """JSON as the RFC defines it: no NaN/Infinity, no numbers that overflow to infinity.

    orjson is strict about all of that by itself, and several times faster than json on the
    1,000-event bodies of batch jobs. Integers beyond 64 bits load as floats.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc):
            abort(400, message="The request body is not UTF-8 text")
        if "depth limit" in str(exc):
            abort(400, message="The JSON body is nested too deeply")
        abort(400, message=f"Malformed JSON: {exc}")


def read_csv(data: bytes, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """CSV rows as dicts (empty cells left out), checking the columns the caller needs."""
    if not data.strip():
        abort(400, message="The CSV body is empty; send a header row and at least one row")
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype={c: str for c in ("event_type", "event_id",
                                                                          "timestamp")})
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        abort(400, message=f"The CSV body could not be parsed: {exc}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        got = ", ".join(map(str, frame.columns))
        abort(422, message="CSV columns missing", errors={"csv": {
            "columns": [f"missing column(s) {', '.join(missing)}; got {got}"]}})
    records = frame.to_dict(orient="records")
    return [{str(k): v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in records]


def too_many_events(limit: int, got: int | str) -> NoReturn:
    """The 422 for a submission over VIGIL_MAX_EVENTS_PER_JOB (api.jobs.accept words it alike)."""
    abort(422, message="Too many events", errors={"json": {"events": [
        f"At most {limit} events per job; got {got}. Split the submission."]}})


def csv_rows_over(data: bytes, limit: int) -> bool:
    """Whether a CSV body has more than `limit` rows under its header, found without building
    them. Its line breaks bound its rows from above and cost one pass of bytes.count; only a
    body over that bound is read row by row, up to limit + 1 rows, by the csv module, so
    line breaks inside quoted cells never refuse a body that is within the limit."""
    breaks = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    if breaks <= limit:  # rows = lines - header <= breaks
        return False
    rows = (row for row in csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8",
                                                       newline="")) if row)  # as pandas, skip blank lines
    try:
        return sum(1 for _ in itertools.islice(rows, limit + 2)) > limit + 1
    except (csv.Error, UnicodeDecodeError) as exc:
        abort(400, message=f"The CSV body could not be parsed: {exc}")


class VigilParser(FlaskParser):
    """Reads the body as JSON, or as CSV where the schema can build itself from CSV rows.

    A schema opts into CSV with a ``from_csv(rows, query)`` classmethod and a ``csv_columns``
    tuple of required columns. A schema whose ``events_list`` names a list of events has that
    list's length checked against VIGIL_MAX_EVENTS_PER_JOB here, before pandas or marshmallow
    build a single event: refusing an oversized batch costs little.
    """

    def load_json(self, req: flask.Request, schema: ma.Schema) -> Any:
        accepts_csv = hasattr(schema, "from_csv")
        limited = getattr(schema, "events_list", None)
        limit = services().settings.max_events_per_job
        if accepts_csv and req.mimetype == CSV:
            data = req.get_data(cache=True)
            if limited and csv_rows_over(data, limit):
                too_many_events(limit, f"more than {limit}")
            return schema.from_csv(read_csv(data, schema.csv_columns), req.args)
        if not is_json_request(req):
            wanted = "application/json" + (" or text/csv" if accepts_csv else "")
            got = req.mimetype or "no Content-Type"
            abort(415, message=f"{got} is not supported here; send {wanted}")
        data = req.get_data(cache=True)
        if not data.strip():
            abort(400, message="The request body is empty; send a JSON object")
        body = parse_json(data)
        events = body.get(limited) if limited and isinstance(body, dict) else None
        if isinstance(events, list) and len(events) > limit:
            too_many_events(limit, len(events))
        return body
