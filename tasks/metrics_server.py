"""A worker's own /metrics, when VIGIL_WORKER_METRICS_PORT is set (docker compose).

Under `make run` and the tests the API and the workers share PROMETHEUS_MULTIPROC_DIR, so the
API's /metrics already adds up the workers' metrics (time to verdict, jobs, tasks). In separate
containers they cannot share it (process ids collide), so each worker container serves its
own pool processes' metrics here, from its main process, for Prometheus to scrape.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready
from prometheus_client import start_http_server

from core.metrics import worker_registry
from tasks.context import settings

log = logging.getLogger(__name__)


@worker_ready.connect
def _serve(**_: Any) -> None:
    port = settings().worker_metrics_port
    if port:
        start_http_server(port, addr="0.0.0.0", registry=worker_registry())
        log.info("worker metrics served", extra={"port": port})
