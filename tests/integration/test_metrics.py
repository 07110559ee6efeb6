"""``/metrics`` scraped and parsed with the Prometheus text parser; the shipped alert rules and
Grafana dashboard only use metric names the dock exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from dockd.status.metrics import METRIC_NAMES
from dockd.status.web import create_app
from tests.integration.test_status_data import build_dock

DOCS = Path(__file__).resolve().parents[2] / "docs"
GB = 1_000_000_000


def _metrics_text(tmp_path) -> str:
    dock = build_dock(tmp_path / "w")
    with TestClient(create_app(dock.cfg, dock.db), client=("127.0.0.1", 1),
                    base_url="http://127.0.0.1") as c:
        r = c.get("/metrics")
    assert r.status_code == 200
    return r


@pytest.fixture
def scrape(tmp_path):
    r = _metrics_text(tmp_path)
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    names = set()
    for fam in text_string_to_metric_families(r.text):
        names.add(fam.name)
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, names


def v(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_follow_the_state(scrape):
    s, _ = scrape
    assert v(s, "dockd_up") == 1 and v(s, "dockd_scrape_ok") == 1
    assert v(s, "dockd_port_state", port="port-01", state="copying") == 1
    assert v(s, "dockd_port_state", port="port-01", state="done") == 0
    assert v(s, "dockd_port_state", port="port-05", state="empty") == 1
    assert v(s, "dockd_port_bytes_copied", port="port-01") == 630
    assert v(s, "dockd_port_bytes_expected", port="port-01") == 1000
    assert v(s, "dockd_port_clips_expected", port="port-01") > 0
    assert v(s, "dockd_port_attention", port="port-04") == 1
    assert v(s, "dockd_clips", state="discovered") == 3
    assert v(s, "dockd_clips", state="copied") == 2
    assert v(s, "dockd_clips", state="signed") == 3
    assert v(s, "dockd_clips", state="delivered") == 0
    assert v(s, "dockd_queue_clips", target="primary") == 8
    assert v(s, "dockd_queue_bytes", target="primary") == 5 * 200 + 3 * 1000
    age = v(s, "dockd_queue_oldest_age_seconds", target="primary")
    assert 5 * 3600 - 60 < age < 5 * 3600 + 60  # docking 2, docked 5 h ago
    remaining = v(s, "dockd_deadline_remaining_seconds")
    assert 2 * 3600 - 60 < remaining < 2 * 3600  # clips of docking 2 due in 2 h
    assert ("dockd_deadline_margin_seconds", frozenset()) in s
    assert v(s, "dockd_deadline_level") == 2  # a permanent failure on a required target
    assert v(s, "dockd_delivered_bytes_total", target="primary") == 10_000_000
    assert v(s, "dockd_delivery_seconds_total", target="primary") == 5.0
    assert v(s, "dockd_target_throughput_bytes_per_second", target="primary") == 2_000_000
    assert v(s, "dockd_delivery_errors", target="primary", state="failed") == 1
    assert v(s, "dockd_delivery_errors", target="primary", state="pending") == 1
    assert v(s, "dockd_alerts_open", level="alarm", kind="delivery_failed") == 1
    assert v(s, "dockd_alerts_open", level="warning", kind="deadline") == 1
    assert ("dockd_alerts_open", frozenset({("level", "alarm"), ("kind", "deadline")})) \
        not in s  # resolved
    rec = {"serial": "A1000001", "officer_no": "012345"}
    assert v(s, "dockd_recorder_battery_percent", **rec) == 64
    assert v(s, "dockd_recorder_storage_free_bytes", **rec) == 20 * GB
    assert v(s, "dockd_recorder_clock_offset_seconds", **rec) == 1.2
    assert v(s, "dockd_recorder_fit", **rec) == 0
    assert v(s, "dockd_recorder_fit", serial="C3000003", officer_no="034567") == 1
    assert v(s, "dockd_staging_free_bytes") > 0


def test_every_declared_metric_is_exported(scrape):
    _, names = scrape
    exported = {n for n in names} | {n + "_total" for n in names}
    assert set(METRIC_NAMES) <= exported, set(METRIC_NAMES) - exported


def _metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bdockd_[a-z_]+\b", expr))


def test_alert_rules_parse_and_use_exported_metrics():
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text(encoding="utf-8"))
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    for wanted in ("DockdDeadlineAtRisk", "DockdTargetDown", "DockdTargetPermanentFailure",
                   "DockdStagingDiskLow", "DockdRecorderUnfit"):
        assert wanted in alerts
    for name, rule in alerts.items():
        used = _metric_names_in(rule["expr"])
        assert used <= set(METRIC_NAMES), (name, used - set(METRIC_NAMES))


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package `prometheus` "
                    "(scripts/setup.sh test does)")
    return promtool


def test_metrics_pass_promtool_check_metrics(tmp_path):
    """Prometheus naming conventions (gauges never end in _total, units spelled out, ...)."""
    text = _metrics_text(tmp_path).text
    r = subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        r.stdout + r.stderr


def test_alert_rules_pass_promtool():
    promtool = _promtool()
    r = subprocess.run([promtool, "check", "rules", str(DOCS / "prometheus-alerts.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_dashboard_is_valid_and_uses_exported_metrics():
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    used: set[str] = set()
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        for t in p["targets"]:
            used |= _metric_names_in(t["expr"])
    assert used <= set(METRIC_NAMES), used - set(METRIC_NAMES)
    for key in ("dockd_deadline_margin_seconds", "dockd_queue_clips",
                "dockd_recorder_battery_percent", "dockd_staging_free_bytes"):
        assert key in used
