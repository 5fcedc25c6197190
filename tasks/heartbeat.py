"""Worker liveness: each worker's main process notes, every HEARTBEAT_S, in a Redis sorted set
(core.keys.workers) that it is alive and which queues it consumes; /metrics turns that into
``vigil_workers_alive{queue}`` (core.metrics.WorkersCollector).

Why Redis and not a gauge in the metrics files: the API sees Redis wherever the workers run
(other hosts, other containers), and a worker killed with SIGKILL stops beating by itself,
where a multiprocess gauge file would stay behind it. Redis's clock stamps every beat, so
hosts with skewed clocks agree.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown

from core import keys
from tasks.context import redis_client

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
# Entries of workers gone this long are dropped, so the set does not grow with every restart.
FORGET_S = 24 * 3600

_stop = threading.Event()
_members: list[str] = []


def members(hostname: str, queues: list[str]) -> list[str]:
    return [f"{queue} {hostname}" for queue in queues]


def beat(r: redis.Redis, entries: list[str]) -> None:
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    pipe = r.pipeline(transaction=False)
    pipe.zadd(keys.workers(), dict.fromkeys(entries, now))
    pipe.zremrangebyscore(keys.workers(), "-inf", now - FORGET_S)
    pipe.execute()


def _loop(entries: list[str]) -> None:
    while True:
        try:
            beat(redis_client(), entries)
        except redis.RedisError as exc:  # an outage: the next beat tries again
            log.warning("worker heartbeat not sent: %s", type(exc).__name__)
        if _stop.wait(HEARTBEAT_S):
            return


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    """sender: the worker's consumer, in its main process, once it consumes."""
    queues = sorted(sender.app.amqp.queues.consume_from)
    _members[:] = members(sender.hostname, queues)
    threading.Thread(target=_loop, args=(list(_members),), name="vigil-heartbeat",
                     daemon=True).start()


@worker_shutdown.connect
def _stop_beating(**_: Any) -> None:
    """A clean stop leaves at once rather than after WORKER_STALE_S."""
    _stop.set()
    if _members:
        with contextlib.suppress(redis.RedisError):  # else it goes stale by itself
            redis_client().zrem(keys.workers(), *_members)
