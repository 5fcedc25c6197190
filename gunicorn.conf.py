"""gunicorn settings for the API (`make run` passes --config; gunicorn also reads this file by
itself when started from the repository root, as the Docker image's CMD is)."""

import os


def post_worker_init(worker):
    """Each API worker, once it has loaded the app: the GC tuned for a long-lived process
    (see core.gctuning)."""
    from core.gctuning import tune_gc

    tune_gc()


def child_exit(server, worker):
    """A worker exited: drop its live gauges from the Prometheus multiprocess directory
    (counters and histograms stay: they are summed over every process that ever ran)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
