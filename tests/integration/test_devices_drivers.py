"""Recorder drivers: selection by specificity, and what a snapshot reads off a recorder."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dockd.config import Config, ProfileConfig
from dockd.devices import drivers
from dockd.devices.drivers import (
    DriverRegistry,
    FakeDriver,
    GenericMassStorageDriver,
    ProfileDriver,
    RecorderDriver,
    registry_from_config,
)
from dockd.devices.infofile import write_info
from dockd.devices.simulator import RecorderSpec, simulate_recorder
from dockd.errors import DockdError, RecorderGone
from dockd.model import RecorderHealth, RecorderIdentity, RecorderSnapshot

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 23, 2, 0, 0, tzinfo=UTC)


def make_info(root: Path, name: str = "ZFY_INFO.INI", mtime: datetime | None = NOW,
              **fields: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    base = {"cSerial": "A1234567", "userNo": "012345", "userName": "张三", "Model": "DSJ-SIM1",
            "Battery": "87", "DeviceTime": "2026-11-23 10:00:30"}
    base.update(fields)
    path = root / name
    write_info(path, {k: v for k, v in base.items() if v is not None}, "gbk")
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


@pytest.fixture(scope="module")
def skewed_recorder(tmp_path_factory: pytest.TempPathFactory):
    cfg = Config()
    root = tmp_path_factory.mktemp("skewed") / "rec"
    spec = RecorderSpec(serial="S0000001", clock_offset_s=86400, segments=1,
                        segment_seconds=1.0)
    return simulate_recorder(root, spec, profile=cfg.profiles[0], tz=cfg.tz, tools=cfg.tools,
                             now=NOW)


def test_drivers_satisfy_the_protocol() -> None:
    snap = RecorderSnapshot(RecorderIdentity("X"), RecorderHealth(), Path("/"), "", "fake")
    for d in (ProfileDriver(ProfileConfig(), TZ), GenericMassStorageDriver(), FakeDriver(snap)):
        assert isinstance(d, RecorderDriver)


def test_simulated_recorder_snapshot(skewed_recorder) -> None:
    registry = registry_from_config(Config())
    driver = registry.select(skewed_recorder.root, {})
    assert driver.name == "profile:zfy-generic"
    snap = driver.snapshot(skewed_recorder.root, {"ID_SERIAL_SHORT": "IGNORED"}, now=NOW)
    assert snap.identity == RecorderIdentity(
        serial="S0000001", officer_no="012345", officer_name="张三", unit_no="110105000000",
        unit_name="北京市公安局朝阳分局", model="DSJ-SIM1", vendor="SimCam")
    assert snap.health.battery_percent == 87
    assert snap.health.firmware == "V2.3.1"
    assert snap.health.clock_offset_s == pytest.approx(86400, abs=1.5)
    assert snap.health.clock_reference == NOW
    assert snap.health.storage_total and snap.health.storage_total > 0
    assert 0 <= (snap.health.storage_free or 0) <= snap.health.storage_total
    assert snap.profile == "zfy-generic" and snap.driver == driver.name
    assert snap.raw_info["cSerial"] == "S0000001" and "DeviceTime" in snap.raw_info
    assert snap.root == skewed_recorder.root


def test_device_time_is_local_time_of_the_configured_zone(tmp_path: Path) -> None:
    make_info(tmp_path, DeviceTime="2026-11-23 10:00:30")  # 02:00:30 UTC in Shanghai
    snap = ProfileDriver(ProfileConfig(), TZ).snapshot(tmp_path, {}, now=NOW)
    assert snap.health.recorder_clock == datetime(2026, 11, 23, 2, 0, 30, tzinfo=UTC)
    assert snap.health.clock_offset_s == pytest.approx(30)
    utc = ProfileDriver(ProfileConfig(), ZoneInfo("UTC")).snapshot(tmp_path, {}, now=NOW)
    assert utc.health.clock_offset_s == pytest.approx(8 * 3600 + 30)


@pytest.mark.parametrize("mtime", [datetime(1980, 1, 1, tzinfo=UTC), NOW + timedelta(days=3)])
def test_absurd_info_mtime_falls_back_to_now(tmp_path: Path, mtime: datetime) -> None:
    make_info(tmp_path, mtime=mtime)
    snap = ProfileDriver(ProfileConfig(), TZ).snapshot(tmp_path, {}, now=NOW)
    assert snap.health.clock_reference == NOW


def test_info_file_mtime_is_the_reference_even_when_read_later(tmp_path: Path) -> None:
    written = NOW - timedelta(hours=2)
    make_info(tmp_path, mtime=written, DeviceTime="2026-11-23 08:00:05")  # 00:00:05 UTC
    snap = ProfileDriver(ProfileConfig(), TZ).snapshot(tmp_path, {}, now=NOW)
    assert snap.health.clock_reference == written
    assert snap.health.clock_offset_s == pytest.approx(5)


@pytest.mark.parametrize("battery,expected", [("87", 87), ("5%", 5), ("", None), ("abc", None),
                                              ("150", None), ("-3", None), ("８７", None)])
def test_battery_parsing(tmp_path: Path, battery: str, expected: int | None) -> None:
    make_info(tmp_path, Battery=battery)
    snap = ProfileDriver(ProfileConfig(), TZ).snapshot(tmp_path, {}, now=NOW)
    assert snap.health.battery_percent == expected


def test_missing_fields_fall_back_to_udev_hints(tmp_path: Path) -> None:
    make_info(tmp_path, cSerial=None, DeviceTime=None, Model=None)
    hints = {"ID_SERIAL_SHORT": "USB0042", "ID_MODEL": "DSJ-X", "ID_VENDOR": "Acme"}
    snap = ProfileDriver(ProfileConfig(), TZ).snapshot(tmp_path, hints, now=NOW)
    assert snap.identity.serial == "USB0042"
    assert snap.identity.model == "DSJ-X" and snap.identity.vendor == "Acme"
    assert snap.health.recorder_clock is None and snap.health.clock_offset_s is None


def test_garbage_info_file_does_not_crash(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "ZFY_INFO.INI").write_bytes(os.urandom(3000) + b"\nBattery=\xff\xfe\n")
    snap = ProfileDriver(ProfileConfig(), TZ).snapshot(tmp_path, {}, now=NOW)
    assert snap.identity.serial == tmp_path.name
    assert snap.health.battery_percent is None


def test_info_file_name_is_case_insensitive(tmp_path: Path) -> None:
    make_info(tmp_path, name="zfy_info.ini")
    driver = ProfileDriver(ProfileConfig(), TZ)
    assert driver.match(tmp_path, {}) == drivers.SCORE_INFO_FILE
    assert driver.snapshot(tmp_path, {}, now=NOW).identity.serial == "A1234567"


def test_symlinked_info_file_is_not_trusted(tmp_path: Path) -> None:
    real = make_info(tmp_path / "elsewhere")
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "ZFY_INFO.INI").symlink_to(real)
    assert ProfileDriver(ProfileConfig(), TZ).match(rec, {}) == 0


def test_most_specific_driver_wins(tmp_path: Path) -> None:
    make_info(tmp_path, Model="DSJ-V7 Pro")
    generic_profile = ProfileConfig(name="any")
    v7 = ProfileConfig(name="v7", match_models=("dsj-v7*",))
    other = ProfileConfig(name="x9", match_models=("DSJ-X9*",))
    reg = DriverRegistry([ProfileDriver(generic_profile, TZ), ProfileDriver(other, TZ),
                          ProfileDriver(v7, TZ), GenericMassStorageDriver()])
    scores = {d.name: s for d, s in reg.scores(tmp_path, {})}
    assert scores == {"profile:any": 10, "profile:x9": 0, "profile:v7": 20, "generic": 1}
    assert reg.select(tmp_path, {}).name == "profile:v7"
    assert reg.snapshot(tmp_path, {}, now=NOW).profile == "v7"


def test_ties_go_to_the_first_registered(tmp_path: Path) -> None:
    make_info(tmp_path)
    a, b = ProfileConfig(name="a"), ProfileConfig(name="b")
    assert DriverRegistry([ProfileDriver(a, TZ), ProfileDriver(b, TZ)]).select(
        tmp_path, {}).name == "profile:a"
    assert DriverRegistry([ProfileDriver(b, TZ), ProfileDriver(a, TZ)]).select(
        tmp_path, {}).name == "profile:b"


def test_generic_fallback_without_info_file(tmp_path: Path) -> None:
    root = tmp_path / "port-03"
    (root / "DCIM").mkdir(parents=True)
    reg = registry_from_config(Config())
    driver = reg.select(root, {})
    assert driver.name == "generic"
    snap = driver.snapshot(root, {}, now=NOW)
    assert snap.identity.serial == "port-03"
    assert snap.health.battery_percent is None and snap.health.clock_offset_s is None
    assert snap.health.storage_total and snap.profile == ""
    hinted = driver.snapshot(root, {"ID_SERIAL": "Vendor_Disk_123"}, now=NOW)
    assert hinted.identity.serial == "Vendor_Disk_123"
    assert reg.snapshot(root, {"ID_SERIAL_SHORT": "S1", "ID_SERIAL": "x"},
                        now=NOW).identity.serial == "S1"


def test_gone_recorder_raises_recorder_gone(tmp_path: Path) -> None:
    reg = registry_from_config(Config())
    with pytest.raises(RecorderGone):
        reg.select(tmp_path / "absent", {})
    with pytest.raises(RecorderGone):
        ProfileDriver(ProfileConfig(), TZ).snapshot(tmp_path / "absent", {}, now=NOW)
    assert RecorderGone.retry


def test_empty_registry_raises_dockd_error(tmp_path: Path) -> None:
    with pytest.raises(DockdError):
        DriverRegistry([]).select(tmp_path, {})


def test_fake_driver_outranks_and_records_calls(tmp_path: Path) -> None:
    make_info(tmp_path)
    canned = RecorderSnapshot(RecorderIdentity("FAKE1"), RecorderHealth(battery_percent=3),
                              Path("/nowhere"), "p", "fake")
    fake = FakeDriver(canned)
    reg = DriverRegistry([*registry_from_config(Config()).drivers, fake])
    snap = reg.snapshot(tmp_path, {}, now=NOW)
    assert snap.identity.serial == "FAKE1" and snap.root == tmp_path
    assert ("snapshot", tmp_path) in fake.calls
    other = tmp_path / "other"
    other.mkdir()
    picky = FakeDriver(canned, roots=frozenset({tmp_path}))
    assert DriverRegistry([GenericMassStorageDriver(), picky]).select(other, {}).name == "generic"


def test_fake_driver_handler_and_broken_driver(tmp_path: Path) -> None:
    def handler(root, hints, now):
        return RecorderSnapshot(RecorderIdentity(hints["ID_SERIAL"]), RecorderHealth(), root,
                                "", "fake")

    class Broken:
        name = "broken"

        def match(self, root, hints):
            raise OSError("boom")

        def snapshot(self, root, hints, *, now):  # pragma: no cover - never selected
            raise AssertionError

    reg = DriverRegistry([Broken(), FakeDriver(handler, score=5)])
    assert reg.snapshot(tmp_path, {"ID_SERIAL": "H1"}, now=NOW).identity.serial == "H1"


def test_naive_now_is_rejected(tmp_path: Path) -> None:
    make_info(tmp_path)
    with pytest.raises(ValueError):
        ProfileDriver(ProfileConfig(), TZ).snapshot(tmp_path, {}, now=datetime(2026, 1, 1))


def test_parse_device_time_formats() -> None:
    expected = datetime(2026, 11, 23, 1, 2, 3, tzinfo=UTC)
    for text in ("2026-11-23 09:02:03", "2026/11/23 09:02:03", "20261123090203",
                 " 2026-11-23T09:02:03 "):
        assert drivers.parse_device_time(text, TZ) == expected
    assert drivers.parse_device_time("yesterday", TZ) is None
