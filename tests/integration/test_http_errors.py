"""Auth, tenant isolation and bad input: every answer is JSON that says what is wrong."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import httpx
import pytest
from helpers import EVENT, client_for, problem, wait_for
from werkzeug.serving import make_server

from core.localredis import free_port


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic a2V5OnNlY3JldA=="},
                                     {"Authorization": "Bearer"}])
def test_missing_or_unknown_key_is_401(anonymous, headers):
    for method, path in [("POST", "/v1/events/validate"), ("GET", "/v1/jobs"),
                         ("GET", "/v1/event-types"), ("GET", "/v1/jobs/" + "0" * 32)]:
        response = anonymous.request(method, path, json=EVENT, headers=headers)
        body = problem(response, 401)
        assert "Bearer" in body["detail"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_tenants_never_see_each_others_jobs_baselines_or_models(alpha, beta, event_type):
    events = [{"timestamp": 1_790_000_000 + i, "payload": {"x": float(i % 7)}} for i in range(60)]
    response = alpha.post(f"/v1/event-types/{event_type}/history", json={"events": events})
    job_id = response.json()["job_id"]
    assert wait_for(alpha, f"/v1/jobs/{job_id}")["status"] == "succeeded"

    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/results.csv",
                 f"/v1/event-types/{event_type}/baseline", f"/v1/event-types/{event_type}/model"):
        assert alpha.get(path).status_code in (200, 409)  # results.csv: a history job has none
        problem(beta.get(path), 404)
    problem(beta.delete(f"/v1/jobs/{job_id}"), 404)
    assert event_type not in {t["event_type"] for t in beta.get("/v1/event-types").json()[
        "event_types"]}
    assert job_id not in {j["job_id"] for j in beta.get("/v1/jobs").json()["jobs"]}
    # The same type name under beta starts from nothing.
    job = wait_for(beta, beta.post("/v1/events/validate", json={
        **EVENT, "event_type": event_type}).json()["status_url"])
    assert job["results"][0]["notes"][0]["code"] == "insufficient_history"


def test_malformed_json_is_400(alpha):
    for body in (b"{", b'{"event_type": }', b"\xff\xfe", b"[1, 2", b"   ",
                 b'{"event_type": "a", "payload": {"x": NaN}, "timestamp": 1}',
                 b'{"event_type": "a", "payload": {"x": 1e999}, "timestamp": 1}',
                 b"[" * 100_000):
        body_json = problem(alpha.post("/v1/events/validate", content=body,
                                       headers={"Content-Type": "application/json"}), 400)
        assert body_json["title"] == "Bad Request"


def test_wrong_content_type_is_415(alpha):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/csv"):
        body = problem(alpha.post("/v1/events/validate", content=b"x",
                                  headers={"Content-Type": content_type}), 415)
        assert "application/json" in body["detail"]
    body = problem(alpha.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/xml"}), 415)
    assert "text/csv" in body["detail"]


@pytest.mark.parametrize("event, field", [
    ({"payload": {}, "timestamp": 1}, "event_type"),
    ({**EVENT, "event_type": ""}, "event_type"),
    ({**EVENT, "event_type": "has space"}, "event_type"),
    ({**EVENT, "event_type": "x" * 101}, "event_type"),
    ({**EVENT, "event_type": "ok\n"}, "event_type"),
    ({**EVENT, "event_type": 5}, "event_type"),
    ({**EVENT, "payload": [1, 2]}, "payload"),
    ({**EVENT, "payload": "text"}, "payload"),
    ({**EVENT, "payload": None}, "payload"),
    ({**EVENT, "payload": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}},
     "payload"),
    ({**EVENT, "payload": {f"k{i}": i for i in range(501)}}, "payload"),
    ({**EVENT, "payload": {"": 1}}, "payload"),
    ({**EVENT, "payload": {"s": "x" * 10_001}}, "payload"),
    ({**EVENT, "timestamp": "yesterday"}, "timestamp"),
    ({**EVENT, "timestamp": 1_790_000_000_000}, "timestamp"),
    ({**EVENT, "timestamp": -1}, "timestamp"),
    ({**EVENT, "timestamp": True}, "timestamp"),
    ({**EVENT, "timestamp": None}, "timestamp"),
    ({**EVENT, "timestamp": [1]}, "timestamp"),
    ({**EVENT, "event_id": ""}, "event_id"),
    ({**EVENT, "unexpected": 1}, "unexpected"),
])
def test_schema_errors_are_422_per_field(alpha, event, field):
    body = problem(alpha.post("/v1/events/validate", json=event), 422)
    assert field in body["errors"]["json"], body
    messages = body["errors"]["json"][field]
    # A list of sentences for the field, or per-key messages for a nested value.
    assert isinstance(messages, dict) or (messages and all(isinstance(m, str) for m in messages))


@pytest.mark.parametrize("body, field", [
    ({}, "events"), ({"events": []}, "events"), ({"events": "x"}, "events"),
    ({"events": [EVENT], "callback_url": "not a url"}, "callback_url"),
    ({"events": [EVENT], "callback_url": "ftp://example.com/x"}, "callback_url"),
    ({"events": [EVENT, {"payload": {}}]}, "events"),
    ([EVENT], "_schema"),
])
def test_job_schema_errors_are_422(alpha, body, field):
    errors = problem(alpha.post("/v1/jobs", json=body), 422)["errors"]["json"]
    assert field in errors, errors


def test_bad_csv(alpha):
    csv = {"Content-Type": "text/csv"}
    problem(alpha.post("/v1/jobs", content=b"", headers=csv), 400)
    problem(alpha.post("/v1/jobs", content=b'a,b\n"unterminated,1\n', headers=csv), 400)
    body = problem(alpha.post("/v1/jobs", content=b"event_type,x\na,1\n", headers=csv), 422)
    assert "timestamp" in body["errors"]["csv"]["columns"][0]
    body = problem(alpha.post("/v1/jobs", content=b"event_type,timestamp,x\nbad type,1,2\n",
                              headers=csv), 422)
    assert "event_type" in body["errors"]["json"]["events"]["0"]
    body = problem(alpha.post("/v1/event-types/t/history", content=b"x\n1\n", headers=csv), 422)


def test_unknown_things_are_404(alpha):
    problem(alpha.get("/v1/jobs/" + "0" * 32), 404)
    problem(alpha.get("/v1/jobs/not-a-job-id"), 404)
    problem(alpha.get("/v1/jobs/" + "0" * 32 + "/results.csv"), 404)
    problem(alpha.get("/v1/event-types/never-seen/baseline"), 404)
    problem(alpha.get("/v1/event-types/never-seen/model"), 404)
    problem(alpha.get("/v2/anything"), 404)
    problem(alpha.delete("/v1/event-types"), 405)
    problem(alpha.get("/v1/event-types/bad%20name/baseline"), 422)


def test_limits(alpha, settings):
    too_many = {"events": [EVENT] * (settings.max_events_per_job + 1)}
    body = problem(alpha.post("/v1/jobs", json=too_many), 422)
    assert "At most" in body["errors"]["json"]["events"][0]
    huge = b'{"events": [' + b" " * settings.max_body_bytes + b"]}"
    problem(alpha.post("/v1/jobs", content=huge, headers={"Content-Type": "application/json"}),
            413)


CSV = {"Content-Type": "text/csv"}


def too_many(response, limit: int, got: str) -> None:
    body = problem(response, 422)
    assert body["detail"] == "Too many events", body
    assert body["errors"]["json"]["events"] == [
        f"At most {limit} events per job; got {got}. Split the submission."]


@pytest.mark.parametrize("path, header", [("/v1/jobs", b"event_type,timestamp,x\n"),
                                          ("/v1/event-types/t/history", b"timestamp,x\n")])
def test_an_oversized_csv_is_refused_before_it_is_parsed(alpha, settings, path, header):
    """170,000 rows in 1 MB cost 3.1 s of API CPU and +137 MB when pandas read them all before
    the limit was checked. Now the rows are counted first: the proof without a clock is a last
    row that pandas refuses (5 fields under a 3-column header). Parsed whole, this body
    answers that 400; refused first, it answers the 422 and no row is ever parsed."""
    row = b"t,1790000000,1\n" if path == "/v1/jobs" else b"1790000000,1\n"
    body = header + row * 170_000 + b"t,1790000000,1,2,3\n"
    assert len(body) > 1_000_000
    too_many(alpha.post(path, content=body, headers=CSV), settings.max_events_per_job,
             f"more than {settings.max_events_per_job}")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/event-types/t/history"])
def test_an_oversized_json_batch_is_refused_before_its_events_are_built(alpha, settings, path):
    # The last event has no timestamp: built by marshmallow, the answer would be that
    # per-event 422 (errors.json.events.<index>), not the limit's.
    events = [EVENT] * settings.max_events_per_job + [{"event_type": "t", "payload": {}}]
    too_many(alpha.post(path, json={"events": events}), settings.max_events_per_job,
             str(settings.max_events_per_job + 1))


@pytest.fixture
def limited(settings, worker) -> Iterator[httpx.Client]:
    """An alpha client of an API instance (same Redis and workers) taking 3 events per job."""
    from api import create_app

    app = create_app(dataclasses.replace(settings, max_events_per_job=3))
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with client_for(f"http://127.0.0.1:{server.server_port}", "alpha") as client:
        yield client
    server.shutdown()


def test_line_breaks_in_quoted_cells_and_blank_lines_are_not_rows(limited, event_type):
    # 3 events in 9 lines: the line count alone would refuse them.
    rows = b"".join(b'%s,1790000000,"line 1\nline 2\r\nline 3",%d\n' % (event_type.encode(), i)
                    for i in range(3))
    body = b"event_type,timestamp,note,x\n" + rows + b"\n\r\n\n"
    response = limited.post("/v1/jobs", content=body, headers=CSV)
    assert response.status_code == 202, response.text
    job = wait_for(limited, response.json()["status_url"])
    assert job["status"] == "succeeded" and job["summary"]["events"] == 3, job
    too_many(limited.post("/v1/jobs", content=body + rows[: len(rows) // 3], headers=CSV), 3,
             "more than 3")
    # Lone CRs end rows too (pandas reads them so): 4 rows, no LF at all.
    too_many(limited.post("/v1/jobs", content=b"event_type,timestamp\r" + b"t,1790000000\r" * 4,
                          headers=CSV), 3, "more than 3")
    json_events = [{**EVENT, "event_type": event_type}] * 3
    assert limited.post("/v1/jobs", json={"events": json_events}).status_code == 202
    too_many(limited.post("/v1/jobs", json={"events": json_events * 2}), 3, "6")


def test_cancel(alpha, event_type):
    job_id = alpha.post("/v1/events/validate", json={**EVENT, "event_type": event_type}).json()[
        "job_id"]
    wait_for(alpha, f"/v1/jobs/{job_id}")
    body = problem(alpha.delete(f"/v1/jobs/{job_id}"), 409)
    assert "already succeeded" in body["detail"]


def test_docs_and_health_need_no_key(anonymous):
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] >= 1
    spec = anonymous.get("/openapi.json").json()
    assert {"/v1/events/validate", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/results.csv",
            "/v1/event-types", "/v1/event-types/{event_type}/baseline",
            "/v1/event-types/{event_type}/history", "/v1/event-types/{event_type}/model",
            "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    html = anonymous.get("/docs")
    assets = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css")
    assert html.status_code == 200 and all(f"/assets/swagger-ui/{a}" in html.text for a in assets)
    assert "cdn" not in html.text.lower()
    for asset in assets:
        assert anonymous.get(f"/assets/swagger-ui/{asset}").status_code == 200
    # Swagger UI 5 (OpenAPI 3.1 documents), as the pinned flask-swagger-ui ships it.
    assert anonymous.get("/assets/swagger-ui/VERSION").text.startswith("v5.")
    assert anonymous.get("/redoc").status_code == 404  # dropped with drf-spectacular-sidecar
    assert "python_info" in anonymous.get("/metrics").text


def _all_messages(errors) -> list[str]:
    """Every message of a problem's ``errors``, however deeply nested (events.0.payload)."""
    if isinstance(errors, str):
        return [errors]
    values = errors.values() if isinstance(errors, dict) else errors
    return [message for value in values for message in _all_messages(value)]


