"""deploy/: the alerting rules pass promtool, every metric a dashboard panel or a rule queries
is one a running Vigil exports (or is named here as external), and the compose file parses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from helpers import wait_for, wait_until, webhook_secret
from prometheus_client.parser import text_string_to_metric_families

from core.localredis import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "vigil-dashboard.json"
T0 = 1_790_000_000

# Metrics that do not come from Vigil: Prometheus' own per target, and redis_exporter's.
EXTERNAL = {"up", "redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes"}

# PromQL words that look like metric names but are not.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions (followed
    by '('), label names (inside {...} or the lists of by/without/on/ignoring), strings, durations
    or keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)              # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                          # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                         # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def queried() -> dict[str, set[str]]:
    """{metric name: where it is queried} over the dashboard's panels and the alert rules."""
    where: dict[str, set[str]] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            for name in metric_names(target["expr"]):
                where.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                where.setdefault(name, set()).add(f"rule {rule['alert']}")
    return where


def test_metric_names_are_read_from_promql():
    expr = ('histogram_quantile(0.99, sum by (le, kind) (rate(vigil_x_bucket{kind="a b"}[5m])))'
            ' / on (kind) group_left sum without (le) (vigil_y_total) > 0.5 and up == 0')
    assert metric_names(expr) == {"vigil_x_bucket", "vigil_y_total", "up"}


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    # Not skipped: `make test` installs Debian's prometheus package, which has promtool.
    assert promtool, "promtool is missing: apt-get install -y prometheus (make test does)"
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_queried_metric_is_exported(alpha, event_type):
    # Jobs of both kinds, an invalid event and a webhook nobody answers (its deliveries retry,
    # then fail), so that every labelled series the panels and rules use exists.
    history = alpha.post(f"/v1/event-types/{event_type}/history", json={"events": [
        {"timestamp": T0 + i, "payload": {"amount": 100.0 + (i % 5)}} for i in range(40)]})
    assert wait_for(alpha, history.json()["status_url"])["status"] == "succeeded"
    webhook_secret(alpha)  # with several tenants, each signs its webhooks with its own
    batch = alpha.post("/v1/jobs", json={
        "callback_url": f"http://127.0.0.1:{free_port()}/hook", "events": [
            {"event_type": event_type, "timestamp": T0 + 100, "payload": {"amount": 900.0}}]})
    single = alpha.post("/v1/events/validate", json={
        "event_type": event_type, "timestamp": T0 + 101, "payload": {"amount": 101.0}})
    for response in (batch, single):
        assert response.status_code == 202, response.text
        assert wait_for(alpha, response.json()["status_url"])["status"] == "succeeded"

    def exported() -> set[str]:
        text = alpha.get("/metrics").text
        return {s.name for f in text_string_to_metric_families(text) for s in f.samples}

    where = queried()
    assert {"vigil_time_to_verdict_seconds_bucket", "vigil_workers_alive"} <= set(where)
    vigil = set(where) - EXTERNAL
    # The webhook's first attempt runs after the job finished: wait for its counter.
    wait_until(lambda: vigil <= exported(), 20)
    names = exported()
    missing = {name: sorted(where[name]) for name in vigil - names}
    assert not missing, f"queried but not exported by Vigil: {missing}"
    # The workers' heartbeats are behind vigil_workers_alive: each queue has its live worker.
    alive = {s.labels["queue"]: s.value for f in text_string_to_metric_families(
        alpha.get("/metrics").text) for s in f.samples if s.name == "vigil_workers_alive"}
    assert all(alive.get(queue, 0) >= 1 for queue in ("celery", "events", "webhooks")), alive


def test_compose_file_has_the_monitoring_profile():
    compose = ROOT / "docker-compose.yml"
    has_compose = shutil.which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0
    if has_compose:  # the real check where Docker Compose is installed
        checked = subprocess.run(["docker", "compose", "-f", str(compose), "--profile",
                                  "monitoring", "config", "-q"], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
    # Without it (this machine has no compose plugin): parse the YAML and check what it wires.
    services = yaml.safe_load(compose.read_text())["services"]
    for name in ("prometheus", "grafana", "redis-exporter"):
        assert services[name]["profiles"] == ["monitoring"], name
    for name in ("api", "worker", "worker-events", "worker-webhooks", "redis"):
        assert "profiles" not in services[name], name
    mounted = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in ("deploy/prometheus/prometheus.yml", "deploy/prometheus/rules.yml",
                 "deploy/grafana/provisioning", "deploy/grafana/vigil-dashboard.json"):
        assert f"./{path}:" in mounted and (ROOT / path).exists(), path
    for name in ("worker", "worker-events", "worker-webhooks"):
        assert services[name]["environment"]["VIGIL_WORKER_METRICS_PORT"] == "9808"
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert jobs == {"vigil-api", "vigil-workers", "redis"}
