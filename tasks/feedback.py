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
from tasks import store
from tasks.store import MOMENTS_LUA, dumps, now

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
    job = store.get_job(r, tenant, job_id)
    if job is None:
        raise FeedbackRefused(404, f"No job {job_id!r} (or it expired).")
    if job["kind"] != "validate":
        raise FeedbackRefused(409, f"Job {job_id!r} is a {job['kind']} job: it has no "
                                   "verdicts to give feedback on.")
    results = store.get_results(r, tenant, job_id)
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
_GIVE = MOMENTS_LUA + """
local before = redis.call('HGET', KEYS[1], ARGV[1])
local before_label, before_note = '', ''
if before then
  local old = cjson.decode(before)
  before_label = old.label or ''
  before_note = old.note or ''
end
local label, valid = ARGV[2], ARGV[4] == '1'
local function member(l) if valid then return l ~= 'confirmed' else return l == 'false_alarm' end end
local was, now = member(before_label), member(label)
local record = ARGV[3] ~= '' and cjson.decode(ARGV[3]) or nil
if before_label == label and before_note == ((record and record.note) or '') then
  return {0, now and 1 or 0}
end
if was ~= now then
  local sign = now and 1 or -1
  for i = 10, #ARGV, 2 do
    local field, x = ARGV[i], tonumber(ARGV[i + 1])
    local raw = redis.call('HGET', KEYS[3], field)
    if raw then
      local n, ref, off, m2 = moments(raw)
      local delta = (x - ref) - off
      if sign > 0 then
        n = n + 1
        off = off + delta / n
        m2 = m2 + delta * ((x - ref) - off)
      elseif n <= 1 then
        n = 0
      else
        -- The exact inverse of adding x: the mean and m2 of the other n - 1 values.
        off = off - delta / (n - 1)
        m2 = m2 - delta * delta * n / (n - 1)
        if m2 < 0 then m2 = 0 end
        n = n - 1
      end
      if n == 0 then
        redis.call('HDEL', KEYS[3], field)
      else
        ref, off = rebased(ref, off)
        if finite(ref) and finite(off) and finite(m2) then
          redis.call('HSET', KEYS[3], field, moments_text(n, ref, off, m2))
        end
      end
    elseif sign > 0 then
      redis.call('HSET', KEYS[3], field, moments_text(1, x, 0, 0))
    end
  end
  if now then
    redis.call('RPUSH', KEYS[4], ARGV[5])
    redis.call('LTRIM', KEYS[4], -tonumber(ARGV[8]), -1)
    redis.call('INCR', KEYS[5])
    redis.call('HINCRBY', KEYS[6], ARGV[9], 1)
  else
    redis.call('LREM', KEYS[4], 1, ARGV[5])
    redis.call('HINCRBY', KEYS[6], ARGV[9], -1)
  end
end
-- Spliced into the JSON as text: cjson.encode would round timestamps to 14 digits.
if record then
  redis.call('HSET', KEYS[1], ARGV[1],
             string.sub(ARGV[3], 1, -2) .. ',"in_history":' .. tostring(now) .. '}')
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('LPUSH', KEYS[2], string.sub(ARGV[6], 1, -2) .. ',"before":' .. (before or 'null') .. '}')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
return {1, now and 1 or 0}
"""


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
