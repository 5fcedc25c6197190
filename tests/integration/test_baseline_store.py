"""Baseline merges in Redis: exact, atomic under concurrency, and once per batch."""

from __future__ import annotations

import threading
import uuid
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from ml.stats import Moments
from tasks.store import baselines, webhook_schedule

TENANT = "store-test"


def test_concurrent_merges_lose_nothing_and_match_numpy(redis_server, settings):
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(11)
    batches = [rng.normal(1e6, 3, rng.integers(1, 200)) for _ in range(160)]

    def merge(mine: list[np.ndarray], worker: int) -> None:
        r = redis_server.client()  # one connection per thread, as separate workers have
        for i, values in enumerate(mine):
            baselines.apply_batch(r, settings, TENANT, event_type, f"w{worker}-{i}",
                              {"x": Moments.of(values)}, [{"ts": 0, "v": {"x": v}} for v in values])

    threads = [threading.Thread(target=merge, args=(batches[w::8], w)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    merged = baselines.load_baseline(redis_server.client(), TENANT, event_type)["x"]
    everything = np.concatenate(batches)
    assert merged.n == everything.size
    assert merged.mean == pytest.approx(everything.mean(), rel=1e-12)
    assert merged.variance == pytest.approx(everything.var(), rel=1e-9)
    assert baselines.event_type_counts(redis_server.client(), TENANT)[event_type] == everything.size


def test_a_redelivered_batch_is_counted_once(redis_server, settings):
    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    values = np.arange(10.0)
    rows = [{"ts": 0, "v": {"x": v}} for v in values]
    assert baselines.apply_batch(r, settings, TENANT, event_type, "job-1:0", {"x": Moments.of(values)},
                             rows)
    assert not baselines.apply_batch(r, settings, TENANT, event_type, "job-1:0",
                                 {"x": Moments.of(values)}, rows)
    assert baselines.load_baseline(r, TENANT, event_type)["x"].n == 10
    assert baselines.history_count(r, TENANT, event_type) == 10


def test_history_is_bounded(redis_server, settings):
    from dataclasses import replace

    small = replace(settings, history_max_rows=25)
    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    for batch in range(3):
        rows = [{"ts": batch * 10 + i, "v": {"x": float(i)}} for i in range(10)]
        baselines.apply_batch(r, small, TENANT, event_type, f"b{batch}", {}, rows)
    kept = baselines.history_rows(r, TENANT, event_type)
    assert len(kept) == 25
    assert kept[-1]["ts"] == 29 and kept[0]["ts"] == 5  # the oldest rows went first


def test_scheduled_webhook_retries_are_handed_out_once_when_due(redis_server):
    r = redis_server.client()
    webhook_schedule.schedule_webhook(r, TENANT, "job-late", due=2_000.0)
    webhook_schedule.schedule_webhook(r, TENANT, "job-soon", due=1_000.0)
    assert webhook_schedule.take_due_webhooks(r, until=1_500.0) == [(TENANT, "job-soon")]
    assert webhook_schedule.take_due_webhooks(r, until=1_500.0) == []
    assert webhook_schedule.take_due_webhooks(r, until=3_000.0) == [(TENANT, "job-late")]


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
    assert baselines.load_baseline(r, TENANT, event_type)["x"].n == 3
    assert baselines.history_count(r, TENANT, event_type) == 3

    # job3's batch was merged already, by an earlier delivery: job4 and job5 still count.
    baselines.apply_batch(r, settings, TENANT, event_type, f"job3:{event_type}:0",
                      {"x": Moments.of(np.array([3.0]))}, [{"ts": 0, "v": {"x": 3.0}}])
    results = judge_jobs(r, settings, TENANT, dict(list(jobs.items())[3:]))
    merged = baselines.load_baseline(r, TENANT, event_type)["x"]
    assert merged.n == 6 and merged.mean == pytest.approx(2.5)
    assert baselines.history_count(r, TENANT, event_type) == 6
    assert [results[j][0]["index"] for j in ("job3", "job4", "job5")] == [0, 0, 0]

    # The whole micro-batch again (redelivered): nothing moves.
    judge_jobs(r, settings, TENANT, dict(list(jobs.items())[3:]))
    assert baselines.load_baseline(r, TENANT, event_type)["x"].n == 6


def _exact_variance(values: np.ndarray) -> Fraction:
    exact = [Fraction(float(v)) for v in values]
    mean = sum(exact) / len(exact)
    return sum((x - mean) ** 2 for x in exact) / len(exact)


@pytest.mark.parametrize("offset", [1e8, 1e10, 1e13])
def test_merged_variance_far_from_zero_matches_exact_arithmetic(redis_server, settings, offset):
    """Values offset/spread >= 1e8 apart from zero: merged batch by batch in Redis, the
    variance matches exact rational arithmetic on the same floats (it was off by up to
    1e-4 at 1e13 when means were merged as plain floats)."""
    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(int(np.log10(offset)))
    batches = [offset + rng.normal(0, 1, int(rng.integers(1, 40))) for _ in range(150)]
    for i, values in enumerate(batches):
        baselines.apply_batch(r, settings, TENANT, event_type, f"{event_type}-{i}",
                          {"x": Moments.of(values)}, [])
    merged = baselines.load_baseline(r, TENANT, event_type)["x"]
    everything = np.concatenate(batches)
    exact = _exact_variance(everything)
    error = abs(Fraction(merged.variance) - exact) / exact
    assert merged.n == everything.size
    assert error <= 1e-10, float(error)
    assert merged.mean == pytest.approx(float(sum(map(Fraction, everything)) / everything.size),
                                        rel=1e-15)


def _exact_recent(values: np.ndarray, settings) -> tuple[Fraction, Fraction]:
    """The recent baseline's mean and variance in exact arithmetic (no value clipped)."""
    alpha, mean, var = Fraction(settings.recent_alpha), Fraction(0), Fraction(0)
    for n, x in enumerate(map(Fraction, values), start=1):
        w = max(Fraction(1, n), alpha)
        d = x - mean
        mean, var = mean + w * d, (1 - w) * (var + w * d * d)
    return mean, var


def test_recent_baseline_far_from_zero_matches_exact_arithmetic(redis_server, settings):
    """The recent baseline's loop ran on values 1e13 +/- 1 as they were: its variance was off
    by 2e-4; about the field's reference it keeps float precision."""
    from dataclasses import replace

    unclipped = replace(settings, recent_clip=1e6)  # the exact replay below does not clip
    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(13)
    batches = [1e13 + rng.normal(0, 1, int(rng.integers(1, 40))) for _ in range(100)]
    for i, values in enumerate(batches):
        baselines.apply_batch(r, unclipped, TENANT, event_type, f"{event_type}-{i}", {}, [],
                          recent={"x": values})
    recent = baselines.load_recent(r, TENANT, event_type, ["x"])["x"]
    mean, var = _exact_recent(np.concatenate(batches), unclipped)
    error = float(abs(Fraction(recent.variance) - var) / var)
    assert error <= 1e-10, error
    assert abs(Fraction(recent.mean) - mean) <= Fraction(np.spacing(1e13))


def test_values_at_the_magnitude_limit_merge_finite_and_the_field_stays_checked(
        redis_server, settings):
    """Values at +/-MAX_MAGNITUDE merge to finite moments in Redis (all-time and recent),
    and the field is still judged afterwards: 1e308s once made it inf/nan and every later
    value valid."""
    from ml.stats import MAX_MAGNITUDE
    from tasks.verdicts import Judge, judge_events

    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(17)
    batches = [np.array([MAX_MAGNITUDE, -MAX_MAGNITUDE])] + [
        MAX_MAGNITUDE * (1 + rng.normal(0, 0.01, 20)) for _ in range(5)]
    for i, values in enumerate(batches):
        baselines.apply_batch(r, settings, TENANT, event_type, f"{event_type}-{i}",
                          {"x": Moments.of(values)}, [], recent={"x": values})
    everything = np.concatenate(batches)
    merged = baselines.load_baseline(r, TENANT, event_type)["x"]
    recent = baselines.load_recent(r, TENANT, event_type, ["x"])["x"]
    assert np.isfinite([merged.mean, merged.m2, recent.mean, recent.m2]).all()
    assert merged.n == everything.size
    assert merged.mean == pytest.approx(everything.mean(), rel=1e-12)
    assert merged.variance == pytest.approx(everything.var(), rel=1e-9)

    rules = Judge(z_threshold=3.0, min_history=30, model_min_rows=50)
    ordinary, small = judge_events(pd.DataFrame({"x": [merged.mean, 1e6]}), {"x": merged},
                                   rules, recent={"x": recent})
    assert ordinary["valid"] is True
    [warning] = small["warnings"]
    assert warning["code"] == "out_of_range" and np.isfinite(warning["z"])


def test_a_merge_that_would_overflow_is_not_stored(redis_server, settings):
    """Values beyond the bound (the API refuses them; this is the script's own guard) leave
    the field's moments as they were rather than storing inf or nan (a young recent
    baseline, not clipping yet, included)."""
    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    history = np.random.default_rng(19).normal(100, 10, 5)
    baselines.apply_batch(r, settings, TENANT, event_type, f"{event_type}-0",
                      {"x": Moments.of(history)}, [], recent={"x": history})
    before = (baselines.load_baseline(r, TENANT, event_type)["x"],
              baselines.load_recent(r, TENANT, event_type, ["x"])["x"])
    huge = np.array([1e308, 1e308])
    baselines.apply_batch(r, settings, TENANT, event_type, f"{event_type}-1",
                      {"x": Moments.of(huge)}, [], recent={"x": huge})
    after = (baselines.load_baseline(r, TENANT, event_type)["x"],
             baselines.load_recent(r, TENANT, event_type, ["x"])["x"])
    assert after == before


def test_moments_stored_before_references_still_merge(redis_server, settings):
    """'n,mean,m2' as stored before: read as its own reference, merged exactly; one made
    inf or nan by unbounded values starts over from the next batch."""
    from core import keys

    r = redis_server.client()
    event_type = f"t-{uuid.uuid4().hex[:8]}"
    old = np.array([1.0, 2.0, 3.0, 4.0])
    r.hset(keys.baseline(TENANT, event_type), mapping={
        "x": f"{old.size},{float(old.mean())!r},{float(((old - old.mean()) ** 2).sum())!r}",
        "poisoned": "2,inf,nan"})
    r.hset(keys.recent_baseline(TENANT, event_type), "poisoned", "2,nan,nan")
    assert baselines.load_baseline(r, TENANT, event_type)["x"] == Moments(4, 2.5, 5.0)
    new = np.array([10.0, 11.0])
    baselines.apply_batch(r, settings, TENANT, event_type, f"{event_type}-0",
                      {"x": Moments.of(new), "poisoned": Moments.of(new)}, [],
                      recent={"poisoned": new})
    merged = baselines.load_baseline(r, TENANT, event_type)
    everything = np.concatenate([old, new])
    assert merged["x"].n == 6
    assert merged["x"].mean == pytest.approx(everything.mean(), rel=1e-15)
    assert merged["x"].variance == pytest.approx(everything.var(), rel=1e-15)
    assert (merged["poisoned"].n, merged["poisoned"].mean) == (2, 10.5)
    recent = baselines.load_recent(r, TENANT, event_type, ["poisoned"])["poisoned"]
    assert (recent.n, recent.mean) == (2, 10.5)
