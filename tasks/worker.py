"""The Celery app that `celery -A tasks.worker worker|beat|flower` loads."""

import os

from celery.signals import worker_init

from core.config import Settings
from tasks import create_celery, keymigration
from tasks.context import redis_client, through_outages

app = create_celery(Settings.from_env())
app.set_default()


@worker_init.connect
def _yield_cpu_to_the_api(**_) -> None:
    """A worker's main process, before it forks its pool (which inherits the niceness): the
    checks are throughput work and may wait; a request waiting behind them is submit latency."""
    os.nice(app.conf.vigil_settings.worker_nice)


@worker_init.connect
def _store_keys_current(**_) -> None:
    """Before a worker takes any task: a store written by an older Vigil gets today's key names
    (tasks.keymigration; once, under a lock; a single GET once done)."""
    through_outages(lambda: keymigration.ensure(redis_client()), "migrate store keys")
