"""The API as `make run` and the Docker image serve it (core/server.py's default server),
over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import EVENT, KEYS, wait_for

from core.localredis import free_port
from core.server import DEFAULT_SERVER, api_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(vigil_env, tmp_path) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    env = {**os.environ, **vigil_env, "PYTHONPATH": str(ROOT),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}  # its own: its workers' ids are new
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            api_command(DEFAULT_SERVER, Path(sys.executable).parent, f"127.0.0.1:{port}"),
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "server.log").read_text()[-3000:]
        time.sleep(0.2)
    yield server, url
    # SIGTERM, not SIGKILL: granian's workers outlive a killed main process (uWSGI's noticed).
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_a_keep_alive_client_gets_every_answer(served, worker, event_type):
    """A client that keeps connections alive (requests.Session, httpx.Client) gets every
    answer (uWSGI closed each connection and said so; granian keeps it open)."""
    _, url = served
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS['alpha']}"},
                      timeout=10) as client:
        accepted = []
        for i in range(40):
            response = client.post("/v1/events/validate",
                                   json={**EVENT, "event_type": event_type, "event_id": f"e{i}"})
            assert response.status_code == 202, response.text
            accepted.append(response.json()["job_id"])
        # 100 ids: a 3.4 KB request line (over uWSGI's default 4 KB buffer, counted twice).
        ids = ",".join([*accepted, *(f"{n:032x}" for n in range(60))])
        wait_for(client, f"/v1/jobs/{accepted[-1]}")
        listed = client.get("/v1/jobs", params={"ids": ids})
        assert listed.status_code == 200, listed.text
        assert [j["job_id"] for j in listed.json()["jobs"]] == accepted
        # 600 ids: the answer is the 422 for too many ids, not the latest jobs as if no ids
        # had been asked for (uWSGI dropped such a query string; api/wsgi.py puts it back).
        too_many = client.get("/v1/jobs", params={"ids": ",".join(f"{n:032x}" for n in range(600))})
        assert too_many.status_code == 422, too_many.text[:300]
        assert "ids" in too_many.json()["errors"]["query"]


def test_sigterm_stops_the_server(served, tmp_path):
    """SIGTERM stops it, exit status 0 (`make run` holds its start-up lines back:
    tests/unit/test_run_startup_lines.py)."""
    server, url = served
    assert httpx.get(url + "/healthz").status_code == 200
    server.send_signal(signal.SIGTERM)
    log = tmp_path / "server.log"
    try:
        assert server.wait(timeout=30) == 0, log.read_text()[-3000:]
    except subprocess.TimeoutExpired:
        raise AssertionError(log.read_text()[-3000:]) from None
