"""Feedback on verdicts: a false alarm's values join the baselines and the training history,
a confirmed anomaly is kept out of them, exactly once, changeable, with an audit trail.

An event's values are in the all-time baseline and the history when it was judged valid and
not since confirmed as an anomaly, or judged invalid and since marked a false alarm. Each
feedback moves them in or out only when that membership changes, in one script with the
record of the feedback: a retried or concurrent post cannot count an event twice. The recent
baseline is not moved (it forgets anyway); the model and the calibrated thresholds learn the
change at the type's next training.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import redis

from core import keys
from tasks.store import job_data, jobs, lua
from tasks.store.encoding import dumps, now

LOG_KEPT = 1000
FALSE_ALARM, CONFIRMED = "false_alarm", "confirmed"


class FeedbackRefused(Exception):
    """Feedback that cannot be given; ``status``: the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Judged:
    """One judged event, as feedback needs it: its values and its history row (JSON, as the
    history holds it, or would)."""
    job_id: str
    index: int
    event_type: str
    ts: float
    valid: bool
    values: dict[str, float]
    row: bytes

    @property
    def member(self) -> str:
        return f"{self.job_id}:{self.index}"


def judged_event(r: redis.Redis, tenant: str, job_id: str, index: int) -> Judged:
    """The event at ``index`` of a finished validate job, with its verdict and values;
    raises FeedbackRefused (404: no such job or event; 409: not a verdict yet, or its values
    are no longer kept)."""
    job = jobs.get_job(r, tenant, job_id)
    if job is None:
        raise FeedbackRefused(404, f"No job {job_id!r} (or it expired).")
    if job["kind"] != "validate":
        raise FeedbackRefused(409, f"Job {job_id!r} is a {job['kind']} job: it has no "
                                   "verdicts to give feedback on.")
    results = job_data.get_results(r, tenant, job_id)
    if results is None:
        raise FeedbackRefused(409, f"Job {job_id!r} is {job['status']}: give feedback once "
                                   "its verdicts are in.")
    found = next((x for x in results if x.get("index") == index), None)
    if found is None:
        raise FeedbackRefused(404, f"Job {job_id!r} has no verdict at index {index} (its "
                                   f"indexes run from 0 to {len(results) - 1}).")
    event_type, ts, valid = found["event_type"], float(found["timestamp"]), bool(found["valid"])
    # A job's events are dropped once it finished: the values are those the type keeps, in
    # its history (valid events) or flagged list (invalid ones), or with earlier feedback.
    earlier = r.hget(keys.feedback(tenant, event_type), f"{job_id}:{index}")
    if earlier is not None:
        values = orjson.loads(earlier)["v"]
        row = dumps({"ts": ts, "v": values})
    else:
        row = _kept_row(r, tenant, event_type, job_id, found)
        if row is None:
            raise FeedbackRefused(409, f"The values of this event are no longer kept (the "
                                       f"type keeps its latest {'history' if valid else 'flagged'}"
                                       " events only): feedback cannot move them.")
        values = orjson.loads(row)["v"]
        if not valid:  # as the history would hold it
            row = dumps({"ts": ts, "v": values})
    return Judged(job_id, index, event_type, ts, valid, values, row)


def _kept_row(r: redis.Redis, tenant: str, event_type: str, job_id: str,
              result: dict) -> bytes | None:
    """The stored row of a judged event: a flagged row names its job and index; a history
    row is found by its timestamp (two valid events of a type at one instant are told apart
    by nothing a verdict keeps: the newest is taken; either may stand for the other)."""
    key = keys.history(tenant, event_type) if result["valid"] else keys.flagged(tenant, event_type)
    named = {w["field"]: w["value"] for w in result["warnings"]
             if w.get("field") and "value" in w}
    for raw in reversed(r.lrange(key, 0, -1)):  # newest first: the likelier match
        row = orjson.loads(raw)
        if "job" in row:  # flagged rows name their verdict
            if (row["job"], row["i"]) == (job_id, result["index"]):
                return raw
        elif row["ts"] == result["timestamp"] and all(
                row["v"].get(f) == x for f, x in named.items()):
            return raw
    return None


# KEYS: feedback, feedback log, baseline, history, history since training, event types.
# ARGV: member, label ('' withdraws), record JSON, valid (1/0), history row JSON, log entry
# JSON without its 'before' (filled in here), kept log entries, history max rows, event type,
# then field, value pairs. Returns {changed (1/0), in history now (1/0)}.
_GIVE = lua.text("moments", "feedback_give")


def give(r: redis.Redis, history_max_rows: int, tenant: str, event: Judged,
         label: str | None, note: str | None, actor: str) -> dict:
    """Record ``label`` (None: withdraw) for the judged event and move its values in or out of
    the baselines and history as that changes. The same feedback twice changes nothing."""
    at = now()
    record = ({"label": label, "note": note or "", "at": at, "by": actor, "ts": event.ts,
               "valid": event.valid, "job_id": event.job_id, "index": event.index,
               "v": event.values}
              if label else None)
    entry = {"event": event.member, "at": at, "by": actor, "after": record}
    args: list = [event.member, label or "", dumps(record) if record else "",
                  "1" if event.valid else "0", event.row, dumps(entry), LOG_KEPT,
                  history_max_rows, event.event_type]
    for field, value in event.values.items():
        args += [field, repr(float(value))]
    changed, in_history = r.register_script(_GIVE)(keys=[
        keys.feedback(tenant, event.event_type), keys.feedback_log(tenant, event.event_type),
        keys.baseline(tenant, event.event_type), keys.history(tenant, event.event_type),
        keys.history_since_training(tenant, event.event_type), keys.event_types(tenant)],
        args=args)
    return {"job_id": event.job_id, "index": event.index, "event_type": event.event_type,
            "label": label, "note": note, "by": actor, "at": at, "valid": event.valid,
            "in_history": bool(in_history), "changed": bool(changed)}


def labels(r: redis.Redis, tenant: str, event_type: str) -> dict[str, dict]:
    """The type's current feedback: '<job id>:<index>' -> its record."""
    return {member.decode(): orjson.loads(raw)
            for member, raw in r.hgetall(keys.feedback(tenant, event_type)).items()}


def audit(r: redis.Redis, tenant: str, event_type: str, limit: int = 50) -> list[dict]:
    """The type's latest feedback changes, newest first."""
    return [orjson.loads(raw) for raw in
            r.lrange(keys.feedback_log(tenant, event_type), 0, limit - 1)]
