"""Webhook retry timing: the published schedule, jitter, and the receiver's Retry-After."""

import httpx
import pytest

from tasks.webhooks import next_delay, retry_after

SVIX = (5, 300, 1800, 7200, 18000, 36000, 36000)


@pytest.mark.parametrize("attempt, step", [(1, 5), (2, 300), (3, 1800), (7, 36000), (12, 36000)])
def test_delay_follows_the_schedule_with_twenty_percent_jitter(attempt, step):
    delays = [next_delay(SVIX, attempt) for _ in range(200)]
    assert all(0.8 * step <= d <= 1.2 * step for d in delays)
    assert len(set(delays)) > 100  # jittered, not one fixed value


def test_retry_after_only_lengthens_the_wait():
    assert next_delay(SVIX, 1, retry_after_s=60) == 60
    assert 0.8 * 300 <= next_delay(SVIX, 2, retry_after_s=1) <= 1.2 * 300


def test_retry_after_is_read_from_429_and_503_only():
    assert retry_after(httpx.Response(503, headers={"Retry-After": "7"})) == 7
    assert retry_after(httpx.Response(429, headers={"Retry-After": "1.5"})) == 1.5
    assert retry_after(httpx.Response(500, headers={"Retry-After": "7"})) is None
    assert retry_after(httpx.Response(503)) is None
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    later = retry_after(httpx.Response(429, headers={
        "Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}))
    assert later > 3600
