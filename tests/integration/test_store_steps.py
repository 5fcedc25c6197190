"""The store's steps that a Redis Cluster made two (tasks.store): whatever happens between
them, nothing stays wrong. A job's pending entry is written before its job, so an entry
whose job never came is swept once it is old (not while its job may be being stored); a
cancelled job's entry goes; a type added to its tenant's list before its first merge is not
listed until that merge lands."""

from __future__ import annotations

import time
import uuid

import pytest

from core import keys
from tasks import episodes, eta
from tasks.store import baselines, jobs, rates

EVENTS = [{"event_type": "steps", "timestamp": 1_790_000_000, "payload": {"x": 1.0}}]


def test_a_pending_entry_whose_job_never_came_is_swept_once_old(redis_server):
    r = redis_server.client()
    young, old = uuid.uuid4().hex, uuid.uuid4().hex
    r.hset(keys.pending_events(), mapping={
        eta.pending_entry("steps", young): eta.pending_value(time.time(), 5),
        eta.pending_entry("steps", old): eta.pending_value(
            time.time() - jobs.PENDING_GRACE_S - 1, 5)})
    jobs.drop_finished_pending(r)
    # The young one's job may be being stored this very moment (_create's step 2): kept.
    assert r.hexists(keys.pending_events(), eta.pending_entry("steps", young))
    assert not r.hexists(keys.pending_events(), eta.pending_entry("steps", old))
    r.hdel(keys.pending_events(), eta.pending_entry("steps", young))


def test_a_job_refused_by_the_rate_limit_leaves_no_pending_entry(redis_server, settings):
    r = redis_server.client()
    job_id = jobs.new_job_id()
    window = rates.current_window("steps")
    r.set(window, 10, ex=rates.RATE_WINDOW_TTL_S)  # the window is full already
    try:
        with pytest.raises(rates.OverRateLimit):
            jobs.create_job(r, settings, "steps", kind="validate", events=EVENTS, rate_limit=5,
                            job_id=job_id)
    finally:
        r.delete(window)
    assert not r.exists(keys.job("steps", job_id))
    assert not r.hexists(keys.pending_events(), eta.pending_entry("steps", job_id))


def test_a_stored_job_has_its_entry_and_a_cancelled_one_loses_it(redis_server, settings):
    r = redis_server.client()
    job_id = jobs.create_job(r, settings, "steps", kind="validate", events=EVENTS)
    entry = eta.pending_entry("steps", job_id)
    assert r.hget(keys.pending_events(), entry).decode().endswith(" 1")
    # A retry under the same id (its first reply lost) keeps the first entry.
    r.hset(keys.pending_events(), entry, eta.pending_value(1.0, 1))
    jobs.create_job(r, settings, "steps", kind="validate", events=EVENTS, job_id=job_id)
    assert r.hget(keys.pending_events(), entry) == eta.pending_value(1.0, 1).encode()
    assert jobs.cancel_job(r, "steps", job_id) == jobs.CANCELLED
    assert not r.hexists(keys.pending_events(), entry)
    # Had the process died between the cancel and its entry's removal: the sweep removes it.
    r.hset(keys.pending_events(), entry, eta.pending_value(time.time(), 1))
    jobs.drop_finished_pending(r)
    assert not r.hexists(keys.pending_events(), entry)
    assert jobs.cancel_job(r, "steps", job_id) == jobs.CANCELLED  # as it was
    assert jobs.cancel_job(r, "steps", uuid.uuid4().hex) is None


def test_a_type_is_listed_once_its_first_merge_landed(redis_server, settings):
    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    baselines.note_type(r, "steps", event_type)  # a merge that never landed: a crash after
    assert event_type not in baselines.event_type_counts(r, "steps")
    assert not episodes.type_known(r, "steps", event_type)
    pipe = r.pipeline(transaction=True)  # as tasks.validate merges: a transaction
    baselines.apply_batch(pipe, settings, "steps", event_type, "b-1", {}, [],
                          flagged=[{"ts": 1.0, "v": {"x": 9.0}, "codes": ["out_of_range"]}])
    pipe.execute()
    assert baselines.type_counts(r, "steps")[event_type] == (0, 1)
    assert baselines.invalid_counts(r, "steps")[event_type] == 1
    assert episodes.type_known(r, "steps", event_type)
    assert ("steps", event_type) in baselines.known_types(r)
