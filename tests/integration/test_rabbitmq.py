"""RabbitMQ as the broker, with classic and with quorum queues: the API enqueues and the
workers consume over AMQP; Redis stays the store. This machine (and CI) runs RabbitMQ on
127.0.0.1:5672; a developer machine without one skips these tests outside CI, and CI fails
them rather than skip them. The quorum test runs in a virtual host of its own (made with
rabbitmqctl, deleted after), since a queue cannot change its type in place."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import uuid
from dataclasses import replace

import pytest
from helpers import client_for, wait_for, wait_until
from receivers import Receiver
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


def need_rabbitmq() -> None:
    if not rabbitmq_answers():
        if os.environ.get("CI"):
            pytest.fail("CI must have RabbitMQ on 127.0.0.1:5672 for the broker option")
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 (CI requires it)")


def serve_stack(vigil_env, settings, log_dir, roles, **env):
    """The API and workers of ``roles`` with these settings and extra environment; yields
    the API's URL."""
    from api import create_app

    workers = [Worker({**vigil_env, **env}, log_dir / f"{role}.log", role=role)
               for role in roles]
    for worker in workers:
        worker.start(settings)
    server = make_server("127.0.0.1", free_port(), create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        for worker in workers:
            worker.stop()


@pytest.fixture(scope="module")
def amqp_stack(vigil_env, settings, tmp_path_factory):
    need_rabbitmq()
    yield from serve_stack(vigil_env, replace(settings, broker_url=AMQP_URL),
                           tmp_path_factory.mktemp("amqp"), ("worker", "events"),
                           VIGIL_BROKER_URL=AMQP_URL)


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def quorum_vhost():
    """A virtual host of its own, guest allowed in it; deleted with its queues after."""
    need_rabbitmq()
    assert shutil.which("rabbitmqctl"), "the quorum-queue test makes its vhost with rabbitmqctl"
    vhost = f"vigil-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield vhost
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="module")
def quorum_stack(vigil_env, settings, tmp_path_factory, quorum_vhost):
    url = f"amqp://guest:guest@127.0.0.1:5672/{quorum_vhost}"
    yield from serve_stack(
        vigil_env, replace(settings, broker_url=url, broker_queue_type="quorum"),
        tmp_path_factory.mktemp("quorum"), ("worker", "events", "webhooks"),
        VIGIL_BROKER_URL=url, VIGIL_BROKER_QUEUE_TYPE="quorum")


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


def test_quorum_queues_carry_jobs_events_and_a_delayed_webhook_retry(quorum_stack, quorum_vhost,
                                                                   event_type):
    receiver = Receiver()
    receiver.statuses = [503]  # the first delivery fails
    try:
        with client_for(quorum_stack, "alpha") as client:
            assert client.post("/v1/webhooks/secret").status_code == 201
            history = [{"timestamp": 1_790_000_000 + i, "payload": {"x": float(i % 10)}}
                       for i in range(60)]
            job = wait_for(client, client.post(f"/v1/event-types/{event_type}/history",
                                               json={"events": history}).json()["status_url"])
            assert job["status"] == "succeeded"
            single = wait_for(client, client.post("/v1/events/validate", json={
                "event_type": event_type, "timestamp": 1_790_000_100,
                "payload": {"x": 500.0}}).json()["status_url"])
            assert single["results"][0]["valid"] is False
            # The first delivery fails; its retry waits in RabbitMQ's delayed-delivery
            # queues (a countdown), then arrives.
            batch = client.post("/v1/jobs", json={
                "events": [{"event_type": event_type, "timestamp": 1_790_000_200,
                            "payload": {"x": 3.0}}],
                "callback_url": receiver.url})
            done = wait_for(client, batch.json()["status_url"])
            assert done["status"] == "succeeded"

            def delivered() -> dict | None:
                hook = client.get(batch.json()["status_url"]).json().get("webhook") or {}
                return hook if hook.get("status") == "delivered" else None

            webhook = wait_until(delivered, timeout_s=60)
            assert webhook and webhook["attempts"] == 2, webhook
    finally:
        receiver.server.shutdown()
    queues = dict(line.split("\t") for line in rabbitmqctl(
        "list_queues", "-p", quorum_vhost, "name", "type").strip().splitlines()[1:])
    assert {queues[name] for name in ("celery", "events", "webhooks")} == {"quorum"}, queues
