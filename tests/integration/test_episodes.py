"""Episodes through the running service: a burst of flagged events is one episode, named by
each of its verdicts, listed, and announced once when it opens and once when it closes."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from helpers import KEYS, problem, wait_for, webhook_secret
from receivers import Receiver
from standardwebhooks import Webhook
from werkzeug.serving import make_server

from core.config import key_digest
from core.localredis import free_port
from vigil_client import Client
from vigil_client.cli import main

T0 = 1_790_000_000
DAY = 86_400
QUIET = 10  # VIGIL_EPISODE_QUIET's default; the test environment does not set it


class EpisodeDeliveries(Receiver):
    """The webhook receiver, told apart by episode (other tests of the tenant may flag events
    too)."""

    def of(self, episode_ids: set[str]) -> list[tuple[dict[str, str], bytes]]:
        """Deliveries about these episodes."""
        return [(h, b) for h, b in self.received if json.loads(b)["data"]["id"] in episode_ids]

    def wait_episodes(self, episode_ids: set[str], count: int, timeout_s: float = 30) -> list:
        deadline = time.monotonic() + timeout_s
        while len(self.of(episode_ids)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        found = self.of(episode_ids)
        assert len(found) >= count, f"got {len(found)} of {count} episode deliveries"
        return found


@pytest.fixture
def receiver() -> Iterator[EpisodeDeliveries]:
    receiver = EpisodeDeliveries()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def episode_hook(alpha, receiver) -> Iterator[str]:
    """alpha's episode webhook pointed at the receiver; its secret (created as a user does)."""
    secret = webhook_secret(alpha)
    response = alpha.put("/v1/webhooks/episodes", json={"url": receiver.url})
    assert response.status_code == 200, response.text
    assert response.json()["url"] == receiver.url
    assert response.json()["events"] == ["episode.opened", "episode.closed"]
    yield secret
    assert alpha.delete("/v1/webhooks/episodes").status_code == 204


def seed(client, event_type: str, n: int = 600) -> None:
    """History of amount ~ N(100, 10) over three days (every time of day seen twice)."""
    rng = np.random.default_rng(11)
    events = [{"timestamp": T0 + i * 3 * DAY // n, "payload": {"amount": float(a)}}
              for i, a in enumerate(rng.normal(100, 10, n))]
    response = client.post(f"/v1/event-types/{event_type}/history", json={"events": events})
    assert response.status_code == 202, response.text
    assert wait_for(client, response.json()["status_url"])["status"] == "succeeded"


class Clock:
    """Event timestamps after the history, a minute apart."""

    def __init__(self):
        self.ts = T0 + 3 * DAY

    def __call__(self) -> int:
        self.ts += 60
        return self.ts


def events(event_type: str, clock: Clock, amounts: list[float]) -> list[dict]:
    return [{"event_type": event_type, "timestamp": clock(), "payload": {"amount": a}}
            for a in amounts]


def ordinary(n: int) -> list[float]:
    return [100.0 + (i % 5) - 2 for i in range(n)]


def run_job(client, batch: list[dict]) -> list[dict]:
    response = client.post("/v1/jobs", json={"events": batch})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["status_url"])
    assert job["status"] == "succeeded", job
    return job["results"]


def test_bursts_are_episodes_listed_named_and_announced(alpha, beta, event_type, receiver,
                                                        episode_hook):
    seed(alpha, event_type)
    clock = Clock()
    # A burst of three outliers among ordinary events, then nine ordinary ones: still open.
    first = run_job(alpha, events(event_type, clock,
                                  ordinary(5) + [400.0, 900.0, 500.0] + ordinary(QUIET - 1)))
    flagged = [r for r in first if not r["valid"]]
    assert [r["index"] for r in flagged] == [5, 6, 7], first
    e1 = flagged[0]["episode"]
    assert e1.startswith("ep_") and {r["episode"] for r in flagged} == {e1}
    assert all(r["episode"] is None for r in first if r["valid"])
    [listed] = [e for e in alpha.get(f"/v1/event-types/{event_type}/episodes").json()["episodes"]]
    assert listed["id"] == e1 and listed["closed_at"] is None and listed["count"] == 3

    # The tenth valid event, a single event in a job of its own, closes it.
    closing = events(event_type, clock, [101.0])[0]
    response = alpha.post("/v1/events/validate", json=closing)
    assert response.status_code == 202, response.text
    [closer] = wait_for(alpha, response.json()["status_url"])["results"]
    assert closer["valid"] is True and closer["episode"] is None

    # A second burst opens a second episode, closed by the ordinary events after it.
    second = run_job(alpha, events(event_type, clock, [30.0, -200.0] + ordinary(QUIET + 2)))
    e2 = second[0]["episode"]
    assert e2 and e2 != e1 and second[1]["episode"] == e2
    assert all(r["episode"] is None for r in second[2:])

    answer = alpha.get(f"/v1/event-types/{event_type}/episodes")
    assert answer.status_code == 200, answer.text
    newest, oldest = answer.json()["episodes"]
    assert (newest["id"], oldest["id"]) == (e2, e1)
    assert oldest == {
        "id": e1, "event_type": event_type, "opened_at": flagged[0]["timestamp"],
        "last_flagged_at": flagged[2]["timestamp"], "closed_at": closing["timestamp"],
        "count": 3, "rule": "out_of_range",
        "peak": {"code": "out_of_range", "field": "amount", "value": 900.0,
                 "z": flagged[1]["warnings"][0]["z"]}}
    assert newest["count"] == 2 and newest["opened_at"] == second[0]["timestamp"]
    assert newest["closed_at"] == second[2 + QUIET - 1]["timestamp"]
    assert newest["peak"]["value"] == -200.0
    assert alpha.get(f"/v1/event-types/{event_type}/episodes?open=true").json() == {
        "episodes": []}

    # One delivery per transition, in order, each verified with alpha's own secret.
    delivered = receiver.wait_episodes({e1, e2}, 4)
    time.sleep(0.5)
    assert len(receiver.of({e1, e2})) == 4  # once each, not once per flagged event
    bodies = [Webhook(episode_hook).verify(body, headers) | {"_id": headers["webhook-id"]}
              for headers, body in delivered]
    by_id = {b["_id"]: b for b in bodies}
    assert set(by_id) == {f"msg_{e}_{t}" for e in (e1, e2) for t in ("opened", "closed")}
    assert by_id[f"msg_{e1}_opened"]["type"] == "episode.opened"
    assert by_id[f"msg_{e1}_opened"]["data"]["count"] == 1  # as it was when it opened
    assert by_id[f"msg_{e1}_closed"]["type"] == "episode.closed"
    assert by_id[f"msg_{e1}_closed"]["data"] == oldest
    assert by_id[f"msg_{e2}_closed"]["data"] == newest
    order = [b["_id"] for b in bodies if b["data"]["id"] == e1]
    assert order == [f"msg_{e1}_opened", f"msg_{e1}_closed"]

    # Another tenant sees none of it.
    problem(beta.get(f"/v1/event-types/{event_type}/episodes"), 404)


