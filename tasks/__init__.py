"""Celery workers: the checks, training and webhook delivery, off the request path."""

from __future__ import annotations

from celery import Celery

from core.config import EVENTS_QUEUE, WEBHOOKS_QUEUE, Settings

TASK_MODULES = ["tasks.validate", "tasks.micro_batch", "tasks.history", "tasks.models", "tasks.webhooks",
                "tasks.replay", "tasks.next_job"]


# The three kinds of worker (`make run` and the tests use these; docker-compose.yml spells
# them out), each taking one message at a time: jobs on the default queue; on the events
# queue, the tasks that drain the single-event inbox (tasks.micro_batch), so single events
# never wait behind a 10,000-event job; on the webhooks queue, deliveries, so a slow receiver
# never holds a worker that judges. Delivery waits on the network, not the CPU: threads, each
# attempt bounded by its own deadline (tasks.webhooks; Celery's time limits need prefork).
WORKER_ARGS = {
    "worker": ["-Q", "celery", "--concurrency", "2", "--prefetch-multiplier", "1"],
    "events": ["-Q", EVENTS_QUEUE, "--concurrency", "1", "--prefetch-multiplier", "1"],
    "webhooks": ["-Q", WEBHOOKS_QUEUE, "--pool", "threads", "--concurrency", "4",
                 "--prefetch-multiplier", "1"],
}


def create_celery(settings: Settings) -> Celery:
    """A Celery app for these settings. No Flask here: the API and the workers both use it."""
    # Connects the logging and task signal handlers before Celery sets up logging.
    from tasks import heartbeat, metrics_server, observability  # noqa: F401
    app = Celery("vigil", include=TASK_MODULES)
    app.conf.update(settings.celery())
    # Tasks read their settings from the app that runs them (see tasks.context).
    app.conf.vigil_settings = settings
    return app
