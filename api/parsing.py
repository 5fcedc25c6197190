"""Request bodies: strict JSON or CSV, with errors a client can act on (400, 415)."""

from __future__ import annotations

import io
import math
from typing import Any

import flask
import marshmallow as ma
import orjson
import pandas as pd
from flask_smorest import abort
from webargs.flaskparser import FlaskParser, is_json_request

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


class VigilParser(FlaskParser):
    """Reads the body as JSON, or as CSV where the schema can build itself from CSV rows.

    A schema opts into CSV with a ``from_csv(rows, query)`` classmethod and a ``csv_columns``
    tuple of required columns.
    """

    def load_json(self, req: flask.Request, schema: ma.Schema) -> Any:
        accepts_csv = hasattr(schema, "from_csv")
        if accepts_csv and req.mimetype == CSV:
            return schema.from_csv(read_csv(req.get_data(cache=True), schema.csv_columns),
                                   req.args)
        if not is_json_request(req):
            wanted = "application/json" + (" or text/csv" if accepts_csv else "")
            got = req.mimetype or "no Content-Type"
            abort(415, message=f"{got} is not supported here; send {wanted}")
        data = req.get_data(cache=True)
        if not data.strip():
            abort(400, message="The request body is empty; send a JSON object")
        return parse_json(data)
