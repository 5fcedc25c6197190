"""Structured logs: one JSON object per line, with secrets redacted, for the API and the workers.

``configure_logging()`` puts one handler on the root logger; every library logger propagates to
it. Fields: ``ts`` (ISO-8601, UTC), ``level``, ``logger``, ``event`` (when given), ``message``,
then any ``extra=`` fields (``tenant``, ``job_id``, ...), and ``exc`` (the traceback, one string)
when there is an exception.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

LOG_LEVEL_VAR = "VIGIL_LOG_LEVEL"
REDACTED = "[REDACTED]"

# Keys whose values are secrets whatever they look like (extra= fields, nested dicts).
SECRET_KEY = re.compile(r"authorization|api[_-]?keys?|secret|passw(or)?d|token|credential|cookie",
                        re.IGNORECASE)
# ...and secrets inside free text: Standard Webhooks secrets, bearer tokens, `key=value` pairs.
_WHSEC = re.compile(r"whsec_[A-Za-z0-9+/=_-]*")
_BEARER = re.compile(r"\b(Bearer)\s+(?!\[REDACTED\])[^\s\"',;]+", re.IGNORECASE)
_KEY_VALUE = re.compile(
    r"\b((?:authorization|api[_-]?keys?|secret|passw(?:or)?d|token)[\"']?\s*[:=]\s*[\"']?)"
    r"(?!Bearer\b|Basic\b|\[REDACTED\])([^\s\"',;&]+)", re.IGNORECASE)

# What every LogRecord has; anything else on a record came from extra=.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_FIRST = ("ts", "level", "logger", "event", "message")


# Each pattern above needs one of these words: text without any (nearly every log line) is
# searched once instead of substituted three times.
_MAYBE_SECRET = re.compile(
    r"whsec_|bearer|authorization|api[_-]?keys?|secret|passw(?:or)?d|token", re.IGNORECASE)


def redact_text(text: str) -> str:
    if not _MAYBE_SECRET.search(text):
        return text
    text = _WHSEC.sub("whsec_" + REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _KEY_VALUE.sub(lambda m: m.group(1) + REDACTED, text)


def redact(value: Any, key: str = "") -> Any:
    """value with secrets replaced: whole values under secret-like keys, patterns in strings."""
    if key and SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class RedactingFilter(logging.Filter):
    """Rewrites the record in place: its message, its extra= fields and its traceback."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = redact_text(message), None
        for key, value in extra_fields(record).items():
            setattr(record, key, redact(value, key))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        extras = extra_fields(record)
        if "event" in extras:
            doc["event"] = extras.pop("event")
        doc["message"] = record.getMessage()
        for key, value in extras.items():
            doc[key if key not in _FIRST else f"extra_{key}"] = value
        exc = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else None)
        if exc:
            doc["exc"] = exc
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, default=str)


def log_level(level: str | int | None = None) -> int:
    """level, else VIGIL_LOG_LEVEL, else INFO; a ValueError naming the variable if unknown."""
    raw = level if level is not None else (os.environ.get(LOG_LEVEL_VAR, "").strip() or "INFO")
    if isinstance(raw, int):
        return raw
    value = logging.getLevelName(raw.upper())
    if not isinstance(value, int):
        raise ValueError(f"{LOG_LEVEL_VAR}={raw!r} is not a log level "
                         "(DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return value


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    # sys.__stderr__: Celery replaces sys.stderr with a proxy that logs what is written to it,
    # which a handler writing to that proxy would feed back into itself.
    handler = logging.StreamHandler(stream or sys.__stderr__ or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    return handler


def configure_logging(level: str | int | None = None, *, stream: IO[str] | None = None) -> None:
    """Root logger: one JSON handler (replacing any others) at level (default VIGIL_LOG_LEVEL)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(json_handler(stream))
    root.setLevel(log_level(level))
