"""core/logs.py: one JSON object per line, extra= fields kept, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

import pytest

from core.logs import REDACTED, configure_logging, json_handler, log_level

BEARER = "key-alpha-test"
WHSEC = "whsec_dGVzdC13ZWJob29rLXNlY3JldC1mb3ItdmlnaWw="


@pytest.fixture
def capture():
    """A private logger with Vigil's JSON handler writing to a buffer; the lines it wrote."""
    stream = io.StringIO()
    logger = logging.getLogger("vigil.test-logs")
    handler = json_handler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    def lines() -> list[dict]:
        text = stream.getvalue()
        assert text.endswith("\n")
        return [json.loads(line) for line in text.splitlines()]

    yield logger, lines, stream
    logger.removeHandler(handler)


def test_a_record_is_one_json_line_with_its_extra_fields(capture):
    logger, lines, _ = capture
    logger.info("job %s finished", "abc", extra={"event": "job", "tenant": "alpha",
                                                 "job_id": "0" * 32, "events": 3})
    [doc] = lines()
    assert list(doc)[:5] == ["ts", "level", "logger", "event", "message"]
    assert doc["level"] == "INFO" and doc["logger"] == "vigil.test-logs"
    assert doc["event"] == "job" and doc["message"] == "job abc finished"
    assert doc["tenant"] == "alpha" and doc["job_id"] == "0" * 32 and doc["events"] == 3
    assert datetime.fromisoformat(doc["ts"]).utcoffset().total_seconds() == 0


def test_secrets_are_redacted_in_messages_extra_fields_and_tracebacks(capture):
    logger, lines, stream = capture
    logger.warning("got Authorization: Bearer %s and secret %s", BEARER, WHSEC,
                   extra={"headers": {"Authorization": f"Bearer {BEARER}", "Accept": "*/*"},
                          "api_key": BEARER, "webhook_secret": WHSEC, "password": "hunter2",
                          "note": f"signed with {WHSEC}", "url": f"http://x/?api_key={BEARER}"})
    try:
        raise RuntimeError(f"receiver said: bad token {WHSEC}\nsecond line")
    except RuntimeError:
        logger.exception("delivery failed", extra={"tenant": "alpha"})

    text = stream.getvalue()
    for secret in (BEARER, WHSEC, "hunter2", "dGVzdC13ZWJob29r"):
        assert secret not in text
    first, second = lines()
    assert first["message"] == f"got Authorization: Bearer {REDACTED} and secret whsec_{REDACTED}"
    assert first["headers"] == {"Authorization": REDACTED, "Accept": "*/*"}
    assert first["api_key"] == first["webhook_secret"] == first["password"] == REDACTED
    assert first["note"] == f"signed with whsec_{REDACTED}"
    assert first["url"] == f"http://x/?api_key={REDACTED}"
    # The traceback is one string field; the record is still one line.
    assert second["tenant"] == "alpha" and "RuntimeError: receiver said" in second["exc"]
    assert "Traceback" in second["exc"] and len(text.splitlines()) == 2


def test_configure_logging_installs_one_json_handler_on_the_root_logger(monkeypatch):
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    monkeypatch.setenv("VIGIL_LOG_LEVEL", "warning")
    try:
        configure_logging(stream=stream)
        configure_logging(stream=stream)  # again: still one handler
        assert len(root.handlers) == 1 and root.level == logging.WARNING
        logging.getLogger("some.library").info("not shown")
        logging.getLogger("some.library").warning("shown", extra={"job_id": "j1"})
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    [line] = stream.getvalue().splitlines()
    assert json.loads(line)["job_id"] == "j1"


def test_an_unknown_log_level_names_the_variable(monkeypatch):
    monkeypatch.setenv("VIGIL_LOG_LEVEL", "chatty")
    with pytest.raises(ValueError, match="VIGIL_LOG_LEVEL"):
        log_level()
    monkeypatch.delenv("VIGIL_LOG_LEVEL")
    assert log_level() == logging.INFO and log_level("debug") == logging.DEBUG
