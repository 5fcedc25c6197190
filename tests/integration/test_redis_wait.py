"""VIGIL_REDIS_WAIT_REPLICAS: a submission is answered 202 only once a replica has it.

What a user relies on: with the option on, a 202 means the job is on the primary's replica
too (a failover that promotes it keeps the job); while no replica acknowledges, the API says
so with a 503 naming the job, which is stored and queued on the primary; a retry with the
same Idempotency-Key gets that job, never a second one, and 202 once a replica has it.

A private primary and replica (redis-server --replicaof) on free ports; the API in process
(werkzeug's client, the fast path in front). No worker runs: jobs stay queued, so what the
replica has can be read as the API left it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import EVENT, KEYS
from werkzeug.test import Client

from api import create_app
from core import keys
from core.config import Settings
from core.localredis import free_port, start_redis
from core.localreplicas import start_replica
from tasks.store import jobs

TENANT = "alpha"
AUTH = {"Authorization": f"Bearer {KEYS[TENANT]}", "Content-Type": "application/json"}


class Pair:
    """A primary and its replica, the replica stoppable and startable again on its port."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.primary_port, self.replica_port = free_port(), free_port()
        self.primary = start_redis(self.primary_port, tmp / "primary")
        self.replica = self.start_replica()

    def start_replica(self):
        self.replica = start_replica(self.replica_port, self.tmp / "replica", self.primary_port)
        return self.replica

    def stop_replica(self) -> None:
        self.replica.send_signal(signal.SIGKILL)
        self.replica.wait(timeout=10)

    def close(self) -> None:
        for proc in (self.primary, self.replica):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[Pair]:
    found = Pair(tmp_path_factory.mktemp("wait"))
    yield found
    found.close()


@pytest.fixture(scope="module")
def api(pair) -> Client:
    settings = Settings.from_env({
        "REDIS_URL": f"redis://127.0.0.1:{pair.primary_port}/0",
        "VIGIL_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
        "VIGIL_REDIS_WAIT_REPLICAS": "1", "VIGIL_REDIS_WAIT_TIMEOUT_MS": "300",
        "VIGIL_RATE_LIMIT": "0"})
    return Client(create_app(settings))


def replica_client(pair: Pair) -> redis.Redis:
    return redis.Redis(port=pair.replica_port, socket_timeout=5)


def single(api: Client, **headers: str):
    return api.post("/v1/events/validate", data=json.dumps(EVENT), headers={**AUTH, **headers})


def batch(api: Client, **headers: str):
    return api.post("/v1/jobs", data=json.dumps({"events": [EVENT, EVENT]}),
                    headers={**AUTH, **headers})


def not_replicated(response) -> str:
    """A 503 problem saying the job is stored on the primary; its job id."""
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    body = response.get_json()
    assert body["status"] == 503 and body["job_id"] in body["detail"]
    assert "stored on the primary and queued" in body["detail"], body
    assert "0 of the 1 replicas" in body["detail"], body
    return body["job_id"]


def test_with_a_replica_a_202_means_the_replica_has_the_job(pair, api):
    replica = replica_client(pair)
    for response in (single(api), single(api, **{"Idempotency-Key": "k-single"}), batch(api)):
        assert response.status_code == 202, response.get_data(as_text=True)
        job_id = response.get_json()["job_id"]
        # Read from the replica right after the 202: WAIT returned only once it had the job.
        assert replica.hget(keys.job(TENANT, job_id), "status") == b"queued"
    # The batch job's Celery message (the broker is this Redis) was written before the fence
    # the WAIT counted from, so the replica has it too.
    messages = [json.loads(raw)["headers"]["argsrepr"] for raw in replica.lrange("celery", 0, -1)]
    assert any(job_id in args for args in messages), messages


def test_with_the_replica_stopped_a_submission_is_503_stored_and_its_keyed_retry_no_second_job(
        pair, api):
    primary = redis.Redis(port=pair.primary_port)
    pair.stop_replica()
    try:
        # The fast path (no key) and the Flask view (with a key) answer alike.
        unkeyed = not_replicated(single(api))
        keyed = not_replicated(batch(api, **{"Idempotency-Key": "k-batch"}))
        for job_id in (unkeyed, keyed):
            # Stored and queued on the primary, as the 503 says.
            job = api.get(f"/v1/jobs/{job_id}", headers=AUTH)
            assert job.status_code == 200 and job.get_json()["status"] == "queued"
        # A retry while the replica is still down: the same job, still a 503.
        assert not_replicated(batch(api, **{"Idempotency-Key": "k-batch"})) == keyed
    finally:
        pair.start_replica()
    again = batch(api, **{"Idempotency-Key": "k-batch"})
    assert again.status_code == 202, again.get_data(as_text=True)
    assert again.get_json()["job_id"] == keyed
    assert replica_client(pair).hget(keys.job(TENANT, keyed), "status") == b"queued"
    # One job, whatever the retries: once among the tenant's jobs.
    assert jobs.recent_job_ids(primary, TENANT, 200).count(keyed) == 1
