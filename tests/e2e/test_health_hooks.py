"""Health and clock wiring through the real pipeline: the ``recorder_health`` migration, one
reading per docking, the dock's NTP state stored with the docking."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

import dockd.store.db as state_mod
from dockd.config import Config
from dockd.devices import clock, health
from dockd.devices.simulator import RecorderSpec, simulate_recorder
from dockd.oneshot import ingest_tree
from dockd.store import State

SYNCED = (True, "test: synchronised")


def pin_ntp(monkeypatch: pytest.MonkeyPatch, synced: tuple[bool | None, str] = SYNCED
            ) -> None:
    """Pin the dock's NTP answer (this test box is not NTP-synchronised)."""
    monkeypatch.setattr(clock, "dock_clock_synced", lambda **kw: synced)


def sim(cfg: Config, dest: Path, **spec: Any) -> Path:
    """A simulated recorder whose info file is stamped on a whole second (so a clock offset
    of N s is measured as exactly N s: ``DeviceTime`` has one-second resolution)."""
    spec.setdefault("segments", 2)
    spec.setdefault("segment_seconds", 1.0)
    now = datetime.now(UTC).replace(microsecond=0)
    return simulate_recorder(dest, RecorderSpec(**spec), profile=cfg.profiles[0], tz=cfg.tz,
                             tools=cfg.tools, now=now).root


def with_profile(cfg: Config, **changes: Any) -> Config:
    return dataclasses.replace(cfg, profiles=(dataclasses.replace(cfg.profiles[0], **changes),
                                              *cfg.profiles[1:]))


# --------------------------------------------------------------------------- tests


def test_migration_backfills_existing_dockings(tmp_path: Path) -> None:
    db = sqlite_utils.Database(tmp_path / "old.db")
    for m in state_mod.MIGRATIONS[:4]:
        m(db)
    db["recorders"].insert({"serial": "OLD1"})
    snap = {"identity": {"serial": "OLD1"},
            "health": {"battery_percent": 55, "storage_total": 1000, "storage_free": 50,
                       "firmware": "V1"}}
    db["dockings"].insert({"serial": "OLD1", "port": "p1", "state": "delivered",
                           "docked_at": "2026-01-02T03:04:05+00:00", "snapshot": json.dumps(snap),
                           "clock_offset_s": 12.5})
    state_mod._m5_health(db)  # the production migration 5
    rows = list(db["recorder_health"].rows)
    assert len(rows) == 1
    row = rows[0]
    assert (row["battery"], row["storage_free"], row["firmware"], row["clock_offset_s"],
            row["fs_check"], row["docking_id"]) == (55, 50, "V1", 12.5, "not_run", 1)
    assert "dock_clock" in db["dockings"].columns_dict
    sample = health.sample_from_row(row)
    assert sample.free_percent == 5.0


def test_each_docking_records_a_health_reading(cfg: Config, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pin_ntp(monkeypatch, synced=(False, "test: not synchronised"))
    cfg = with_profile(cfg, timeset_file="TIMESET.TXT")
    root = sim(cfg, tmp_path / "rec", battery=64, clock_offset_s=-30)
    res = ingest_tree(cfg, root, create_key=True)
    assert res["ok"], res["problems"]
    with State(cfg.paths.database) as st:
        rows = st.query("SELECT * FROM recorder_health")
        d = st.docking(res["docking_id"])
    assert len(rows) == 1
    r = rows[0]
    assert r["serial"] == "A1234567" and r["docking_id"] == res["docking_id"]
    assert r["battery"] == 64 and r["clip_count"] == 2 and r["fs_check"] == "not_run"
    assert r["clock_offset_s"] == pytest.approx(-30, abs=0.01)
    assert r["storage_total"] and r["storage_free"] is not None
    assert r["oldest_clip_age_s"] > 3000  # the simulator's clips end an hour before docking
    doc = json.loads(d["dock_clock"])
    assert doc["ntp_synced"] is False and doc["required"] is True
    # not synchronised: the 30 s offset is flagged but the recorder's clock is left alone
    assert not (root / "TIMESET.TXT").exists()


def test_fsck_hint_becomes_the_reading(cfg: Config, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pin_ntp(monkeypatch)
    from dockd.daemon import build_pipeline
    from dockd.ingest.probe import Prober

    root = sim(cfg, tmp_path / "rec", segments=1)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        docking_id, _ = pipe.begin_docking("p1", root, {"DOCKD_FSCK": "errors",
                                                        "DOCKD_FSCK_DETAIL": "dirty bit set"})
        row = st.query_one("SELECT * FROM recorder_health WHERE docking_id = ?", (docking_id,))
    assert row is not None
    assert (row["fs_check"], row["fs_detail"]) == ("errors", "dirty bit set")


def test_reread_while_docked_records_the_charged_battery(cfg, make_recorder):
    """A recorder left in the dock is read again: the verdict sees the charged battery."""
    from dockd.daemon import build_pipeline
    from dockd.devices import infofile
    from dockd.ingest.probe import Prober
    from dockd.oneshot import ingest_tree
    from dockd.store import State

    rec = make_recorder(cfg, battery=18, segments=1)
    assert ingest_tree(cfg, rec, create_key=True)["ok"]
    info = rec / cfg.profiles[0].info_file
    fields, _ = infofile.read_info(info, "gbk")
    fields["Battery"] = "96"
    infofile.write_info(info, fields, "gbk")
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        pipe.reread_health("manual", rec)
        rows = st.query("SELECT source, battery FROM recorder_health ORDER BY id")
        assert [(r["source"], r["battery"]) for r in rows] == [("docking", 18), ("reread", 96)]
        assert st.query_one("SELECT last_battery FROM recorders")["last_battery"] == 96