def _refused_every_way(alpha, event_type: str, payload: dict, csv: bytes | None) -> list[str]:
    """Send the payload as a single event, a JSON job, a history import (and, given the
    CSV columns and row of a flat payload, as CSV job and history); each must be a 422.
    Returns the message of each answer naming the payload's problem."""
    ts = 1_790_000_000
    event = {"event_type": event_type, "timestamp": ts, "payload": payload}
    answers = [alpha.post("/v1/events/validate", json=event),
               alpha.post("/v1/jobs", json={"events": [event, event]}),
               alpha.post(f"/v1/event-types/{event_type}/history",
                          json={"events": [{"timestamp": ts, "payload": payload}] * 2})]
    if csv is not None:
        header, row = csv.split(b"\n", 1)
        text = {"Content-Type": "text/csv"}
        answers += [alpha.post("/v1/jobs", headers=text,
                               content=b"event_type,timestamp," + header + b"\n"
                               + (event_type.encode() + b",%d," % ts + row) * 2),
                    alpha.post(f"/v1/event-types/{event_type}/history", headers=text,
                               content=b"timestamp," + header + b"\n" + (b"%d," % ts + row) * 2)]
    messages = []
    for answer in answers:
        found = _all_messages(problem(answer, 422)["errors"])
        assert found, answer.text
        messages.append(" ".join(found))
    return messages


