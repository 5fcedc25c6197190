"""docker-compose.yml scales out (docs/operations.md, "Scaling out"): `--scale worker=N` and
`--scale api=N` start containers that collide on nothing, beat stays one, and the HAProxy in
front of the API replicas is how clients reach them.

No Docker daemon on the machine this was written on: the file is parsed and its properties
checked; where Compose is installed (the docker plugin, or Debian's docker-compose 1.29),
`config` must accept it too. deploy/haproxy/haproxy.cfg is checked by HAProxy itself (`haproxy -c`; `make
test` installs Debian's haproxy for it, as it installs promtool).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
SCALABLE = ("api", "worker", "worker-events", "worker-webhooks")
API_PORT = 8000  # the API's port in its container: the Dockerfile's CMD


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def haproxy_lines() -> list[str]:
    """The config's directives, comments and blank lines left out."""
    return [line.split("#", 1)[0].strip() for line in HAPROXY_CFG.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def compose_command() -> list[str] | None:
    """Docker Compose v2 (the docker plugin), else v1 (`docker-compose`, Debian's package),
    else None."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def test_compose_accepts_the_file_where_it_is_installed():
    compose = compose_command()
    if compose is not None:
        for profile in ([], ["--profile", "monitoring"]):
            checked = subprocess.run([*compose, "-f", str(COMPOSE), *profile, "config", "-q"],
                                     capture_output=True, text=True)
            assert checked.returncode == 0, checked.stderr
    assert yaml.safe_load(COMPOSE.read_text())["services"]  # parses, at least


@pytest.mark.parametrize("name", SCALABLE)
def test_a_scalable_service_has_no_fixed_name_or_host_port(services, name):
    service = services[name]
    assert "container_name" not in service, name
    assert "ports" not in service, f"{name} publishes a host port: a second replica would collide"
    assert "hostname" not in service, name


def test_the_api_runs_as_several_health_checked_replicas(services):
    api = services["api"]
    assert api["deploy"]["replicas"] >= 2
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert str(API_PORT) in [str(p) for p in api.get("expose", [])]
    assert f"0.0.0.0:{API_PORT}" in (ROOT / "Dockerfile").read_text()


def test_exactly_one_beat(services):
    beats = [name for name, s in services.items() if " beat" in str(s.get("command", ""))]
    assert beats == ["beat"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_the_proxy_is_how_clients_reach_the_api(services):
    proxy = services["proxy"]
    assert proxy["image"].startswith("haproxy:")
    assert proxy["ports"] == [f"{API_PORT}:{API_PORT}"]
    assert f"./{HAPROXY_CFG.relative_to(ROOT)}:/usr/local/etc/haproxy/haproxy.cfg:ro" in proxy["volumes"]
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    assert "healthcheck" in proxy and "profiles" not in proxy
    # No other service of the default stack publishes the API's port.
    for name, service in services.items():
        if name != "proxy":
            assert not any(str(p).startswith(f"{API_PORT}:") for p in service.get("ports", [])), name


def test_the_proxy_config_points_at_every_api_replica_and_checks_them():
    lines = haproxy_lines()
    assert f"bind :{API_PORT}" in lines
    template = next(line for line in lines if line.startswith("server-template "))
    # "server-template <prefix> <count> <service>:<port>": the compose service, by DNS.
    _, _, count, target = template.split()[:4]
    assert target == f"api:{API_PORT}" and int(count) >= 2
    defaults = next(line for line in lines if line.startswith("default-server "))
    assert re.search(r"\bcheck\b", defaults) and "resolvers docker" in defaults
    assert "option httpchk GET /healthz" in lines
    assert "nameserver dns 127.0.0.11:53" in lines  # Docker's embedded DNS


def test_haproxy_accepts_the_config():
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is not installed (apt-get install haproxy; make test does it)"
    checked = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_scrapes_every_api_replica():
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    api = next(job for job in scrape["scrape_configs"] if job["job_name"] == "vigil-api")
    assert api["dns_sd_configs"] == [{"names": ["api"], "type": "A", "port": API_PORT,
                                      "refresh_interval": "30s"}]
