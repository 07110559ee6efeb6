"""Deadline alerts (R3) over a real state database: raised and resolved at the right times,
the alert hook called (and its failure recorded), the queue forecast at the measured
throughput. The pure forecast is tests/unit/test_schedule.py."""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime, timedelta

import pytest

from dockd.alerts import check_deadlines, open_alerts, raise_alert
from dockd.config import for_workdir
from dockd.delivery.schedule import OK
from dockd.status.queue import queue_data
from dockd.store import State, iso

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)


def _db(tmp_path):
    return State(tmp_path / "s.db", clock=lambda: NOW[0])


NOW = [T0]


def _add_docking(s: State, docked: datetime, n: int, size: int) -> int:
    with s.tx() as conn:
        conn.execute("INSERT OR IGNORE INTO recorders (serial) VALUES ('A1')")
        cur = conn.execute(
            "INSERT INTO dockings (serial, port, state, docked_at, deadline_at) "
            "VALUES ('A1', 'port-01', 'signed', ?, ?)", (iso(docked), iso(docked + 24 * H)))
        d = cur.lastrowid
        for i in range(n):
            conn.execute("INSERT INTO clips (docking_id, serial, rel_path, safe_name, size, "
                         "state, deadline_at) VALUES (?, 'A1', ?, ?, ?, 'signed', ?)",
                         (d, f"c{i}".encode(), f"c{i}", size, iso(docked + 24 * H)))
        conn.execute("INSERT INTO transfers (ts, target, bytes, seconds) "
                     "VALUES (?, 'primary', ?, ?)", (iso(docked), 10**6, 1.0))  # 1 MB/s
    return int(d)


def test_alerts_fire_at_the_right_times_and_call_the_hook(tmp_path):
    cfg = for_workdir(tmp_path)
    hook_log = tmp_path / "hook.log"
    script = tmp_path / "hook.py"
    script.write_text(f"import os\nopen({str(hook_log)!r}, 'a').write(os.environ['DOCKD_ALERT_LEVEL'] + ' ' + "
                      "os.environ['DOCKD_ALERT_SUBJECT'] + '\\n')\n")
    cfg = dataclasses.replace(cfg, delivery=dataclasses.replace(
        cfg.delivery, alert_command=f"{sys.executable} {script}"))
    NOW[0] = T0
    with _db(tmp_path) as s:
        d = _add_docking(s, T0, 4, 4_000_000_000)  # 16 GB at 1 MB/s: 4.4 h: fine
        assert check_deadlines(s, cfg, T0) == []
        NOW[0] = T0 + 18 * H + timedelta(minutes=1)  # waited > 18 h
        alerts = check_deadlines(s, cfg, NOW[0])
        assert [a["level"] for a in alerts] == ["warning"]
        assert check_deadlines(s, cfg, NOW[0]) == alerts  # not raised twice
        NOW[0] = T0 + 24 * H + timedelta(minutes=1)
        alerts = check_deadlines(s, cfg, NOW[0])
        assert [a["level"] for a in alerts] == ["alarm"]
        assert hook_log.read_text().splitlines() == [f"warning docking/{d}", f"alarm docking/{d}"]
        s.conn.execute("UPDATE clips SET state = 'delivered'")
        assert check_deadlines(s, cfg, NOW[0]) == []  # resolved once delivered
        assert s.verify_audit_chain() == []


def test_failing_hook_is_recorded_not_fatal(tmp_path):
    with _db(tmp_path) as s:
        assert raise_alert(s, level="alarm", kind="x", subject="y", message="m",
                           command="/nonexistent/hook")
        assert open_alerts(s)[0]["hook_status"].startswith("failed")


def test_queue_forecast_uses_the_measured_throughput(tmp_path):
    cfg = for_workdir(tmp_path)
    NOW[0] = T0
    with _db(tmp_path) as s:
        d1 = _add_docking(s, T0 - H, 2, 1_000_000_000)  # 2 GB, earlier deadline
        d2 = _add_docking(s, T0, 1, 3_000_000_000)  # 3 GB
        with s.tx() as conn:  # measured: 3 transfers, 60 MB in 2 s each -> 30 MB/s overall
            conn.execute("DELETE FROM transfers")
            for _ in range(3):
                conn.execute("INSERT INTO transfers (ts, target, bytes, seconds) VALUES "
                             "(?, 'primary', 60000000, 2.0)", (iso(T0),))
        data = queue_data(s, cfg, T0)
    assert data["targets"]["primary"]["throughput_bps"] == pytest.approx(30e6)
    by_id = {d["docking_id"]: d for d in data["dockings"]}
    assert [d["docking_id"] for d in data["dockings"]] == [d1, d2]  # earliest deadline first
    assert datetime.fromisoformat(by_id[d1]["eta"]) == T0 + timedelta(seconds=2e9 / 30e6)
    assert datetime.fromisoformat(by_id[d2]["eta"]) == T0 + timedelta(seconds=5e9 / 30e6)
    assert by_id[d2]["level"] == OK
