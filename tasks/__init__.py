"""Celery workers: the checks, training and webhook delivery, off the request path."""

from __future__ import annotations

from celery import Celery

from core.config import Settings

TASK_MODULES = ["tasks.validate", "tasks.history", "tasks.models", "tasks.webhooks"]


def create_celery(settings: Settings) -> Celery:
    """A Celery app for these settings. No Flask here: the API and the workers both use it."""
    app = Celery("vigil", include=TASK_MODULES)
    app.conf.update(settings.celery())
    # Tasks read their settings from the app that runs them (see tasks.context).
    app.conf.vigil_settings = settings
    return app
