"""tasks.eta's pure estimate: the backlog over the measured (or fallback) throughput, and
Retry-After within its bounds."""

from __future__ import annotations

import math

import pytest

from tasks.eta import (
    EVENTS,
    FALLBACK_EVENTS_PER_S,
    JOBS,
    MIN_MEASURED_S,
    RETRY_AFTER_MAX_S,
    Backlog,
    eta_seconds,
    events_per_s,
    fallback,
    retry_after,
)


def test_throughput_is_the_events_judged_over_the_time_the_lane_was_busy():
    busy = Backlog(JOBS, 4000, judged=6000, busy_s=30.0)
    assert events_per_s(busy) == 200.0
    assert eta_seconds(busy) == 20.0


def test_a_lane_measured_for_an_instant_is_measured_over_the_minimum_time():
    # One chunk of 1,000 judged in 20 ms: not 50,000 events/s.
    assert events_per_s(Backlog(JOBS, 0, judged=1000, busy_s=0.02)) == 1000 / MIN_MEASURED_S


@pytest.mark.parametrize("lane", [JOBS, EVENTS])
def test_with_nothing_measured_the_lanes_fallback_throughput_is_used(lane):
    idle = fallback(lane, 600)
    assert events_per_s(idle) == FALLBACK_EVENTS_PER_S[lane]
    assert eta_seconds(idle) == round(600 / FALLBACK_EVENTS_PER_S[lane], 1)


def test_an_eta_is_never_zero_and_counts_at_least_the_job_itself():
    assert eta_seconds(Backlog(EVENTS, ahead=0, judged=10**6, busy_s=60.0)) == 0.1
    assert eta_seconds(Backlog(EVENTS, ahead=1, judged=60, busy_s=60.0)) == 1.0


@pytest.mark.parametrize("eta_s, expected", [
    (0.1, 1), (0.99, 1), (1.0, 1), (1.01, 2), (7.4, 8), (29.5, 30), (31.0, RETRY_AFTER_MAX_S),
    (1e9, RETRY_AFTER_MAX_S), (math.inf, RETRY_AFTER_MAX_S)])
def test_retry_after_is_the_eta_rounded_up_within_its_bounds(eta_s, expected):
    assert retry_after(eta_s) == expected
    assert isinstance(retry_after(eta_s), int)
