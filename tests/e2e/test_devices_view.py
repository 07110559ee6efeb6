"""``dockd devices``: data and rendering from a state filled by the real pipeline."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console

from dockd.config import Config
from dockd.oneshot import ingest_tree
from dockd.status.commands import add_devices_parser
from dockd.status.devices import cmd_devices, devices_data, render_devices
from dockd.store import State, parse_iso
from tests.e2e.test_health_hooks import pin_ntp, sim, with_profile


def render(data: dict) -> str:
    console = Console(record=True, width=100, color_system=None)
    console.print(render_devices(data))
    return console.export_text()


def flat(text: str) -> str:
    return " ".join(text.split())


def test_fleet_view_unfit_first_with_gbk_names(cfg: Config, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pin_ntp(monkeypatch)
    a = sim(cfg, tmp_path / "a", serial="A1111111", battery=95)
    b = sim(cfg, tmp_path / "b", serial="B2222222", officer_no="054321", officer_name="李四",
            battery=30, clock_offset_s=86400)
    info = (b / cfg.profiles[0].info_file).read_bytes()
    assert "李四".encode("gbk") in info and "李四".encode() not in info  # a GBK info file
    assert ingest_tree(cfg, a, port="p1", create_key=True)["ok"]
    assert ingest_tree(cfg, b, port="p2", create_key=True)["ok"]
    with State(cfg.paths.database) as st:
        st.conn.execute("UPDATE clips SET state = 'signed' WHERE id = (SELECT min(id) FROM "
                        "clips WHERE serial = 'A1111111')")  # one clip not delivered yet
        now = st.clock()
        just_docked = devices_data(st, cfg, now, dock_clock=(True, "timedatectl: yes"))
        later = devices_data(st, cfg, now + timedelta(hours=3), dock_clock=(None, "?"))
        one = devices_data(st, cfg, now, serial="B2222222")
    json.dumps(later, ensure_ascii=False)  # plain data

    assert [r["serial"] for r in later["recorders"]] == ["B2222222", "A1111111"]
    b_rec, a_rec = later["recorders"]
    assert b_rec["officer_name"] == "李四" and a_rec["officer_name"] == "张三"
    assert a_rec["unit_name"] == "北京市公安局朝阳分局"
    assert b_rec["verdict"]["fit"] is False and later["unfit"] == 1
    assert b_rec["verdict"]["reasons"] == ["battery 30% < 80% after 3 h 00 min docked",
                                           "clock off by +86400 s"]
    assert a_rec["verdict"]["label"] == "fit" and a_rec["verdict"]["reasons"] == []
    assert (a_rec["battery_percent"], a_rec["firmware"], a_rec["dockings"]) == (95, "V2.3.1", 1)
    assert a_rec["storage_total"] > 0 and 0 < a_rec["free_percent"] <= 100
    assert a_rec["clips_pending"] == 1 and b_rec["clips_pending"] == 0
    assert b_rec["clock_offset_s"] == 86400 and b_rec["docked_now"] == "p2"
    assert b_rec["clips_on_recorder"] == 2
    # right after docking the low battery is still charging
    b_now = just_docked["recorders"][0]
    assert b_now["serial"] == "B2222222"
    assert b_now["verdict"]["reasons"] == ["clock off by +86400 s"]
    assert b_now["verdict"]["checks"]["battery"]["status"] == "charging"

    text = render(later)
    assert "张三" in text and "李四" in text and "北京市公安局朝阳" in text
    assert "not fit for the next shift: 1" in text
    assert "NTP state unknown" in text
    assert text.index("B2222222") < text.index("A1111111")
    assert "clock off by +86400 s" in flat(text)
    assert "+86400 s" in text and "95%" in text
    assert "dock clock: NTP-synchronised" in render(just_docked)

    # one recorder: clip times as recorded and corrected by the measured offset
    clips = one["recorders"][0]["clips"]
    assert len(clips) == 2
    for c in clips:
        recorded = parse_iso(c["start_recorded"])
        corrected = parse_iso(c["start_corrected_local"])
        assert recorded is not None and corrected is not None
        assert recorded - corrected == timedelta(days=1)
    text = render(one)
    assert "clips of the last docking" in text
    assert clips[0]["start_recorded"][:10] in text and clips[0]["start_corrected_local"][:10] in text


def test_serial_history_trend_and_json_command(cfg: Config, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    pin_ntp(monkeypatch)
    a = sim(cfg, tmp_path / "a", serial="A1111111", battery=90)
    assert ingest_tree(cfg, a, port="p1", create_key=True)["ok"]
    second = ingest_tree(cfg, a, port="p1", create_key=True)  # docked again: its clips are known
    assert second["ok"] and second["skipped_known"] == 2

    parser = argparse.ArgumentParser()
    add_devices_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["devices", "--serial", "A1111111", "--json"])
    assert args.func.__name__ == "cmd_devices"  # imported when the command runs
    assert args.func(cfg, args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dock_clock"] == {"ntp_synced": True, "detail": "test: synchronised"}
    (rec,) = data["recorders"]
    assert rec["dockings"] == 2 and len(rec["history"]) == 2
    assert [h["battery"] for h in rec["history"]] == [90, 90]
    assert rec["trend"]["dockings"] == 2 and rec["trend"]["battery_change"] == 0
    assert [d["docking_id"] for d in rec["docking_list"]] == [1, 2]
    assert rec["docking_list"][1]["dock_clock"]["ntp_synced"] is True

    assert cmd_devices(cfg, parser.parse_args(["devices", "--serial", "A1111111"])) == 0
    out = capsys.readouterr().out
    assert "health per reading" in out and "trend over 2 dockings" in out and "张三" in out
    assert cmd_devices(cfg, parser.parse_args(["devices", "--serial", "NOPE"])) == 1
    assert "no recorder NOPE" in capsys.readouterr().out

    # recorders docked before the health table existed: readings come from the dockings
    with State(cfg.paths.database) as st:
        st.conn.execute("DELETE FROM recorder_health")
        data = devices_data(st, cfg, st.clock(), serial="A1111111")
    (rec,) = data["recorders"]
    assert [h["battery"] for h in rec["history"]] == [90, 90]
    assert rec["verdict"]["fit"] is True


def test_corrected_clock_is_shown_after_offload(cfg: Config, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pin_ntp(monkeypatch)
    cfg = with_profile(cfg, timeset_file="TIMESET.TXT")
    b = sim(cfg, tmp_path / "b", serial="B2222222", officer_name="李四", clock_offset_s=86400)
    assert ingest_tree(cfg, b, port="p2", create_key=True)["ok"]
    assert (b / "TIMESET.TXT").is_file()
    with State(cfg.paths.database) as st:
        data = devices_data(st, cfg, st.clock(), serial="B2222222")
    (rec,) = data["recorders"]
    assert rec["clock_set"]["old_offset_s"] == 86400
    assert rec["clock_set"]["new_time_local"] == (b / "TIMESET.TXT").read_text().strip()
    assert rec["verdict"]["fit"] is True
    assert rec["verdict"]["checks"]["clock"]["status"] == "corrected"
    text = flat(render(data))
    assert "clock was off by +86400 s" in text and "clock set by the dock" in text


def test_empty_state(cfg: Config) -> None:
    with State(cfg.paths.database) as st:
        data = devices_data(st, cfg, st.clock())
    assert data["recorders"] == [] and data["dock_clock"] is None
    assert "no recorder docked yet" in render(data)
