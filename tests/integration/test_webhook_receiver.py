"""docs/webhooks.md's walkthrough, as a user runs it: the tenant's secret from `vigil
webhook-secret`, scripts/webhook_receiver.py verifying with it, a job whose callback it is."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
from helpers import KEYS

from core.localredis import free_port

ROOT = Path(__file__).resolve().parents[2]


def read_line(proc: subprocess.Popen, timeout_s: float = 20) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return line.strip()
        if proc.poll() is not None:
            raise AssertionError(f"receiver exited: {proc.stderr.read()}")
    raise AssertionError("the receiver printed nothing")


def test_the_documented_receiver_verifies_the_tenants_deliveries_and_refuses_forgeries(
        api_url, worker, alpha, event_type, tmp_path, capsys):
    from vigil_client.cli import main

    assert main(["--url", api_url, "--key", KEYS["alpha"], "webhook-secret"]) == 0
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(capsys.readouterr().out)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "webhook_receiver.py"),
                             "--secret-file", str(secret_file), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(proc).startswith("listening on")
        response = alpha.post("/v1/jobs", json={
            "callback_url": f"http://127.0.0.1:{port}/hooks/vigil",
            "events": [{"event_type": event_type, "timestamp": 1_790_000_000,
                        "payload": {"amount": 10.0}}]})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        assert read_line(proc).startswith(f"verified job.completed {job_id}")
        # The delivery was answered 2xx: the job says delivered.
        deadline = time.monotonic() + 15
        while (alpha.get(f"/v1/jobs/{job_id}").json().get("webhook") or {}).get(
                "status") != "delivered":
            assert time.monotonic() < deadline, "the delivery was never recorded as delivered"
            time.sleep(0.1)
        # A delivery signed with another secret (or none) is refused.
        forged = httpx.post(f"http://127.0.0.1:{port}/", content=b'{"type":"job.completed"}',
                            headers={"webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())),
                                     "webhook-signature": "v1,Zm9yZ2Vk"})
        assert forged.status_code == 400
        assert read_line(proc).startswith("REFUSED")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
