"""api/fast_submit.py answers single events as the Flask view would, and leaves the rest to it.

Each request goes once to the whole app (the fast path in front) and once to the Flask app
behind it (app.wsgi_app.app), against the same Redis and workers: what a client sees must not
depend on which of the two answered.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from helpers import EVENT, KEYS
from werkzeug.test import Client

from api import create_app
from api.fast_submit import FastSubmit
from tasks.store import jobs

AUTH = {"Authorization": f"Bearer {KEYS['alpha']}"}


@pytest.fixture(scope="module")
def app(settings):
    return create_app(settings)


@pytest.fixture(scope="module")
def both(app) -> dict[str, Client]:
    assert isinstance(app.wsgi_app, FastSubmit)
    return {"fast path": Client(app), "flask": Client(app.wsgi_app.app)}


def post(client: Client, body: bytes | dict, **headers: str):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return client.post("/v1/events/validate", data=data,
                       headers={"Content-Type": "application/json", **AUTH, **headers})


def verdict(client: Client, status_url: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(status_url, headers=AUTH).get_json()
        if job["status"] == "succeeded":
            return job
        time.sleep(0.05)
    raise AssertionError(f"{status_url} did not finish: {job}")


@pytest.fixture(scope="module")
def both_task_per_event(settings) -> dict[str, Client]:
    """VIGIL_MICRO_BATCH=off: a task per event (the benchmark's reference design (a))."""
    app = create_app(dataclasses.replace(settings, micro_batch=False))
    return {"fast path": Client(app), "flask": Client(app.wsgi_app.app)}


@pytest.mark.parametrize("mode", ["micro-batched", "task per event"])
def test_an_accepted_event_gets_the_same_answer_and_verdict(request, mode, worker, event_type):
    both = request.getfixturevalue("both" if mode == "micro-batched" else "both_task_per_event")
    fast_path = both["fast path"].application.wsgi_app
    passed_on = []  # requests the fast path handed to Flask
    flask_app = fast_path.app
    fast_path.app = lambda environ, start_response: (passed_on.append(environ["PATH_INFO"]),
                                                     flask_app(environ, start_response))[1]
    try:
        # One event type each: the first verdict's event joins its type's history.
        answers = {name: post(client, {**EVENT, "event_type": f"{event_type}-{k}",
                                       "event_id": "e-1"})
                   for k, (name, client) in enumerate(both.items())}
    finally:
        fast_path.app = flask_app
    assert passed_on == [], "the fast path passed an event it should accept on to Flask"
    jobs = {}
    for name, response in answers.items():
        assert response.status_code == 202, (name, response.text)
        assert response.mimetype == "application/json", name
        body = response.get_json()
        assert set(body) == {"job_id", "status", "status_url", "eta_s"}, name
        assert isinstance(body["eta_s"], float) and body["eta_s"] > 0, name
        assert 1 <= int(response.headers["Retry-After"]) <= 30, name
        assert body["status"] == "queued", name
        assert body["status_url"] == f"/v1/jobs/{body['job_id']}", name
        assert response.headers["Location"] == body["status_url"], name
        jobs[name] = verdict(both["flask"], body["status_url"])
    fast, flask = jobs["fast path"], jobs["flask"]
    assert fast["job_id"] != flask["job_id"]
    for k, job in enumerate((fast, flask)):  # timestamps, ids, types differ; verdicts must not
        assert job["event_type"] == job["results"][0]["event_type"] == f"{event_type}-{k}"
        del job["job_id"], job["created_at"], job["started_at"], job["finished_at"]
        del job["results"][0]["processed_at"], job["results"][0]["event_type"], job["event_type"]
    assert fast == flask


@pytest.mark.parametrize("case, body, headers, status", [
    ("malformed JSON", b'{"event_type": ', {}, 400),
    ("blank body", b"   ", {}, 400),
    ("not JSON", b"a,b", {"Content-Type": "text/csv"}, 415),
    ("invalid fields", {"event_type": "bad type!", "timestamp": "soon", "payload": {}}, {}, 422),
    ("not an object", b"[1, 2]", {}, 422),
    ("unknown key", b"{}", {"Authorization": "Bearer nope"}, 401),
    ("no key", b"{}", {"Authorization": ""}, 401),
])
def test_what_the_fast_path_cannot_accept_gets_flasks_answer(both, case, body, headers, status):
    answers = [post(client, body, **headers) for client in both.values()]
    for response in answers:
        assert response.status_code == status, (case, response.text)
        assert response.mimetype == "application/problem+json", case
    # The fast path read the body before passing the request on: Flask read it again, so the
    # field messages are about the event, not about an empty body.
    assert answers[0].get_json() == answers[1].get_json(), case
    assert answers[0].headers.get("WWW-Authenticate") == answers[1].headers.get("WWW-Authenticate")


@pytest.mark.parametrize("micro_batch", [True, False], ids=["micro-batched", "task per event"])
def test_over_the_rate_limit_the_fast_path_answers_429_like_flask_and_stores_nothing(
        settings, redis_server, worker, event_type, micro_batch):
    client = Client(create_app(dataclasses.replace(settings, rate_limit=3,
                                                   micro_batch=micro_batch)))
    r = redis_server.client()
    newest_before = jobs.recent_job_ids(r, "alpha", 1)
    time.sleep(1.01 - time.time() % 1)  # a fresh window: earlier tests' requests counted in theirs
    statuses = [post(client, {**EVENT, "event_type": event_type}) for _ in range(12)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and {r.status_code for r in statuses} == {202, 429}, \
        [r.status_code for r in statuses]
    assert limited[0].mimetype == "application/problem+json"
    assert "3 requests per second" in limited[0].get_json()["detail"]
    assert limited[0].headers["Retry-After"] == "1"
    accepted = [r.get_json()["job_id"] for r in statuses if r.status_code == 202]
    assert len(accepted) <= 3 * 2  # the posts may span two one-second windows
    # The tenant's newest jobs are the accepted ones and nothing else: a refused event was
    # not stored (the count and the store are one script call on the fast path).
    assert jobs.recent_job_ids(r, "alpha", len(accepted) + 1) == \
        accepted[::-1] + newest_before


def test_an_idempotent_submission_is_kept_by_the_flask_view(both, worker, event_type):
    event = {**EVENT, "event_type": event_type}
    key = {"Idempotency-Key": f"k-{event_type}"}
    first = post(both["fast path"], event, **key)
    again = post(both["fast path"], event, **key)
    assert first.status_code == again.status_code == 202
    assert first.get_json()["job_id"] == again.get_json()["job_id"]
