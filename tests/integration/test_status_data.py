"""Status data for web, metrics and top, over a hand-built state (no daemon, no ffmpeg).

``populated`` builds a dock in a known situation that the web, metrics and top tests share:
port-01 copying 63 %, port-02 done with a gap without a spoken note, port-03 charging only
(nothing new), port-04 in error with an unregistered recorder, port-05 empty; recorders fit
and unfit for each reason; a backlog with a retrying and a failed delivery; open alerts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from dockd.config import Config, for_workdir
from dockd.status import i18n
from dockd.status.web_data import (
    api_findings,
    fleet_data,
    kiosk_ports,
    open_state_ro,
    recorder_health,
)
from dockd.store import State, iso, utcnow

GB = 1_000_000_000


@dataclass
class Dock:
    cfg: Config
    db: Path
    now: datetime


def _recorder(serial: str, officer_no: str, name: str, battery: int, total: int, free: int,
              offset: float, now: datetime) -> dict[str, object]:
    return {"serial": serial, "officer_no": officer_no, "officer_name": name,
            "unit_no": "110105000000", "unit_name": "朝阳分局", "model": "DSJ-SIM1",
            "firmware": "V2.3.1", "first_seen": iso(now - timedelta(days=30)),
            "last_seen": iso(now - timedelta(minutes=10)), "last_port": "port-01",
            "last_battery": battery, "last_clock_offset_s": offset,
            "last_storage_total": total, "last_storage_free": free}


def build_dock(workdir: Path) -> Dock:
    cfg = for_workdir(workdir)
    cfg = dataclasses.replace(cfg, dock=dataclasses.replace(cfg.dock, ports=5))
    now = utcnow()
    st = State(cfg.paths.database)
    db = st.db
    db["recorders"].insert_all([
        _recorder("A1000001", "012345", "张三", 64, 32 * GB, 20 * GB, 1.2, now),
        _recorder("B2000002", "023456", "李四", 95, 32 * GB, GB, 25.0, now),
        _recorder("C3000003", "034567", "王五", 90, 32 * GB, 16 * GB, 0.5, now),
        _recorder("D4000004", "", "", 88, 32 * GB, 16 * GB, 0.0, now),
    ])
    readings = {r["serial"]: r for r in db["recorders"].rows}
    for i, (serial, port, state) in enumerate([
            ("A1000001", "port-01", "offloading"), ("B2000002", "port-02", "signed"),
            ("C3000003", "port-03", "delivered"), ("D4000004", "port-04", "interrupted")], 1):
        r = readings[serial]
        snapshot = {"health": {"battery_percent": r["last_battery"],
                               "storage_total": r["last_storage_total"],
                               "storage_free": r["last_storage_free"], "firmware": "V2.3.1"}}
        db["dockings"].insert({"id": i, "serial": serial, "port": port, "dock_id": "dock-01",
                               "snapshot": json.dumps(snapshot),
                               "clock_offset_s": r["last_clock_offset_s"],
                               "root": f"/run/{port}", "state": state,
                               "docked_at": iso(now - timedelta(hours=3 + i)),
                               "deadline_at": iso(now + timedelta(hours=24 - i)),
                               "findings": json.dumps([{"kind": "probe_failed",
                                                        "severity": "error",
                                                        "message": "clip 9 unreadable"}]
                                                      if i == 4 else [])})
    clips = []
    for n in range(5):  # docking 1: 2 copied, 3 discovered
        clips.append((1, "copied" if n < 2 else "discovered", 200, now + timedelta(hours=23)))
    for _ in range(3):  # docking 2: signed, due in 2 h
        clips.append((2, "signed", 1000, now + timedelta(hours=2)))
    for cid, (d, state, size, deadline) in enumerate(clips, 1):
        db["clips"].insert({"id": cid, "docking_id": d, "first_docking_id": d,
                            "serial": "A1000001" if d == 1 else "B2000002",
                            "rel_path": f"DCIM/{cid}.MP4".encode(), "safe_name": f"{cid}.MP4",
                            "size": size, "state": state, "deadline_at": iso(deadline),
                            "created_at": iso(now), "updated_at": iso(now)})
    db["deliveries"].insert_all([
        {"clip_id": 6, "target": "primary", "state": "pending", "attempts": 2,
         "last_error": "connection refused", "next_try_at": iso(now + timedelta(seconds=30))},
        {"clip_id": 7, "target": "primary", "state": "failed", "attempts": 1,
         "last_error": "400 can never be stored"},
    ])
    db["transfers"].insert_all([{"ts": iso(now - timedelta(minutes=m)), "target": "primary",
                                 "bytes": 1_000_000, "seconds": 0.5} for m in range(10)])
    db["gaps"].insert_all([
        {"docking_id": 2, "kind": "interruption", "start": iso(now - timedelta(hours=5)),
         "end": iso(now - timedelta(hours=5) + timedelta(seconds=95)), "length_s": 95.0,
         "verdict": "no_note", "transcript": "", "needs_review": 1},
        {"docking_id": 2, "kind": "interruption", "start": iso(now - timedelta(hours=4)),
         "end": iso(now - timedelta(hours=4) + timedelta(seconds=60)), "length_s": 60.0,
         "verdict": "note", "reason": "battery", "transcript": "电池没电了", "needs_review": 0},
    ])
    db["alerts"].insert_all([
        {"ts": iso(now), "level": "alarm", "kind": "delivery_failed", "subject": "clip/7",
         "message": "primary: permanent error"},
        {"ts": iso(now), "level": "warning", "kind": "deadline", "subject": "docking/2",
         "message": "recorder B2000002 (port-02): forecast late"},
        {"ts": iso(now), "level": "alarm", "kind": "deadline", "subject": "docking/1",
         "message": "old", "resolved_at": iso(now)},
    ])
    ports = [
        ("port-01", "copying", "A1000001", 1, 2, 5, 630, 1000, 100.0, None),
        ("port-02", "done", "B2000002", 2, 3, 3, 3000, 3000, None, None),
        ("port-03", "done", "C3000003", 3, 0, 0, 0, 0, None, None),
        ("port-04", "error", "D4000004", 4, 0, 2, 0, 400, None, "copy failed: I/O error"),
        ("port-05", "empty", None, None, 0, 0, 0, 0, None, None),
    ]
    for port, state, serial, dk, cd, ct, bd, bt, rate, err in ports:
        st.set_port(port, state=state, serial=serial, docking_id=dk, clips_done=cd,
                    clips_total=ct, bytes_done=bd, bytes_total=bt, rate_bps=rate, error=err,
                    message=state)
    st.close()
    return Dock(cfg, cfg.paths.database, now)


@pytest.fixture
def dock(tmp_path: Path) -> Dock:
    return build_dock(tmp_path / "w")


def test_kiosk_tiles_show_state_progress_and_problems(dock):
    with open_state_ro(dock.db) as st:
        ports = {p["port"]: p for p in kiosk_ports(st, dock.cfg)}
    p1 = ports["port-01"]
    assert (p1["display"], p1["percent"], p1["attention"]) == ("copying", 63, False)
    assert p1["officer_name"] == "张三" and p1["storage_free"] == 20 * GB
    p2 = ports["port-02"]
    assert p2["display"] == "done" and p2["attention"]
    assert [x["code"] for x in p2["problems"]] == ["gap_no_note"]
    assert ports["port-03"]["display"] == "charging" and not ports["port-03"]["attention"]
    p4 = ports["port-04"]
    codes = {x["code"] for x in p4["problems"]}
    assert p4["display"] == "error" and codes == {"port_error", "not_registered",
                                                 "finding_error"}
    assert ports["port-05"]["display"] == "empty" and not ports["port-05"]["problems"]


def test_fleet_lists_unfit_first_with_reasons(dock):
    with open_state_ro(dock.db) as st:
        data = fleet_data(st, dock.cfg, dock.now)
    order = [r["serial"] for r in data["recorders"]]
    assert set(order[:2]) == {"A1000001", "B2000002"} and data["unfit"] == 2
    by = {r["serial"]: r for r in data["recorders"]}
    assert [r["code"] for r in by["A1000001"]["reasons"]] == ["battery_low"]
    assert {r["code"] for r in by["B2000002"]["reasons"]} == {"storage_low", "clock_off"}
    assert by["C3000003"]["fit"] is True and by["D4000004"]["registered"] is False
    assert data["thresholds"]["min_battery_percent"] == dock.cfg.health.min_battery_percent


def test_stored_health_verdict_wins_over_thresholds(dock):
    row = {"serial": "X", "last_battery": 10, "health_verdict": "fit", "health_reasons": None}
    assert recorder_health(row, dock.cfg.health)["fit"] is True
    row = {"serial": "X", "last_battery": 99, "fit": 0,
           "unfit_reasons": json.dumps(["storage worn out"])}
    h = recorder_health(row, dock.cfg.health)
    assert h["fit"] is False and h["reasons"] == [{"code": "other",
                                                  "value": "storage worn out"}]
    assert recorder_health({"serial": "Y"}, dock.cfg.health)["fit"] is None


def test_findings_list_gaps_needing_review_and_docking_findings(dock):
    with open_state_ro(dock.db) as st:
        data = api_findings(st, dock.cfg, dock.now)
    assert [(g["serial"], g["verdict"]) for g in data["gaps_needing_review"]] == [
        ("B2000002", "no_note")]
    assert [(f["docking_id"], f["kind"]) for f in data["findings"]] == [(4, "probe_failed")]


def test_read_only_state_refuses_writes(dock):
    import sqlite3

    with open_state_ro(dock.db) as st:
        with pytest.raises(sqlite3.OperationalError):
            st.conn.execute("UPDATE ports SET state = 'empty'")


def test_i18n_catalogues_agree_and_default_to_chinese():
    assert i18n.missing_keys() == {}
    assert i18n.pick_language(None) == "zh" and i18n.pick_language("en-US") == "en"
    assert i18n.pick_language("fr", "en") == "en"
    assert i18n.translate("display.copying", "en", percent=63) == "Copying 63 %"
    assert "可以拔出" in i18n.translate("display.done", "zh")
