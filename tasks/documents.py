"""The job as clients see it: the body of GET /v1/jobs/{id} and of the webhook's `data`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def job_document(job: dict[str, Any], results: list[dict] | None) -> dict[str, Any]:
    """Public view of a stored job; ``results`` only once it has them."""
    document = {
        "job_id": job["job_id"],
        "kind": job["kind"],
        "status": job["status"],
        "event_type": job.get("event_type"),
        "progress": {"done": job.get("done", 0), "total": job.get("total", 0)},
        "created_at": iso(job.get("created_at")),
        "started_at": iso(job.get("started_at")),
        "finished_at": iso(job.get("finished_at")),
        "summary": job.get("summary"),
        "error": job.get("error"),
        "callback_url": job.get("callback_url"),
        "webhook": job.get("webhook"),
    }
    if job.get("params"):
        document["params"] = job["params"]
    if results is not None:
        document["results"] = results
    return document
