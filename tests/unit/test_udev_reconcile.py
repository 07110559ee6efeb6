"""The pure udev core: port paths, allow-list, snapshots and reconcile, on recorded
udev property sets (tests/fixtures/udev, shaped like `udevadm info --query=property`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockd.config import AllowConfig, PortMapConfig
from dockd.devices.ports import (
    PortMap,
    allowed_rule,
    derived_label,
    port_path,
    valid_port_label,
)
from dockd.devices.udev_core import Appeared, BlockDevice, Left, reconcile, snapshot

FIX = Path(__file__).parents[1] / "fixtures" / "udev"
ALLOW = (AllowConfig(vendor_id="2E8A", model_id="0001", serial_pattern="[A-Z0-9]{8}",
                     profile="zfy-generic", label="DSJ"),)
PMAP = [PortMapConfig(path="pci-0000:00:14.0-usb-0:1.3:1.0-scsi-0:0:0:0", port="port-03")]


def props(name: str, **over: str) -> dict[str, str]:
    d = json.loads((FIX / f"{name}.json").read_text())
    d.update(over)
    return d


def devs(*items: dict[str, str]) -> list[BlockDevice]:
    return [BlockDevice.from_properties(p) for p in items]


def snap(*items: dict[str, str], pmap: PortMap | None = None):
    return snapshot(devs(*items), pmap or PortMap(PMAP), ALLOW)


ALL = ["recorder_disk", "recorder_part1", "stick_disk", "stick_part1", "sata_disk", "sata_part2"]


# --------------------------------------------------------------------------- port map


@pytest.mark.parametrize("id_path", [
    "pci-0000:00:14.0-usb-0:1.3:1.0-scsi-0:0:0:0",
    "pci-0000:00:14.0-usb-0:1.3:1.0-scsi-0:0:0:1",
    "pci-0000:00:14.0-usb-0:1.3:1.0",
    "pci-0000:00:14.0-usb-0:1.3",
    "pci-0000:00:14.0-usbv3-0:1.3:1.0-scsi-0:0:0:0",
])
def test_port_path_keeps_only_the_hub_port(id_path: str) -> None:
    assert port_path(id_path) == "pci-0000:00:14.0-usb-0:1.3"


def test_port_path_of_other_buses_and_deeper_hubs() -> None:
    assert port_path("pci-0000:00:14.0-usb-0:1.3.2:1.0-scsi-0:0:0:0") == \
        "pci-0000:00:14.0-usb-0:1.3.2"
    assert port_path("pci-0000:00:17.0-ata-1.0-part2") == "pci-0000:00:17.0-ata-1.0"
    assert port_path("platform-xhci-hcd.0.auto-usb-0:1:1.0-scsi-0:0:0:0") == \
        "platform-xhci-hcd.0.auto-usb-0:1"


def test_mapped_and_unmapped_ports(caplog: pytest.LogCaptureFixture) -> None:
    pm = PortMap(PMAP)
    assert pm.lookup(props("recorder_part1")["ID_PATH"]) == ("port-03", True)
    label, mapped = pm.lookup(props("stick_disk")["ID_PATH"])
    assert not mapped and label == derived_label("pci-0000:00:14.0-usb-0:1.4")
    assert label.startswith("usb-1.4-") and valid_port_label(label)
    assert pm.lookup(props("stick_disk")["ID_PATH"]) == (label, False)  # stable
    assert sum("not in port_map" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("label,ok", [("port-03", True), ("usb-1.3-ab12", True), ("", False),
                                      ("..", False), ("../etc", False), ("a/b", False),
                                      (".hidden", False), ("port 3", False), ("x" * 65, False)])
def test_port_label_validation(label: str, ok: bool) -> None:
    assert valid_port_label(label) is ok


# --------------------------------------------------------------------------- allow-list


def test_allow_list() -> None:
    assert allowed_rule(props("recorder_disk"), ALLOW) is ALLOW[0]  # hex compares case-blind
    assert allowed_rule(props("recorder_part1"), ALLOW) is ALLOW[0]
    assert allowed_rule(props("stick_disk"), ALLOW) is None
    assert allowed_rule(props("recorder_disk", ID_SERIAL_SHORT="a1b2"), ALLOW) is None
    assert allowed_rule(props("recorder_disk", ID_SERIAL_SHORT="A1B2C3D4X"), ALLOW) is None
    assert allowed_rule(props("recorder_disk", ID_MODEL_ID="0002"), ALLOW) is None
    any_model = (AllowConfig(vendor_id="2e8a"),)
    assert allowed_rule(props("recorder_disk", ID_MODEL_ID="0002"), any_model) is any_model[0]
    # the same IDs on another bus are never a recorder
    assert allowed_rule(props("recorder_disk", ID_BUS="ata"), ALLOW) is None


# --------------------------------------------------------------------------- snapshots


def test_partition_with_filesystem_is_preferred_over_its_disk() -> None:
    views = snap(*(props(n) for n in ALL))
    rec = views["port-03"]
    assert rec.kind == "recorder" and rec.device is not None
    assert rec.device.devnode == "/dev/sdb1" and rec.device.fs_type == "vfat"
    assert rec.rule is ALLOW[0]


def test_superfloppy_recorder_uses_the_whole_disk() -> None:
    disk = props("recorder_disk", ID_FS_TYPE="exfat", ID_FS_UUID="1234-5678")
    assert snap(disk)["port-03"].device.devnode == "/dev/sdb"  # type: ignore[union-attr]
    both = snap(disk, props("recorder_part1"))
    assert both["port-03"].device.devnode == "/dev/sdb1"  # type: ignore[union-attr]


def test_disk_without_filesystem_yet_is_a_recorder_without_volume() -> None:
    view = snap(props("recorder_disk"))["port-03"]
    assert view.kind == "recorder" and view.device is None


def test_foreign_stick_and_sata_disk() -> None:
    views = snap(*(props(n) for n in ALL))
    foreign = [v for v in views.values() if v.kind == "foreign"]
    assert len(foreign) == 1 and foreign[0].device.devnode == "/dev/sdc"  # type: ignore[union-attr]
    assert not foreign[0].mapped
    assert all("sda" not in (v.device.devnode if v.device else "") for v in views.values())
    assert len(views) == 2


def test_uninitialised_devices_are_not_yet_seen() -> None:
    assert snap(props("recorder_disk", USEC_INITIALIZED=""),
                props("recorder_part1", USEC_INITIALIZED="")) == {}


# --------------------------------------------------------------------------- reconcile


def test_reconcile_appear_leave_and_replug() -> None:
    empty: dict = {}
    one = snap(props("recorder_disk"), props("recorder_part1"))
    assert reconcile(empty, one) == [Appeared(one["port-03"])]
    assert reconcile(one, one) == []
    assert reconcile(one, empty) == [Left(one["port-03"])]
    replug = snap(props("recorder_disk", USEC_INITIALIZED="9999999999"),
                  props("recorder_part1", USEC_INITIALIZED="9999999999", DEVNAME="/dev/sdd1"))
    assert reconcile(one, replug) == [Left(one["port-03"]), Appeared(replug["port-03"])]


def test_partition_arriving_after_its_disk() -> None:
    disk_only = snap(props("recorder_disk"))
    full = snap(props("recorder_disk"), props("recorder_part1"))
    changes = reconcile(disk_only, full)
    assert changes == [Left(disk_only["port-03"]), Appeared(full["port-03"])]
    assert changes[0].view.device is None  # nothing was mounted for the disk-only view


def test_a_change_event_with_the_same_identity_changes_nothing() -> None:
    a = snap(props("recorder_disk"), props("recorder_part1"))
    b = snap(props("recorder_disk", ID_FS_LABEL="OTHER"),
             props("recorder_part1", SEQNUM="812", ACTION="change"))
    assert reconcile(a, b) == []


def _apply(db: dict[str, dict[str, str]], event: tuple[str, dict[str, str]]) -> None:
    action, p = event
    if action == "remove":
        db.pop(p["DEVNAME"], None)
    else:
        db[p["DEVNAME"]] = p


def _events() -> list[tuple[str, dict[str, str]]]:
    return [("add", props(n)) for n in ALL] + [("change", props("recorder_part1"))]


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 3))
def test_duplicate_out_of_order_and_missing_events(rnd: random.Random, dups: int) -> None:
    """Whatever order, duplication or loss of intermediate events: the final
    snapshot (what udev's database holds) decides, and reconcile from nothing to it gives
    one Appeared per port."""
    events = _events()
    events += [rnd.choice(events) for _ in range(dups)]  # duplicates
    rnd.shuffle(events)  # out of order
    db: dict[str, dict[str, str]] = {}
    seen: dict = {}
    emitted = []
    for ev in events:
        _apply(db, ev)
        if rnd.random() < 0.5:  # a missed hint: no re-enumeration this time
            continue
        new = snap(*db.values())
        emitted += reconcile(seen, new)
        seen = new
    final = snap(*db.values())
    emitted += reconcile(seen, final)
    assert final == snap(*(props(n) for n in ALL))
    # net effect: exactly the final ports are present
    present: dict = {}
    for ch in emitted:
        if isinstance(ch, Appeared):
            present[ch.view.port] = ch.view
        else:
            assert present.pop(ch.view.port) == ch.view
    assert present == final


def test_missing_remove_event_is_caught_by_the_next_snapshot() -> None:
    before = snap(*(props(n) for n in ALL))
    after = snap(props("sata_disk"), props("sata_part2"))  # both USB devices gone, no event
    changes = reconcile(before, after)
    assert sorted(c.view.kind for c in changes) == ["foreign", "recorder"]
    assert all(isinstance(c, Left) for c in changes)
