"""The Celery app that `celery -A tasks.worker worker|beat|flower` loads."""

import os

from celery.signals import celeryd_init

from core.config import EVENTS_QUEUE, Settings
from tasks import create_celery

app = create_celery(Settings.from_env())
app.set_default()

# How much less nice than the other workers the events worker runs: its single events wait
# for a verdict while batch jobs are throughput work. On shared cores, a tenant's batch
# backlog kept another tenant's single events waiting for the CPU (make bench, "fair tenants").
EVENTS_NICE_LESS = 5


def niceness(worker_nice: int, queues: object) -> int:
    """How much nicer than it starts a worker consuming ``queues`` runs."""
    names = queues.split(",") if isinstance(queues, str) else list(queues or ())
    if names and all(name.strip() == EVENTS_QUEUE for name in names):
        return max(0, worker_nice - EVENTS_NICE_LESS)
    return worker_nice


@celeryd_init.connect
def _yield_cpu_to_the_api(options: dict | None = None, **_) -> None:
    """A worker's main process, before it forks its pool (which inherits the niceness): the
    checks are throughput work and may wait; a request waiting behind them is submit latency.
    The events worker less so than the batch workers (EVENTS_NICE_LESS)."""
    os.nice(niceness(app.conf.vigil_settings.worker_nice, (options or {}).get("queues")))
