"""Who a recorder is when it has no device-info file: its clip names say so
(``<serial>_<officer>_<time>_<seq>``, the profile's named groups); and a directory that holds
nothing of a recorder is refused by ``dockd ingest`` (no empty signed manifest)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from dockd.config import Config, ProfileConfig
from dockd.devices.drivers import ProfileDriver, identity_from_names, registry_from_config
from tests.conftest import run_dockd

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
TZ = ZoneInfo("Asia/Shanghai")


def _names_only(root: Path, names: list[str]) -> Path:
    (root / "DCIM" / "100").mkdir(parents=True)
    for n in names:
        (root / "DCIM" / "100" / n).write_bytes(b"x" * 10)
    return root


def test_serial_and_officer_from_clip_names(tmp_path):
    root = _names_only(tmp_path / "port-02", [
        "B7654321_023456_20261201003600_0001.MP4", "B7654321_023456_20261201003700_0002.MP4",
        "notes.txt"])
    reg = registry_from_config(Config())
    snap = reg.snapshot(root, {"ID_SERIAL_SHORT": "USBCHIP0001"}, now=NOW)
    assert snap.identity.serial == "B7654321" and snap.identity.officer_no == "023456"
    assert snap.profile == "zfy-generic"


def test_names_without_serial_group_or_matching_files_give_nothing(tmp_path):
    root = _names_only(tmp_path / "r", ["MOVIE0001.MP4"])
    assert identity_from_names(root, ProfileConfig()) is None
    no_group = ProfileConfig(file_pattern=r"^(?P<start>\d{14})\.MP4$")
    assert identity_from_names(root, no_group) is None
    assert ProfileDriver(ProfileConfig(), TZ).match(root, {}) == 0
    assert registry_from_config(Config()).snapshot(root, {}, now=NOW).identity.serial == "r"


def test_most_common_serial_wins_and_officer_never_from_another_recorder(tmp_path):
    root = _names_only(tmp_path / "r", [
        "A1_0001_20261201003600_0001.MP4", "A1_0001_20261201003700_0002.MP4",
        "Z9_0009_20261201003800_0003.MP4"])
    assert identity_from_names(root, ProfileConfig()) == ("A1", "0001")


def test_ingest_without_info_file_files_under_serial_and_officer(workdir, make_recorder):
    rec = make_recorder(serial="C3000003", officer_no="034567", segments=2)
    (rec / "ZFY_INFO.INI").unlink()
    r = run_dockd("ingest", str(rec), "--workdir", str(workdir), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    prefix = json.loads(r.stdout)["prefix"]
    parts = Path(prefix).parts
    assert parts[1:3] == ("034567", "C3000003"), prefix
    assert "_unknown" not in parts[1:3]


def test_ingest_of_a_directory_without_recorder_files_is_refused(workdir, tmp_path):
    notrec = tmp_path / "notrec"
    (notrec / "docs").mkdir(parents=True)
    (notrec / "docs" / "readme.txt").write_text("hello", encoding="utf-8")
    (notrec / "DCIM").mkdir()
    r = run_dockd("ingest", str(notrec), "--workdir", str(workdir))
    assert r.returncode != 0
    assert "no recorder files" in r.stderr and "Traceback" not in r.stderr
    target = workdir / "target"
    assert not target.exists() or not list(target.rglob("manifest.json"))
    assert not (workdir / "state" / "dockd.db").exists() or run_dockd(
        "status", "--workdir", str(workdir), "--json").stdout.count('"docking_id"') == 0
