"""What views share: settings, the Redis client and the Celery app, one set per Flask app."""

from __future__ import annotations

from dataclasses import dataclass

import flask
import redis
from celery import Celery

from core.config import Settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: redis.Redis
    celery: Celery
    # Celery's broker, where it is a Redis other than the store (core.connections.broker_redis).
    broker: redis.Redis | None = None

    def enqueue(self, task_name: str, *args: str) -> None:
        self.celery.send_task(task_name, args=list(args))


def services() -> Services:
    return flask.current_app.extensions["vigil"]
