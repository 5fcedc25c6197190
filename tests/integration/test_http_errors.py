"""Auth, tenant isolation and bad input: every answer is JSON that says what is wrong."""

from __future__ import annotations

import pytest
from helpers import EVENT, problem, wait_for


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
    for page, asset in (("/docs", "/assets/swagger-ui/swagger-ui-bundle.js"),
                        ("/redoc", "/assets/redoc/redoc.standalone.js")):
        html = anonymous.get(page)
        assert html.status_code == 200 and asset in html.text
        assert "cdn" not in html.text.lower()
        assert anonymous.get(asset).status_code == 200
    assert "python_info" in anonymous.get("/metrics").text
