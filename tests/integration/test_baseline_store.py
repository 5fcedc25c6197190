"""Baseline merges in Redis: exact, atomic under concurrency, and once per batch."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest

from ml.stats import Moments
from tasks import store

TENANT = "store-test"


def test_concurrent_merges_lose_nothing_and_match_numpy(redis_server, settings):
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(11)
    batches = [rng.normal(1e6, 3, rng.integers(1, 200)) for _ in range(160)]

    def merge(mine: list[np.ndarray], worker: int) -> None:
        r = redis_server.client()  # one connection per thread, as separate workers have
        for i, values in enumerate(mine):
            store.apply_batch(r, settings, TENANT, event_type, f"w{worker}-{i}",
                              {"x": Moments.of(values)}, [{"ts": 0, "v": {"x": v}} for v in values])

    threads = [threading.Thread(target=merge, args=(batches[w::8], w)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    merged = store.load_baseline(redis_server.client(), TENANT, event_type)["x"]
    everything = np.concatenate(batches)
    assert merged.n == everything.size
    assert merged.mean == pytest.approx(everything.mean(), rel=1e-12)
    assert merged.variance == pytest.approx(everything.var(), rel=1e-9)
    assert store.event_type_counts(redis_server.client(), TENANT)[event_type] == everything.size


def test_a_redelivered_batch_is_counted_once(redis_server, settings):
    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    values = np.arange(10.0)
    rows = [{"ts": 0, "v": {"x": v}} for v in values]
    assert store.apply_batch(r, settings, TENANT, event_type, "job-1:0", {"x": Moments.of(values)},
                             rows)
    assert not store.apply_batch(r, settings, TENANT, event_type, "job-1:0",
                                 {"x": Moments.of(values)}, rows)
    assert store.load_baseline(r, TENANT, event_type)["x"].n == 10
    assert store.history_count(r, TENANT, event_type) == 10


def test_history_is_bounded(redis_server, settings):
    from dataclasses import replace

    small = replace(settings, history_max_rows=25)
    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    for batch in range(3):
        rows = [{"ts": batch * 10 + i, "v": {"x": float(i)}} for i in range(10)]
        store.apply_batch(r, small, TENANT, event_type, f"b{batch}", {}, rows)
    kept = store.history_rows(r, TENANT, event_type)
    assert len(kept) == 25
    assert kept[-1]["ts"] == 29 and kept[0]["ts"] == 5  # the oldest rows went first


def test_scheduled_webhook_retries_are_handed_out_once_when_due(redis_server):
    r = redis_server.client()
    store.schedule_webhook(r, TENANT, "job-late", due=2_000.0)
    store.schedule_webhook(r, TENANT, "job-soon", due=1_000.0)
    assert store.take_due_webhooks(r, until=1_500.0) == [(TENANT, "job-soon")]
    assert store.take_due_webhooks(r, until=1_500.0) == []
    assert store.take_due_webhooks(r, until=3_000.0) == [(TENANT, "job-late")]


def test_a_micro_batch_merges_its_jobs_together_and_each_job_once(redis_server, settings):
    """Many one-event jobs judged together are merged in one call; if one of them was
    merged before (a redelivery racing its first delivery), the others are merged job by job
    and that one is not counted again."""
    from tasks.validate import judge_jobs

    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    jobs = {f"job{i}": [{"event_type": event_type, "timestamp": 1_790_000_000 + i,
                         "payload": {"x": float(i)}}] for i in range(6)}

    judge_jobs(r, settings, TENANT, dict(list(jobs.items())[:3]))
    assert store.load_baseline(r, TENANT, event_type)["x"].n == 3
    assert store.history_count(r, TENANT, event_type) == 3

    # job3's batch was merged already, by an earlier delivery: job4 and job5 still count.
    store.apply_batch(r, settings, TENANT, event_type, f"job3:{event_type}:0",
                      {"x": Moments.of(np.array([3.0]))}, [{"ts": 0, "v": {"x": 3.0}}])
    results = judge_jobs(r, settings, TENANT, dict(list(jobs.items())[3:]))
    merged = store.load_baseline(r, TENANT, event_type)["x"]
    assert merged.n == 6 and merged.mean == pytest.approx(2.5)
    assert store.history_count(r, TENANT, event_type) == 6
    assert [results[j][0]["index"] for j in ("job3", "job4", "job5")] == [0, 0, 0]

    # The whole micro-batch again (redelivered): nothing moves.
    judge_jobs(r, settings, TENANT, dict(list(jobs.items())[3:]))
    assert store.load_baseline(r, TENANT, event_type)["x"].n == 6
