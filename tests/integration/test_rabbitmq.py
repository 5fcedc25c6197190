"""RabbitMQ as the broker: the API enqueues and a worker consumes over AMQP; Redis stays
the store. This machine (and CI) runs RabbitMQ on 127.0.0.1:5672; a developer machine
without one skips this test outside CI, and CI fails it rather than skip it."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import replace

import pytest
from helpers import client_for, wait_for
from werkzeug.serving import make_server
from workers import Worker

from core.localredis import free_port

AMQP_URL = os.environ.get("VIGIL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def amqp_stack(vigil_env, settings, tmp_path_factory):
    if not rabbitmq_answers():
        if os.environ.get("CI"):
            pytest.fail("CI must have RabbitMQ on 127.0.0.1:5672 for the broker option")
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 (CI requires it)")
    from api import create_app

    amqp_settings = replace(settings, broker_url=AMQP_URL)
    env = {**vigil_env, "VIGIL_BROKER_URL": AMQP_URL}
    workers = [Worker(env, tmp_path_factory.mktemp("amqp") / f"{role}.log", role=role)
               for role in ("worker", "events")]
    for worker in workers:
        worker.start(amqp_settings)
    server = make_server("127.0.0.1", free_port(), create_app(amqp_settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    for worker in workers:
        worker.stop()


def test_jobs_and_single_events_flow_through_rabbitmq(amqp_stack, event_type):
    with client_for(amqp_stack, "alpha") as client:
        history = [{"timestamp": 1_790_000_000 + i, "payload": {"x": float(i % 10)}}
                   for i in range(60)]
        job = wait_for(client, client.post(f"/v1/event-types/{event_type}/history",
                                           json={"events": history}).json()["status_url"])
        assert job["status"] == "succeeded" and job["summary"]["model"]["version"] == 1
        single = wait_for(client, client.post("/v1/events/validate", json={
            "event_type": event_type, "timestamp": 1_790_000_100,
            "payload": {"x": 500.0}}).json()["status_url"])
        assert single["results"][0]["valid"] is False
        assert client.get("/readyz").json()["workers"] >= 2