def test_an_open_episode_is_listed_with_open_true_by_the_client_and_cli(alpha, api_url,
                                                                        event_type, capsys):
    seed(alpha, event_type, n=300)
    clock = Clock()
    results = run_job(alpha, events(event_type, clock, ordinary(3) + [700.0] + ordinary(2)))
    episode = results[3]["episode"]
    assert episode
    [listed] = alpha.get(f"/v1/event-types/{event_type}/episodes?open=true").json()["episodes"]
    assert listed["id"] == episode and listed["closed_at"] is None and listed["count"] == 1
    with Client(api_url, KEYS["alpha"]) as client:
        assert client.episodes(event_type, open_only=True) == [listed]
    assert main(["--url", api_url, "--key", KEYS["alpha"], "episodes", event_type, "--open"]) == 0
    printed = capsys.readouterr().out
    assert episode in printed and "open" in printed and "out_of_range" in printed


def test_unknown_type_is_404(alpha, event_type):
    body = problem(alpha.get(f"/v1/event-types/{event_type}/episodes"), 404)
    assert event_type in body["detail"]


def test_episode_webhook_url_is_checked(alpha):
    webhook_secret(alpha)
    for bad in ("not a url", "ftp://example.com/x", "http://10.1.2.3/hook"):
        problem(alpha.put("/v1/webhooks/episodes", json={"url": bad}), 422)
    problem(alpha.put("/v1/webhooks/episodes", json={}), 422)


def test_episode_webhook_needs_a_secret_to_sign_with(settings):
    """A tenant without a webhook secret (several tenants: the env secret signs for none) is
    told to create one first (409), and can then register."""
    from api import create_app

    key = "key-episodes-nosecret"
    changed = dataclasses.replace(settings,
                                  api_keys={**settings.api_keys, key_digest(key): "gamma"})
    server = make_server("127.0.0.1", free_port(), create_app(changed), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as gamma:
            url = "http://127.0.0.1:9/hook"
            body = problem(gamma.put("/v1/webhooks/episodes", json={"url": url}), 409)
            assert "POST /v1/webhooks/secret" in body["detail"]
            problem(gamma.get("/v1/webhooks/episodes"), 404)
            webhook_secret(gamma)
            assert gamma.put("/v1/webhooks/episodes", json={"url": url}).status_code == 200
            assert gamma.get("/v1/webhooks/episodes").json()["url"] == url
            assert gamma.delete("/v1/webhooks/episodes").status_code == 204
            problem(gamma.get("/v1/webhooks/episodes"), 404)
    finally:
        server.shutdown()


def test_a_late_second_delivery_of_a_batch_changes_no_episode(monkeypatch, redis_server,
                                                               settings, event_type):
    """Two deliveries of one job both judged from the same episode state (a redelivery while
    the first still ran): the one that merges second finds the batch merged and writes none of
    its episode changes, even after a later job moved the episode on. In process, against the
    test Redis, as tests/integration/test_counted_once.py does."""
    from tasks import episodes, validate

    r, tenant = redis_server.client(), f"ep{uuid.uuid4().hex[:8]}"
    merges = []
    real_merge = validate.merge_per_job
    monkeypatch.setattr(validate, "merge_per_job",
                        lambda *args: (merges.append(args), real_merge(*args))[1])

    def job(*values: float, start: int) -> dict[str, list[dict]]:
        return {uuid.uuid4().hex: [{"event_type": event_type, "timestamp": T0 + start + i,
                                    "payload": {"x": v}} for i, v in enumerate(values)]}

    validate.judge_jobs(r, settings, tenant, job(*(100.0 + i % 10 for i in range(40)), start=0))
    first = validate.judge_jobs(r, settings, tenant, job(500.0, start=100))
    [opened] = [result["episode"] for results in first.values() for result in results]
    validate.judge_jobs(r, settings, tenant, job(600.0, start=101))
    [listed] = episodes.list_episodes(r, tenant, event_type)
    assert listed["id"] == opened and listed["count"] == 2

    real_merge(*merges[1])  # the first job's other delivery, merging late
    assert episodes.list_episodes(r, tenant, event_type) == [listed]
    assert episodes.load_state(r, tenant, event_type).open["count"] == 2
