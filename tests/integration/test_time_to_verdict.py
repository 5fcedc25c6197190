"""vigil_time_to_verdict_seconds{kind}: observed by the workers where jobs finish, reaching the
API's /metrics (shared multiprocess directory, as under `make run`), and shown on /ui."""

from __future__ import annotations

import time

from helpers import wait_for
from prometheus_client.parser import text_string_to_metric_families

from core.quantiles import histogram_buckets

T0 = 1_790_000_000
NAME = "vigil_time_to_verdict_seconds"


def counts(client) -> dict[str, float]:
    """{kind: observations} of the histogram, from /metrics as Prometheus would read it."""
    text = client.get("/metrics").text
    families = list(text_string_to_metric_families(text))
    return {kind: buckets[-1][1] for kind, buckets in histogram_buckets(families, NAME, "kind").items()}


def test_time_to_verdict_is_counted_per_kind_and_shown_on_ui(alpha, event_type):
    before = counts(alpha)
    singles = [alpha.post("/v1/events/validate", json={
        "event_type": event_type, "timestamp": T0 + i, "payload": {"amount": 1.0 + i}})
        for i in range(3)]
    batch = alpha.post("/v1/jobs", json={"events": [
        {"event_type": event_type, "timestamp": T0 + 10 + i, "payload": {"amount": 2.0}}
        for i in range(4)]})
    for response in [*singles, batch]:
        assert response.status_code == 202, response.text
        assert wait_for(alpha, response.json()["status_url"])["status"] == "succeeded"

    # The worker observes right after storing the verdicts: a client may see the job finished
    # a moment before the histogram has it.
    deadline = time.monotonic() + 10
    while True:
        after = counts(alpha)
        grown = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in ("single", "batch")}
        if (grown["single"] >= 3 and grown["batch"] >= 1) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert grown["single"] >= 3 and grown["batch"] >= 1, grown

    page = alpha.get("/ui")
    assert page.status_code == 200
    for kind in ("single", "batch"):
        row = page.text.split(f'<tr class="verdict-time" data-kind="{kind}">')[1].split("</tr>")[0]
        assert "n/a" not in row and (" ms<" in row or " s<" in row), row
