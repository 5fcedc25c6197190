"""Workers yield the CPU to the API, the events worker less than the batch workers."""

import pytest

from tasks.worker import niceness


@pytest.mark.parametrize("queues, expected", [
    (["events"], 5), ("events", 5), (["celery"], 10), ("celery,webhooks", 10),
    (["events", "celery"], 10), (None, 10),
])
def test_the_events_worker_runs_five_levels_less_nice(queues, expected):
    assert niceness(10, queues) == expected


def test_never_less_nice_than_started():
    assert niceness(3, ["events"]) == 0 and niceness(0, ["celery"]) == 0
