"""The compose stack's proxy (deploy/haproxy/haproxy.cfg, as shipped) in front of real API
replicas, without Docker: tests/proxy_stack.py runs HAProxy, two then three API replicas, the
workers and Redis in a network namespace of its own, with a DNS server standing in for
Docker's. Needs root (unshare --net) and haproxy (`make test` installs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict:
    assert shutil.which("haproxy"), "haproxy is not installed (apt-get install haproxy)"
    assert shutil.which("unshare"), "unshare (util-linux) is not installed"
    workdir = tmp_path_factory.mktemp("proxy")
    out = workdir / "seen.json"
    run = subprocess.run(["unshare", "--net", "--", sys.executable,
                          str(ROOT / "tests" / "proxy_stack.py"), str(out), str(workdir)],
                         capture_output=True, text=True, timeout=300)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                     for p in sorted(workdir.glob("*.log")))
    assert run.returncode == 0 and out.exists(), f"{run.stdout}\n{run.stderr}\n{logs}"
    result = json.loads(out.read_text())
    assert "error" not in result, f"{result['error']}\n{logs}"
    return result


def test_events_sent_through_the_proxy_get_verdicts(seen):
    assert seen["codes"] == [202] * 40
    assert len(seen["jobs"]) == 40
    assert all(job["status"] == "succeeded" for job in seen["jobs"])
    assert all(len(job["results"]) == 1 and "valid" in job["results"][0] for job in seen["jobs"])
    assert seen["batch_status"] == 202
    assert seen["batch"]["status"] == "succeeded" and len(seen["batch"]["results"]) == 200


def test_the_proxy_spreads_requests_over_the_replicas(seen):
    served = seen["served"]
    assert set(served) == {"127.0.0.2", "127.0.0.3"}
    assert sum(served.values()) == 40
    assert min(served.values()) > 0, served


def test_losing_a_replica_loses_no_request(seen):
    # Sent after the replica was killed, before the health checks noticed: a refused
    # connection is tried again on another replica (retries, option redispatch).
    assert seen["codes_after_kill"] == [202] * 40
    assert seen["served_after_kill"]["127.0.0.3"] >= seen["served"]["127.0.0.3"] + 40


def test_a_replica_added_later_is_found_and_used(seen):
    assert seen["new_replica_served"] > 0
