"""The Celery app that `celery -A tasks.worker worker|beat|flower` loads."""

import os

from celery.signals import worker_init

from core.config import Settings
from tasks import create_celery

app = create_celery(Settings.from_env())
app.set_default()


@worker_init.connect
def _yield_cpu_to_the_api(**_) -> None:
    """A worker's main process, before it forks its pool (which inherits the niceness): the
    checks are throughput work and may wait; a request waiting behind them is submit latency."""
    os.nice(app.conf.vigil_settings.worker_nice)
