"""The udev source's plain data and pure core: no pyudev, no threads, no I/O.

:class:`BlockDevice` is what one enumeration saw of one block device; :func:`snapshot`
groups a whole enumeration by physical port (:mod:`.ports`), checks the allow-list and picks
the volume to mount (a partition with a vfat/exfat filesystem before its whole disk, lowest
partition number first); :func:`reconcile` compares two snapshots and says what
:class:`Appeared` or :class:`Left`; :func:`docking_hints` are the properties a recorder
driver sees. The events :class:`dockd.devices.udev.UdevSource` emits are defined here too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..config import AllowConfig
from . import watch
from .mount import UNRELIABLE_FILE_TIMES, FsckResult
from .ports import PortMap, allowed_rule, port_path

MOUNTABLE_FS = ("vfat", "exfat")
HINT_KEYS = ("DEVNAME", "DEVTYPE", "ID_PATH", "ID_BUS", "ID_VENDOR", "ID_VENDOR_ID", "ID_MODEL",
             "ID_MODEL_ID", "ID_SERIAL", "ID_SERIAL_SHORT", "ID_REVISION", "ID_FS_TYPE",
             "ID_FS_UUID", "ID_FS_LABEL", "ID_FS_VERSION", "ID_PART_ENTRY_NUMBER")


# --------------------------------------------------------------------------- plain data


@dataclass(frozen=True)
class UdevHint:
    """A udev event, reduced: something changed on a block device."""

    action: str
    devnode: str
    id_path: str


@dataclass(frozen=True)
class BlockDevice:
    """What one enumeration saw of one block device (a snapshot of its udev properties)."""

    devnode: str
    devtype: str
    id_path: str
    bus: str
    vendor_id: str
    model_id: str
    serial: str
    fs_type: str
    fs_uuid: str
    part_number: int
    major: int
    minor: int
    initialized_usec: int
    properties: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False,
                                          repr=False)

    @classmethod
    def from_properties(cls, props: Mapping[str, str]) -> BlockDevice:
        def num(key: str) -> int:
            try:
                return int(props.get(key, "") or 0)
            except ValueError:
                return 0

        return cls(
            devnode=props.get("DEVNAME", ""), devtype=props.get("DEVTYPE", ""),
            id_path=props.get("ID_PATH", ""), bus=props.get("ID_BUS", ""),
            vendor_id=props.get("ID_VENDOR_ID", "").lower(),
            model_id=props.get("ID_MODEL_ID", "").lower(),
            serial=props.get("ID_SERIAL_SHORT", ""), fs_type=props.get("ID_FS_TYPE", ""),
            fs_uuid=props.get("ID_FS_UUID", ""),
            part_number=num("PARTN") or num("ID_PART_ENTRY_NUMBER"),
            major=num("MAJOR"), minor=num("MINOR"),
            initialized_usec=num("USEC_INITIALIZED"), properties=dict(props))

    @property
    def is_dock_candidate(self) -> bool:
        """A USB disk or partition that udev has finished processing."""
        return (self.bus == "usb" and self.devtype in ("disk", "partition")
                and self.devnode.startswith("/dev/") and bool(self.id_path)
                and self.initialized_usec > 0)

    @property
    def mountable(self) -> bool:
        return self.fs_type in MOUNTABLE_FS


@dataclass(frozen=True)
class PortView:
    """What one snapshot says is in one port."""

    port: str
    port_path: str
    kind: str
    """"recorder" (allow-listed) or "foreign"."""
    device: BlockDevice | None
    """recorder: the volume to mount (None: no vfat/exfat filesystem seen yet);
    foreign: its whole disk (or first partition)."""
    rule: AllowConfig | None = None
    mapped: bool = True

    @property
    def fingerprint(self) -> watch.Fingerprint:
        """Identity of this docking: a re-plug (new udev initialisation) changes it."""
        d = self.device
        if d is None:
            return (0, 0, 0, (self.kind, "no-volume"))
        return (os.makedev(d.major, d.minor), d.part_number, d.initialized_usec,
                (self.kind, d.devnode, d.serial, d.fs_uuid, d.vendor_id, d.model_id))


@dataclass(frozen=True)
class Appeared:
    view: PortView


@dataclass(frozen=True)
class Left:
    view: PortView


Change = Appeared | Left


@dataclass(frozen=True)
class Docked(watch.Docked):
    """A recorder mounted read-only at ``root``; ``hints`` are its udev properties (and fsck)."""

    hints: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


Undocked = watch.Undocked


@dataclass(frozen=True)
class Foreign:
    """A USB block device on a dock port that is not on the allow-list: never mounted."""

    port: str
    devnode: str
    vendor_id: str
    model_id: str
    serial: str
    properties: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False,
                                          repr=False)


@dataclass(frozen=True)
class ForeignGone:
    port: str


@dataclass(frozen=True)
class MountFailed:
    """An allowed recorder that could not be mounted (no filesystem, helper refused, ...)."""

    port: str
    serial: str
    reason: str


UdevEvent = Docked | Undocked | Foreign | ForeignGone | MountFailed


# --------------------------------------------------------------------------- pure core


def _volume_order(d: BlockDevice) -> tuple[int, int, str]:
    return (0 if d.devtype == "partition" else 1, d.part_number, d.devnode)


def snapshot(devices: Iterable[BlockDevice], port_map: PortMap,
             allow: Sequence[AllowConfig]) -> dict[str, PortView]:
    """Per port label: what is in it. Pure (apart from PortMap's one-time warning)."""
    groups: dict[str, dict[str, BlockDevice]] = {}
    for d in devices:
        if d.is_dock_candidate:
            groups.setdefault(port_path(d.id_path), {})[d.devnode] = d  # duplicates collapse
    views: dict[str, PortView] = {}
    for ppath in sorted(groups):
        members = sorted(groups[ppath].values(), key=_volume_order)
        label, mapped = port_map.lookup(ppath)
        disk = next((d for d in members if d.devtype == "disk"), members[0])
        rule = allowed_rule(disk.properties or _props_of(disk), allow)
        if rule is None:
            views[label] = PortView(label, ppath, "foreign", disk, None, mapped)
            continue
        volume = next((d for d in members if d.mountable), None)
        views[label] = PortView(label, ppath, "recorder", volume, rule, mapped)
    return views


def _props_of(d: BlockDevice) -> dict[str, str]:
    return {"ID_BUS": d.bus, "ID_VENDOR_ID": d.vendor_id, "ID_MODEL_ID": d.model_id,
            "ID_SERIAL_SHORT": d.serial}


def reconcile(old: Mapping[str, PortView], new: Mapping[str, PortView]) -> list[Change]:
    """What appeared or left between two snapshots, sorted by port. Pure.

    A port whose view changed identity gives ``Left`` (old view) then ``Appeared`` (new).
    """
    changes: list[Change] = []
    for port in sorted(set(old) | set(new)):
        before, after = old.get(port), new.get(port)
        same = (before is not None and after is not None
                and before.fingerprint == after.fingerprint)
        if before is not None and not same:
            changes.append(Left(before))
        if after is not None and not same:
            changes.append(Appeared(after))
    return changes


def docking_hints(view: PortView, fsck: FsckResult | None,
                  fs_driver: str = "kernel") -> dict[str, str]:
    """The udev properties a driver may use, plus dockd's own (port, profile, fsck, which
    filesystem driver serves the recorder and whether its file times can be trusted)."""
    props = view.device.properties if view.device is not None else {}
    hints = {k: props[k] for k in HINT_KEYS if props.get(k)}
    hints["DOCKD_PORT"] = view.port
    hints["DOCKD_PORT_PATH"] = view.port_path
    if view.rule is not None:
        hints["DOCKD_PROFILE"] = view.rule.profile
        hints["DOCKD_MODEL_LABEL"] = view.rule.label
    if fsck is not None:
        hints["DOCKD_FSCK"] = fsck.verdict
        hints["DOCKD_FSCK_DETAIL"] = fsck.detail
    hints["DOCKD_FS_DRIVER"] = fs_driver
    if fs_driver in UNRELIABLE_FILE_TIMES:
        hints["DOCKD_FILE_TIMES"] = "unreliable"
    return hints
