"""Deadline forecast, alerts and bandwidth pacing (R3), with an injected clock."""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockd.alerts import check_deadlines, open_alerts, raise_alert
from dockd.config import for_workdir
from dockd.delivery.schedule import (
    ALARM,
    OK,
    WARNING,
    Pacer,
    Pending,
    forecast,
    measured_throughput,
    parse_bandwidth,
    parse_rate,
    rate_at,
)
from dockd.store import State, iso

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)


def pend(i: int, docked: datetime, gb: float, clips: int = 3, failed: int = 0) -> Pending:
    return Pending(i, f"S{i}", f"port-{i:02d}", docked + 24 * H, docked, int(gb * 1e9), clips,
                   failed)


def test_forecast_drains_earliest_deadline_first_at_measured_rate():
    items = [pend(2, T0, 3.6), pend(1, T0 - H, 3.6)]
    fc = forecast(items, T0, 1e6)  # 1 MB/s: 3.6 GB takes 1 h
    assert [f.docking_id for f in fc] == [1, 2]
    assert fc[0].eta == T0 + H and fc[1].eta == T0 + 2 * H
    assert fc[0].margin_s == pytest.approx((23 * H - H).total_seconds())
    assert all(f.level == OK for f in fc)


def test_warning_when_forecast_is_within_margin_and_alarm_when_missed():
    items = [pend(1, T0, 3.6 * 19)]  # 19 h of transfer at 1 MB/s; deadline in 24 h
    assert forecast(items, T0, 1e6)[0].level == WARNING  # 19 h > 24 h - 6 h
    assert forecast(items, T0, 2e6)[0].level == OK  # 9.5 h
    late = forecast(items, T0 + 24 * H, 2e6)[0]
    assert late.level == ALARM and "missed" in late.reasons[0]


def test_warning_when_clips_wait_too_long_even_without_throughput():
    fc = forecast([pend(1, T0, 0.001)], T0 + 18 * H + timedelta(minutes=1), None)[0]
    assert fc.eta is None and fc.level == WARNING and "waiting" in fc.reasons[0]
    assert forecast([pend(1, T0, 0.001)], T0 + 17 * H, None)[0].level == OK


def test_permanent_failure_is_an_alarm():
    assert forecast([pend(1, T0, 1, failed=1)], T0, 1e9)[0].level == ALARM


@given(st.lists(st.tuples(st.integers(0, 10**10), st.floats(0.001, 1e4)), min_size=1))
def test_measured_throughput_is_total_bytes_over_total_time(samples):
    bps = measured_throughput(samples)
    total_b = sum(b for b, _ in samples)
    if total_b == 0:
        assert bps is None
    else:
        assert bps == pytest.approx(total_b / sum(s for _, s in samples))


@pytest.mark.parametrize("text,bps", [("40 MB/s", 40e6), ("10MiB/s", 10 * 2**20), ("", None),
                                      ("off", None), ("1 GB/s", 1e9)])
def test_parse_rate(text, bps):
    assert parse_rate(text) == bps


@pytest.mark.parametrize("bad", ["fast", "-3 MB/s", "08:00-18:00=lots", "8-18=1MB/s"])
def test_bad_bandwidth(bad):
    with pytest.raises(ValueError):
        parse_bandwidth(bad)


def test_schedule_windows_including_midnight_wrap():
    rules = parse_bandwidth("08:00-18:00=10 MB/s,22:00-06:00=off,*=80 MB/s")
    day = datetime(2026, 11, 23, 12, 0)
    assert rate_at(rules, day) == 10e6
    assert rate_at(rules, day.replace(hour=23)) is None
    assert rate_at(rules, day.replace(hour=3)) is None
    assert rate_at(rules, day.replace(hour=19)) == 80e6


def test_pacer_holds_the_average_rate():
    clock = [0.0]
    slept = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    p = Pacer(parse_bandwidth("10 MB/s"), now=lambda: T0, monotonic=lambda: clock[0],
              sleep=sleep)
    for _ in range(100):
        p.consume(1_000_000)  # 100 MB
    assert clock[0] == pytest.approx(10.0, rel=0.02)  # 100 MB at 10 MB/s
    unlimited = Pacer([], now=lambda: T0)
    assert unlimited.consume(10**12) == 0.0


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
    from dockd.status.queue import queue_data

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
