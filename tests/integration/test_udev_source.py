"""UdevSource end to end with a fake udev database and an injected mounter: the same
snapshot/reconcile/allow-list code the daemon uses, without hardware or root."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dockd.config import AllowConfig, Config, DevicesConfig, PortMapConfig
from dockd.devices import udev, udev_edge, watch
from dockd.devices.mount import FsckResult, MountError, MountResult
from dockd.devices.udev import UdevSource
from dockd.devices.udev_core import (
    Docked,
    Foreign,
    ForeignGone,
    MountFailed,
    UdevHint,
    Undocked,
)

FIX = Path(__file__).parents[1] / "fixtures" / "udev"


def props(name: str, **over: str) -> dict[str, str]:
    d = json.loads((FIX / f"{name}.json").read_text())
    d.update(over)
    return d


class FakeUdev:
    def __init__(self) -> None:
        self.db: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()

    def add(self, *items: dict[str, str]) -> None:
        with self.lock:
            for p in items:
                self.db[p["DEVNAME"]] = p

    def remove(self, *devnodes: str) -> None:
        with self.lock:
            for d in devnodes:
                self.db.pop(d, None)

    def __call__(self) -> list[dict[str, str]]:
        with self.lock:
            return [dict(p) for p in self.db.values()]


class FakeMounter:
    def __init__(self, root: Path, fail: int = 0, fsck_verdict: str = "clean"):
        self.root = root
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail
        self.fsck_verdict = fsck_verdict
        self.lock = threading.Lock()

    def fsck(self, devnode: str, port: str) -> FsckResult:
        with self.lock:
            self.calls.append(("fsck", devnode, port))
        return FsckResult(devnode, self.fsck_verdict, 0, "1 files, 2 clusters")

    def mount(self, devnode: str, port: str) -> MountResult:
        with self.lock:
            self.calls.append(("mount", devnode, port))
            if self.fail:
                self.fail -= 1
                raise MountError("helper said no", code="failed")
        (self.root / port).mkdir(parents=True, exist_ok=True)
        return MountResult(port, devnode, self.root / port, "vfat", "ro")

    def unmount(self, port: str) -> bool:
        with self.lock:
            self.calls.append(("unmount", port))
        return True

    def devnodes(self) -> set[str]:
        return {c[1] for c in self.calls if c[0] in ("mount", "fsck")}


def make_cfg(tmp_path: Path, **devices: Any) -> Config:
    return Config(
        devices=DevicesConfig(source="udev", mount_root=tmp_path / "mnt",
                              rescan_seconds=devices.pop("rescan_seconds", 60.0), **devices),
        allow=(AllowConfig(vendor_id="2e8a", model_id="0001", serial_pattern="[A-Z0-9]{8}",
                           profile="zfy-generic", label="DSJ"),),
        port_map=(PortMapConfig(path="pci-0000:00:14.0-usb-0:1.3", port="port-03"),))


@pytest.fixture
def fake() -> FakeUdev:
    return FakeUdev()


@pytest.fixture
def source_factory(tmp_path: Path, fake: FakeUdev):
    made: list[UdevSource] = []

    def make(mounter: FakeMounter | None = None, **devices: Any) -> tuple[UdevSource, FakeMounter]:
        m = mounter or FakeMounter(tmp_path / "mnt")
        src = UdevSource(make_cfg(tmp_path, **devices), mounter=m, enumerate_devices=fake,
                         use_monitor=False, mount_workers=2)
        src.start()
        made.append(src)
        return src, m

    yield make
    for s in made:
        s.stop()


def poll_until(src: UdevSource, pred: Callable[[list[Any]], bool], timeout: float = 5.0,
               hint: bool = True) -> list[Any]:
    if hint:
        src.push_hint(UdevHint("change", "/dev/sdb", ""))
    got: list[Any] = []
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred(got):
        got += src.poll(timeout=0.2)
    return got


def test_recorder_docks_with_mount_point_and_hints(source_factory, fake: FakeUdev) -> None:
    src, m = source_factory()
    assert src.poll(timeout=0.1) == []
    fake.add(props("recorder_disk"), props("recorder_part1"))
    evs = poll_until(src, lambda e: any(isinstance(x, Docked) for x in e))
    (ev,) = [e for e in evs if isinstance(e, Docked)]
    assert isinstance(ev, watch.Docked)  # the daemon's isinstance check holds
    assert ev.port == "port-03" and ev.root == m.root / "port-03"
    assert ev.hints["ID_SERIAL_SHORT"] == "A1B2C3D4" and ev.hints["ID_FS_TYPE"] == "vfat"
    assert ev.hints["DOCKD_FSCK"] == "clean" and ev.hints["DOCKD_PROFILE"] == "zfy-generic"
    assert m.calls == [("fsck", "/dev/sdb1", "port-03"), ("mount", "/dev/sdb1", "port-03")]
    assert src.docked == {"port-03": m.root / "port-03"}


def test_duplicate_hints_dock_once(source_factory, fake: FakeUdev) -> None:
    src, m = source_factory()
    fake.add(props("recorder_part1"), props("recorder_disk"))  # partition event first
    for _ in range(5):
        src.push_hint(UdevHint("add", "/dev/sdb1", ""))
    evs = poll_until(src, lambda e: False, timeout=1.5)
    assert [type(e) for e in evs] == [Docked]
    assert [c[0] for c in m.calls] == ["fsck", "mount"]


def test_foreign_device_is_never_mounted(source_factory, fake: FakeUdev) -> None:
    src, m = source_factory()
    fake.add(props("stick_disk"), props("stick_part1"), props("sata_disk"), props("sata_part2"))
    evs = poll_until(src, lambda e: any(isinstance(x, Foreign) for x in e))
    (ev,) = evs
    assert isinstance(ev, Foreign) and ev.devnode == "/dev/sdc" and ev.vendor_id == "0781"
    assert list(src.foreign) == [ev.port]
    poll_until(src, lambda e: False, timeout=0.6)
    assert m.calls == []  # neither fsck nor mount nor anything else touched it
    fake.remove("/dev/sdc", "/dev/sdc1")
    assert poll_until(src, lambda e: bool(e)) == [ForeignGone(ev.port)]
    assert src.foreign == {}
    assert m.calls == []


def test_recorder_serial_not_matching_is_foreign(source_factory, fake: FakeUdev) -> None:
    src, m = source_factory()
    fake.add(props("recorder_disk", ID_SERIAL_SHORT="bad serial"),
             props("recorder_part1", ID_SERIAL_SHORT="bad serial"))
    evs = poll_until(src, lambda e: bool(e))
    assert [type(e) for e in evs] == [Foreign]
    poll_until(src, lambda e: False, timeout=0.5)
    assert m.devnodes() == set()


def test_missing_remove_event_found_by_slow_rescan(source_factory, fake: FakeUdev) -> None:
    src, m = source_factory(rescan_seconds=0.5)
    fake.add(props("recorder_disk"), props("recorder_part1"))
    poll_until(src, lambda e: any(isinstance(x, Docked) for x in e))
    fake.remove("/dev/sdb", "/dev/sdb1")  # unplugged, and the event was lost
    evs = poll_until(src, lambda e: bool(e), hint=False)
    assert evs == [Undocked("port-03")]
    poll_until(src, lambda e: False, timeout=0.3, hint=False)
    assert m.calls[-1] == ("unmount", "port-03")
    assert src.docked == {}


def test_replug_without_remove_event_unmounts_before_mounting_again(source_factory,
                                                                    fake: FakeUdev) -> None:
    src, m = source_factory()
    fake.add(props("recorder_disk"), props("recorder_part1"))
    poll_until(src, lambda e: any(isinstance(x, Docked) for x in e))
    fake.remove("/dev/sdb", "/dev/sdb1")
    fake.add(props("recorder_disk", DEVNAME="/dev/sdd", USEC_INITIALIZED="7000000000"),
             props("recorder_part1", DEVNAME="/dev/sdd1", USEC_INITIALIZED="7000000001"))
    evs = poll_until(src, lambda e: any(isinstance(x, Docked) for x in e))
    assert [type(e) for e in evs] == [Undocked, Docked]
    assert [c[0] for c in m.calls] == ["fsck", "mount", "unmount", "fsck", "mount"]
    assert m.calls[-1] == ("mount", "/dev/sdd1", "port-03")


def test_partition_appearing_late(source_factory, fake: FakeUdev) -> None:
    src, m = source_factory()
    fake.add(props("recorder_disk"))
    assert poll_until(src, lambda e: False, timeout=0.5) == []
    fake.add(props("recorder_part1"))
    evs = poll_until(src, lambda e: bool(e))
    assert [type(e) for e in evs] == [Docked]
    assert m.devnodes() == {"/dev/sdb1"}


def test_recorder_without_filesystem_reported_after_grace(source_factory, fake: FakeUdev,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(udev, "UNUSABLE_GRACE_SECONDS", 0.3)
    src, m = source_factory(rescan_seconds=0.5)
    fake.add(props("recorder_disk"))
    evs = poll_until(src, lambda e: bool(e), timeout=3)
    assert len(evs) == 1 and isinstance(evs[0], MountFailed) and evs[0].port == "port-03"
    assert m.calls == []


def test_mount_failure_is_reported_and_retried(source_factory, fake: FakeUdev,
                                               tmp_path: Path) -> None:
    src, m = source_factory(FakeMounter(tmp_path / "mnt", fail=1), rescan_seconds=0.5, fsck=False)
    fake.add(props("recorder_disk"), props("recorder_part1"))
    evs = poll_until(src, lambda e: any(isinstance(x, Docked) for x in e), timeout=5)
    assert [type(e) for e in evs] == [MountFailed, Docked]
    assert "helper said no" in evs[0].reason
    assert [c[0] for c in m.calls] == ["mount", "mount"]


def test_release_and_stop_unmount(source_factory, fake: FakeUdev) -> None:
    src, m = source_factory(fsck=False)
    fake.add(props("recorder_disk"), props("recorder_part1"))
    poll_until(src, lambda e: any(isinstance(x, Docked) for x in e))
    src.release("port-03")
    poll_until(src, lambda e: False, timeout=0.5, hint=False)
    assert m.calls[-1] == ("unmount", "port-03")
    assert "port-03" in src.docked  # still docked until unplugged
    src.stop()
    assert m.calls[-1] == ("unmount", "port-03")


def test_poll_before_start_is_an_error(tmp_path: Path) -> None:
    src = UdevSource(make_cfg(tmp_path), mounter=FakeMounter(tmp_path), enumerate_devices=list,
                     use_monitor=False)
    with pytest.raises(RuntimeError):
        src.poll(timeout=0)


def test_real_pyudev_enumeration_and_monitor(tmp_path: Path) -> None:
    """The pyudev edge runs here (no USB devices, maybe no udevd): no events, no errors."""
    pytest.importorskip("pyudev")
    found = udev_edge.list_block_properties()
    assert all(isinstance(p, dict) for p in found)
    m = FakeMounter(tmp_path / "mnt")
    src = UdevSource(make_cfg(tmp_path), mounter=m, use_monitor=True)
    src.start()
    try:
        assert [e for e in src.poll(timeout=0.3) if not isinstance(e, Foreign)] == []
    finally:
        src.stop()
    assert m.calls == []
