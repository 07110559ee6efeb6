"""Prometheus metrics (R11): a custom collector that reads the state on each scrape.

No background thread and no counters kept in memory: every value is read from the state
database when Prometheus scrapes ``/metrics``, so a restarted daemon reports the same
numbers. Counters that come from the state (bytes delivered per target) only grow while
the ``transfers`` table does. Labels are bounded: ports, clip states, targets, alert
levels/kinds, and recorders (at most ``web_data.FLEET_LIMIT``, serial and officer number).

Metric names are the contract with ``docs/grafana-dashboard.json`` and
``docs/prometheus-alerts.yml``; :data:`METRIC_NAMES` lists them (a test checks the docs).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__
from ..config import Config
from ..lifecycle import CLIP_STATES
from ..store import Reader, parse_iso
from ..store import status as store
from .queue import pending_by_target, queue_data
from .views import backlog_view, incomplete_view, ports_view
from .web_data import disk_data, fleet_data

log = logging.getLogger(__name__)

PORT_STATES = ("empty", "identifying", "copying", "checking", "done", "incomplete", "error")
LEVELS = {"ok": 0, "warning": 1, "alarm": 2}

METRIC_NAMES = (
    "dockd_up", "dockd_info", "dockd_scrape_ok", "dockd_scrape_duration_seconds",
    "dockd_port_state", "dockd_port_bytes_copied", "dockd_port_bytes_expected",
    "dockd_port_clips_copied", "dockd_port_clips_expected", "dockd_port_rate_bytes_per_second",
    "dockd_port_attention", "dockd_dockings_incomplete",
    "dockd_clips", "dockd_queue_clips", "dockd_queue_bytes", "dockd_queue_oldest_age_seconds",
    "dockd_deadline_level", "dockd_deadline_remaining_seconds", "dockd_deadline_margin_seconds",
    "dockd_target_required", "dockd_target_throughput_bytes_per_second",
    "dockd_delivered_bytes_total", "dockd_delivery_seconds_total",
    "dockd_delivery_errors", "dockd_alerts_open",
    "dockd_staging_free_bytes", "dockd_staging_total_bytes", "dockd_staging_min_free_bytes",
    "dockd_recorder_battery_percent", "dockd_recorder_storage_free_bytes",
    "dockd_recorder_storage_total_bytes", "dockd_recorder_clock_offset_seconds",
    "dockd_recorder_fit", "dockd_recorder_last_seen_timestamp_seconds",
)


class DockdCollector(Collector):
    """Yields the dock's metrics from the state at scrape time."""

    def __init__(self, get_state: Callable[[], Reader], cfg: Config,
                 clock: Callable[[], datetime]):
        self.get_state = get_state
        self.cfg = cfg
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []  # registering must not read the state

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        up = GaugeMetricFamily("dockd_up", "1 while the dock's status service answers")
        up.add_metric([], 1)
        yield up
        info = GaugeMetricFamily("dockd_info", "The dock", labels=["dock", "version"])
        info.add_metric([self.cfg.dock.id, __version__], 1)
        yield info
        ok = 1
        try:
            metrics = list(self._from_state(self.get_state(), self.clock()))
        except Exception:  # noqa: BLE001 - a scrape reports the failure instead of a 500
            log.exception("metrics: reading the state failed")
            metrics, ok = [], 0
        yield from metrics
        yield from self._disk()
        g = GaugeMetricFamily("dockd_scrape_ok", "1 when the state could be read for this "
                                                 "scrape")
        g.add_metric([], ok)
        yield g
        d = GaugeMetricFamily("dockd_scrape_duration_seconds", "Time to read the state")
        d.add_metric([], time.monotonic() - started)
        yield d

    # ---------------------------------------------------------------- pieces

    def _disk(self) -> Iterator[Metric]:
        disk = disk_data(self.cfg)
        for name, key, doc in (("dockd_staging_free_bytes", "free", "Free bytes on staging"),
                               ("dockd_staging_total_bytes", "total", "Size of staging disk"),
                               ("dockd_staging_min_free_bytes", "min_free",
                                "offload.min_free: below this no new copy starts")):
            if disk[key] is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], disk[key])
                yield g

    def _from_state(self, state: Reader, now: datetime) -> Iterator[Metric]:
        yield from self._ports(state)
        counts = store.clip_counts_by_state(state)
        clips = GaugeMetricFamily("dockd_clips", "Clips by state", labels=["state"])
        for st in CLIP_STATES:
            clips.add_metric([st], counts.get(st, 0))
        yield clips
        yield from self._queue(state, now)
        yield from self._errors(state, now)
        yield from self._recorders(state, now)

    def _ports(self, state: Reader) -> Iterator[Metric]:
        st = GaugeMetricFamily("dockd_port_state", "1 for the port's current state",
                               labels=["port", "state"])
        fams = {k: GaugeMetricFamily(n, doc, labels=["port"]) for k, n, doc in (
            ("bytes_done", "dockd_port_bytes_copied", "Bytes copied in the current docking"),
            ("bytes_total", "dockd_port_bytes_expected", "Bytes to copy in the current docking"),
            ("clips_done", "dockd_port_clips_copied", "Clips copied in the current docking"),
            ("clips_total", "dockd_port_clips_expected", "Clips in the current docking"),
            ("rate_bps", "dockd_port_rate_bytes_per_second", "Current copy rate"))}
        attention = GaugeMetricFamily("dockd_port_attention",
                                      "1 when the port is in error", labels=["port"])
        for p in ports_view(state):
            for s in PORT_STATES:
                st.add_metric([p["port"], s], 1 if p["state"] == s else 0)
            for key, fam in fams.items():
                fam.add_metric([p["port"]], float(p[key] or 0))
            attention.add_metric([p["port"]], 1 if p["state"] in ("error", "incomplete")
                                 or p["error"] else 0)
        yield st
        yield from fams.values()
        yield attention
        inc = GaugeMetricFamily("dockd_dockings_incomplete",
                                "Dockings closed with clips left on the recorder, not re-docked "
                                "or acknowledged")
        inc.add_metric([], len(incomplete_view(state)))
        yield inc

    def _queue(self, state: Reader, now: datetime) -> Iterator[Metric]:
        q = queue_data(state, self.cfg, now)
        depth = GaugeMetricFamily("dockd_queue_clips", "Clips not yet delivered to the target",
                                  labels=["target"])
        qbytes = GaugeMetricFamily("dockd_queue_bytes", "Bytes not yet delivered to the target",
                                   labels=["target"])
        age = GaugeMetricFamily("dockd_queue_oldest_age_seconds",
                                "Age of the oldest docking with clips not on the target",
                                labels=["target"])
        req = GaugeMetricFamily("dockd_target_required", "1 for required targets",
                                labels=["target"])
        tput = GaugeMetricFamily("dockd_target_throughput_bytes_per_second",
                                 "Measured delivery throughput (recent transfers)",
                                 labels=["target"])
        for name, t in q["targets"].items():
            pend = pending_by_target(state, name)
            depth.add_metric([name], sum(p.clips_left for p in pend))
            qbytes.add_metric([name], sum(p.bytes_left for p in pend))
            oldest = min((p.docked_at for p in pend if p.docked_at), default=None)
            age.add_metric([name], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
            req.add_metric([name], 1 if t["required"] else 0)
            if t["throughput_bps"] is not None:
                tput.add_metric([name], t["throughput_bps"])
        yield from (depth, qbytes, age, req, tput)
        lvl = GaugeMetricFamily("dockd_deadline_level", "Worst deadline level: 0 ok, "
                                                        "1 warning, 2 alarm")
        lvl.add_metric([], LEVELS.get(q["level"], 2))
        yield lvl
        if q["dockings"]:
            rem = GaugeMetricFamily("dockd_deadline_remaining_seconds",
                                    "Least time left to any docking's deadline (R3: 24 h)")
            rem.add_metric([], min(d["remaining_s"] for d in q["dockings"]))
            yield rem
            margins = [d["margin_s"] for d in q["dockings"] if d["margin_s"] is not None]
            if margins:
                m = GaugeMetricFamily("dockd_deadline_margin_seconds",
                                      "Least forecast margin (deadline - forecast completion)")
                m.add_metric([], min(margins))
                yield m
        sent = CounterMetricFamily("dockd_delivered_bytes", "Bytes delivered and verified",
                                   labels=["target"])
        secs = CounterMetricFamily("dockd_delivery_seconds", "Seconds spent delivering",
                                   labels=["target"])
        for target, nbytes, seconds in store.transfer_totals(state):
            sent.add_metric([target], nbytes)
            secs.add_metric([target], seconds)
        yield sent
        yield secs

    def _errors(self, state: Reader, now: datetime) -> Iterator[Metric]:
        errs = GaugeMetricFamily("dockd_delivery_errors", "Deliveries with an error: state "
                                 "pending (retrying) or failed (permanent)",
                                 labels=["target", "state"])
        counted: Counter[tuple[str, str]] = Counter(
            (e["target"], e["state"] or "pending")
            for e in backlog_view(state, now)["delivery_errors"])
        for t in self.cfg.targets:
            for s in ("pending", "failed"):
                counted.setdefault((t.name, s), 0)
        for (target, s), n in sorted(counted.items()):
            errs.add_metric([target, s], n)
        yield errs
        alerts = GaugeMetricFamily("dockd_alerts_open", "Open alerts", labels=["level", "kind"])
        for level, kind, n in store.open_alert_counts(state):
            alerts.add_metric([level, kind], n)
        yield alerts

    def _recorders(self, state: Reader, now: datetime) -> Iterator[Metric]:
        labels = ["serial", "officer_no"]
        fams = {k: GaugeMetricFamily(n, doc, labels=labels) for k, n, doc in (
            ("battery_percent", "dockd_recorder_battery_percent", "Battery at last docking"),
            ("storage_free", "dockd_recorder_storage_free_bytes", "Free storage"),
            ("storage_total", "dockd_recorder_storage_total_bytes", "Storage size"),
            ("clock_offset_s", "dockd_recorder_clock_offset_seconds",
             "Recorder clock minus dock clock at last docking"))}
        fit = GaugeMetricFamily("dockd_recorder_fit", "1 fit for the next shift, 0 not fit "
                                "(absent: no data)", labels=labels)
        seen = GaugeMetricFamily("dockd_recorder_last_seen_timestamp_seconds",
                                 "When the recorder was last docked", labels=labels)
        for r in fleet_data(state, self.cfg, now)["recorders"]:
            lv = [r["serial"], r["officer_no"] or ""]
            for key, fam in fams.items():
                if r[key] is not None:
                    fam.add_metric(lv, float(r[key]))
            if r["fit"] is not None:
                fit.add_metric(lv, 1 if r["fit"] else 0)
            last = parse_iso(r["last_seen"])
            if last is not None:
                seen.add_metric(lv, last.timestamp())
        yield from fams.values()
        yield fit
        yield seen


def build_registry(get_state: Callable[[], Reader], cfg: Config,
                   clock: Callable[[], datetime]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DockdCollector(get_state, cfg, clock))
    return registry


def metrics_response(get_state: Callable[[], Reader], cfg: Config,
                     clock: Callable[[], datetime]) -> tuple[bytes, str]:
    """The exposition text and its content type, read from the state now."""
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(build_registry(get_state, cfg, clock)), CONTENT_TYPE_LATEST


__all__ = ["METRIC_NAMES", "DockdCollector", "build_registry", "metrics_response"]
