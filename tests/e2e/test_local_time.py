"""Times as a station in China sees them: date folders by the recording's local date, and
every time shown to people in the dock's zone with the zone named (UTC stays in the data)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.conftest import run_dockd

TZ = ZoneInfo("Asia/Shanghai")


def test_clip_recorded_after_local_midnight_lands_under_its_local_date(workdir, make_recorder):
    # 00:36 on 1 December in Beijing = 16:36 on 30 November UTC
    rec = make_recorder(start=datetime(2026, 12, 1, 0, 36, tzinfo=TZ), segments=2)
    r = run_dockd("ingest", str(rec), "--workdir", str(workdir), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    prefix = json.loads(r.stdout)["prefix"]
    assert Path(prefix).parts[3] == "2026-12-01", prefix
    manifest = json.loads((workdir / "target" / prefix / "manifest.json").read_text())
    assert manifest["extra"]["date_folder"] == "2026-12-01"
    assert manifest["docking"]["docked_at"].endswith("+00:00")  # UTC kept in the data
    v = run_dockd("verify", str(workdir / "target"), "--workdir", str(workdir))
    assert v.returncode == 0 and "belongs under" not in v.stdout, v.stdout


RAW_ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d|\d\d:\d\d:\d\d\.\d{6}"


def test_cli_times_are_local_with_the_zone(workdir, make_recorder):
    import re

    from tests.integration.test_status_data import build_dock

    rec = make_recorder(start=datetime(2026, 12, 1, 0, 36, tzinfo=TZ), segments=2,
                        gaps={1: 120.0})
    assert run_dockd("ingest", str(rec), "--workdir", str(workdir)).returncode == 0
    rep = run_dockd("report", "--workdir", str(workdir)).stdout
    assert "UTC+8" in rep and "00:36:" in rep, rep  # local, not 16:36 UTC of the day before
    assert not re.search(RAW_ISO, rep), rep

    dock = build_dock(workdir.parent / "hand")  # a backlog with deadlines
    for cmd in ("status", "queue"):
        out = run_dockd(cmd, "--workdir", str(workdir.parent / "hand")).stdout
        assert "UTC+8" in out, (cmd, out)
        assert not re.search(RAW_ISO, out), (cmd, out)
    assert dock.now.tzinfo is not None

    dev = run_dockd("devices", "--workdir", str(workdir)).stdout
    assert "Asia/Shanghai, UTC+8" in dev and not re.search(RAW_ISO, dev), dev
