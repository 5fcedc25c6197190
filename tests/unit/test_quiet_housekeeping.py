"""Beat's housekeeping tasks stay out of an INFO log while idle (tasks.observability)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from core import logs
from tasks.observability import QuietHousekeeping


def trace_record(logger: str, task: str, level: int = logging.INFO) -> logging.LogRecord:
    record = logging.LogRecord(logger, level, __file__, 1, "Task %s[id] received", (task,),
                               None)
    record.data = {"id": "id", "name": task}
    return record


@pytest.fixture
def root_at(request):
    root = logging.getLogger()
    before = root.level
    root.setLevel(request.param)
    yield
    root.setLevel(before)


@pytest.mark.parametrize("root_at", [logging.INFO], indirect=True)
def test_housekeeping_trace_lines_are_dropped_at_info(root_at):
    quiet = QuietHousekeeping()
    for logger in ("celery.worker.strategy", "celery.app.trace"):
        for task in ("vigil.sweep_events", "vigil.send_due_webhooks", "vigil.retrain_due"):
            assert not quiet.filter(trace_record(logger, task))
        # A job's lines, and any housekeeping trouble, are shown as they were.
        assert quiet.filter(trace_record(logger, "vigil.validate_job"))
        assert quiet.filter(trace_record(logger, "vigil.sweep_events", logging.ERROR))


@pytest.mark.parametrize("root_at", [logging.DEBUG], indirect=True)
def test_housekeeping_trace_lines_show_as_debug_at_debug(root_at):
    stream = io.StringIO()
    handler = logs.json_handler(stream)
    handler.addFilter(QuietHousekeeping())
    handler.handle(trace_record("celery.app.trace", "vigil.sweep_events"))
    assert json.loads(stream.getvalue())["level"] == "DEBUG"