@pytest.mark.parametrize("payload, field, csv", [
    ({"@time_of_day": {"sin": 0.5}, "amount": 3}, "@time_of_day.sin", None),
    ({"@delta.x": 1, "x": 2}, "@delta.x", b"@delta.x,x\n1,2\n"),
    ({"cart": {"total": 5}, "@time_of_day.cos": 0.1}, "@time_of_day.cos",
     b"cart.total,@time_of_day.cos\n5,0.1\n"),
])
def test_payload_fields_named_like_derived_features_are_422(alpha, event_type, payload, field,
                                                            csv):
    """'@...' is Vigil's namespace (@time_of_day.sin, @delta.<field>): a payload field there
    made a second column of that name, and scoring then failed for the whole micro-batch."""
    for message in _refused_every_way(alpha, event_type, payload, csv):
        assert field in message and "reserved for Vigil's derived features" in message, message


def test_strings_under_at_keys_are_still_accepted(alpha, event_type):
    """Only numeric fields are reserved: JSON-LD style '@type' strings are carried as before."""
    response = alpha.post("/v1/events/validate", json={
        "event_type": event_type, "timestamp": 1_790_000_000,
        "payload": {"@type": "Order", "@context": {"schema": "https://schema.org"}, "x": 1}})
    assert response.status_code == 202, response.text


def test_two_keys_naming_one_field_are_422(alpha, event_type):
    """{"a.b": 1, "a": {"b": 2}}: both are the field a.b, and one value silently replaced
    the other."""
    for payload, field in (({"a.b": 1, "a": {"b": 2}}, "a.b"),
                           ({"cart": {"items.n": 1}, "cart.items": {"n": 2}}, "cart.items.n")):
        for message in _refused_every_way(alpha, event_type, payload, None):
            assert f"field {field}" in message and "rename one" in message, message


@pytest.mark.parametrize("payload, field, csv", [
    ({"x": 1e308}, "x", b"x\n1e308\n"),
    ({"x": 1, "meter": {"reading": -1e101}}, "meter.reading", b"x,meter.reading\n1,-1e101\n"),
])
def test_values_beyond_the_mergeable_range_are_422_naming_field_and_limit(
        alpha, event_type, payload, field, csv):
    """Two 1e308 values once made the all-time baseline inf and the recent one nan, and the
    field was never checked again; the history import checked nothing."""
    for message in _refused_every_way(alpha, event_type, payload, csv):
        assert f"{field} is out of range" in message and "1e+100" in message, message
