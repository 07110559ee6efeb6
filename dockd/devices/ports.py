"""Which physical port a recorder is in, and is it allowed: pure functions, plus ``ports learn``.

A port is keyed by the physical USB path udev gives the device (``ID_PATH``), never by the
``/dev/sdX`` name the kernel happens to pick. ``ID_PATH`` of a USB mass-storage device looks
like ``pci-0000:00:14.0-usb-0:1.3:1.0-scsi-0:0:0:0``; its partitions carry the same value.
:func:`port_path` keeps only the hub port (``pci-0000:00:14.0-usb-0:1.3``): the SCSI
target/LUN, the USB configuration and interface and a ``-partN`` suffix are dropped, and
``usbv2``/``usbv3`` (newer udev) become ``usb`` so one port has one key whatever speed the
recorder negotiated. :class:`PortMap` turns that into the label users see (``port-03``);
an unmapped port gets a stable label derived from the path (and a warning).

:func:`allowed_rule` is the allow-list: USB vendor/product IDs and an optional serial
regular expression. The root mount helper uses the very same function.

``dockd ports learn`` prints the path of the block devices present now (or of the next one
plugged in) and the ``[[port_map]]`` snippet to paste; ``dockd ports udev-rules`` prints the
udev rule for the configured allow-list. Nothing here imports pyudev at module level.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..config import AllowConfig, Config, PortMapConfig

log = logging.getLogger(__name__)

PORT_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A port label: one safe path component (it names the mount point ``<mount_root>/<port>``)."""

_USB_PORT_RE = re.compile(r"^(?P<head>.*?-usb-\d+:(?P<chain>[0-9]+(?:\.[0-9]+)*))(?::\d+\.\d+)?(?:-.*)?$")


def valid_port_label(label: str) -> bool:
    return PORT_LABEL_RE.fullmatch(label) is not None


def port_path(id_path: str) -> str:
    """The hub port part of a udev ``ID_PATH``: what partition, disk and LUN have in common."""
    p = re.sub(r"-usbv\d+-", "-usb-", id_path.strip())
    m = _USB_PORT_RE.match(p)
    if m:
        return m.group("head")
    return re.sub(r"-part\d+$", "", p)


def derived_label(ppath: str) -> str:
    """A stable label for an unmapped port: ``usb-1.3-5f2a`` (chain + short hash of the path)."""
    digest = hashlib.sha256(ppath.encode("utf-8")).hexdigest()
    m = _USB_PORT_RE.match(ppath)
    if m:
        return f"usb-{m.group('chain')}-{digest[:4]}"
    return f"path-{digest[:8]}"


class PortMap:
    """Physical port path -> label, from ``[[port_map]]``. Pure: warns once per unmapped path."""

    def __init__(self, entries: Iterable[PortMapConfig] = ()):
        self._labels: dict[str, str] = {}
        for e in entries:
            key = port_path(e.path)
            if key in self._labels and self._labels[key] != e.port:
                log.warning("port %s: port_map path %s is the same port as %s; using %s",
                            e.port, e.path, self._labels[key], e.port)
            self._labels[key] = e.port
        self._warned: set[str] = set()

    @classmethod
    def from_config(cls, cfg: Config) -> PortMap:
        return cls(cfg.port_map)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._labels)

    def lookup(self, id_path: str) -> tuple[str, bool]:
        """(label, mapped) for a device's ``ID_PATH``."""
        key = port_path(id_path)
        label = self._labels.get(key)
        if label is not None:
            return label, True
        label = derived_label(key)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("port %s: physical path %s is not in port_map; add it "
                        "(dockd ports learn)", label, key)
        return label, False


# --------------------------------------------------------------------------- allow-list


def allowed_rule(props: Mapping[str, str], allow: Sequence[AllowConfig]) -> AllowConfig | None:
    """The first allow-list entry matching the udev properties of a USB device, else None.

    Vendor and product IDs compare case-insensitively; ``serial_pattern`` must match the
    whole ``ID_SERIAL_SHORT``. Only USB devices can be allowed.
    """
    if props.get("ID_BUS", "") != "usb":
        return None
    vendor = props.get("ID_VENDOR_ID", "").lower()
    model = props.get("ID_MODEL_ID", "").lower()
    serial = props.get("ID_SERIAL_SHORT", "")
    for rule in allow:
        if not rule.vendor_id or rule.vendor_id.lower() != vendor:
            continue
        if rule.model_id and rule.model_id.lower() != model:
            continue
        if rule.serial_pattern:
            try:
                if re.fullmatch(rule.serial_pattern, serial) is None:
                    continue
            except re.error:
                continue
        return rule
    return None


def render_udev_rules(allow: Sequence[AllowConfig]) -> str:
    """The udev rule that tags allow-listed recorders and hides them from desktop automounters."""
    lines = [
        "# dockd: mark allow-listed body-worn recorders (generated by `dockd ports udev-rules`).",
        "# Runs after 60-persistent-storage.rules (ID_BUS, ID_VENDOR_ID, ID_MODEL_ID are set).",
        'ACTION=="remove", GOTO="dockd_end"',
        'SUBSYSTEM!="block", GOTO="dockd_end"',
        'ENV{ID_BUS}!="usb", GOTO="dockd_end"',
    ]
    for rule in allow:
        if not re.fullmatch(r"[0-9a-fA-F]{4}", rule.vendor_id):
            continue
        match = [f'ENV{{ID_VENDOR_ID}}=="{rule.vendor_id.lower()}"']
        if re.fullmatch(r"[0-9a-fA-F]{4}", rule.model_id):
            match.append(f'ENV{{ID_MODEL_ID}}=="{rule.model_id.lower()}"')
        if rule.label:
            lines.append("# " + "".join(c for c in rule.label if c.isprintable()))
        lines.append(", ".join([*match, 'GOTO="dockd_recorder"']))
    lines += [
        'GOTO="dockd_end"',
        "",
        'LABEL="dockd_recorder"',
        "# The serial pattern is checked by dockd and by its mount helper, not here.",
        'ENV{UDISKS_IGNORE}="1", ENV{UDISKS_AUTO}="0", ENV{DOCKD_RECORDER}="1", TAG+="dockd"',
        "",
        'LABEL="dockd_end"',
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- ports learn


@dataclass(frozen=True)
class LearnedDevice:
    port_path: str
    id_path: str
    port: str
    mapped: bool
    devnode: str
    vendor_id: str
    model_id: str
    serial: str
    vendor: str
    model: str
    fs_type: str
    allowed: bool
    extra: dict[str, str] = field(default_factory=dict, compare=False)


def learned_devices(devices: Iterable[Mapping[str, str]], cfg: Config) -> list[LearnedDevice]:
    """One entry per physical USB port holding a block device, sorted by path. Pure."""
    pmap = PortMap(cfg.port_map)
    by_port: dict[str, list[Mapping[str, str]]] = {}
    for props in devices:
        if props.get("ID_BUS") != "usb" or not props.get("ID_PATH"):
            continue
        by_port.setdefault(port_path(props["ID_PATH"]), []).append(props)
    out = []
    for ppath in sorted(by_port):
        group = sorted(by_port[ppath], key=lambda p: (p.get("DEVTYPE") != "disk", p.get("DEVNAME", "")))
        disk = group[0]
        fs = next((p.get("ID_FS_TYPE", "") for p in group if p.get("ID_FS_TYPE")), "")
        label, mapped = pmap.lookup(ppath)
        out.append(LearnedDevice(
            port_path=ppath, id_path=disk.get("ID_PATH", ""), port=label, mapped=mapped,
            devnode=disk.get("DEVNAME", ""), vendor_id=disk.get("ID_VENDOR_ID", ""),
            model_id=disk.get("ID_MODEL_ID", ""), serial=disk.get("ID_SERIAL_SHORT", ""),
            vendor=disk.get("ID_VENDOR", ""), model=disk.get("ID_MODEL", ""), fs_type=fs,
            allowed=allowed_rule(disk, cfg.allow) is not None))
    return out


def next_free_label(cfg: Config) -> str:
    used = {m.port for m in cfg.port_map}
    for i in range(1, 100):
        label = f"port-{i:02d}"
        if label not in used:
            return label
    return "port-new"


def toml_snippet(dev: LearnedDevice, label: str) -> str:
    text = f'[[port_map]]\npath = "{dev.port_path}"\nport = "{label}"\n'
    if not dev.allowed and dev.vendor_id:
        text += (f'\n# not on the allow-list yet; if this is a recorder model:\n[[allow]]\n'
                 f'vendor_id = "{dev.vendor_id}"\nmodel_id = "{dev.model_id}"\n'
                 f'serial_pattern = ""\nprofile = ""\nlabel = "{dev.vendor} {dev.model}"\n')
    return text


def learn(cfg: Config, args: argparse.Namespace, *,
          enumerate_devices: Callable[[], list[dict[str, str]]] | None = None,
          out: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """``dockd ports learn``: show USB block devices present now, or wait for the next one."""
    if enumerate_devices is None:
        from .udev import list_block_properties
        enumerate_devices = list_block_properties
    out = out or sys.stdout
    found = learned_devices(enumerate_devices(), cfg)
    if getattr(args, "next", False):
        before = {d.port_path: d.devnode for d in found}
        deadline = clock() + float(getattr(args, "timeout", 60.0))
        print(f"plug a device into the port to learn (waiting {args.timeout:.0f} s) ...",
              file=sys.stderr)
        found = []
        while clock() < deadline:
            sleep(0.5)
            now = learned_devices(enumerate_devices(), cfg)
            found = [d for d in now if before.get(d.port_path) != d.devnode]
            if found:
                break
            before = {d.port_path: d.devnode for d in now}  # unplugged ones may come back
        if not found:
            print("no new USB block device appeared", file=sys.stderr)
            return 1
    if getattr(args, "json", False):
        print(json.dumps([d.__dict__ for d in found], ensure_ascii=False, indent=2), file=out)
        return 0
    if not found:
        print("no USB block devices present (plug one in, or use --next)", file=out)
        return 0
    label = getattr(args, "port", None) or next_free_label(cfg)
    for d in found:
        state = f"mapped to {d.port}" if d.mapped else f"not mapped (would show as {d.port})"
        print(f"{d.devnode}: {d.vendor} {d.model} (vendor {d.vendor_id}, model {d.model_id}, "
              f"serial {d.serial or '-'}, fs {d.fs_type or '-'}, "
              f"{'allowed' if d.allowed else 'NOT on the allow-list'})", file=out)
        print(f"  ID_PATH {d.id_path}\n  port    {d.port_path}  {state}", file=out)
        if not d.mapped:
            print("\n" + toml_snippet(d, label), file=out)
    return 0


def cmd_ports_learn(cfg: Config, args: argparse.Namespace) -> int:
    return learn(cfg, args)


def cmd_ports_udev_rules(cfg: Config, args: argparse.Namespace) -> int:
    sys.stdout.write(render_udev_rules(cfg.allow))
    return 0


def add_ports_parser(subparsers: Any, parents: Sequence[Any] = ()) -> None:
    """Register ``ports learn`` and ``ports udev-rules`` (``func(cfg, args) -> int``)."""
    p = subparsers.add_parser("ports", parents=list(parents),
                              help="physical port map: learn ports, print the udev rule")
    sub = p.add_subparsers(dest="ports_command", required=True, metavar="SUBCOMMAND")
    lp = sub.add_parser("learn", parents=list(parents),
                        help="show the physical path of USB block devices and the "
                             "[[port_map]] snippet to paste")
    lp.add_argument("--next", action="store_true",
                    help="wait for the next device plugged in instead of listing present ones")
    lp.add_argument("--timeout", type=float, default=60.0, help="with --next: give up after SECONDS")
    lp.add_argument("--port", help="label to put in the snippet (default: next free port-NN)")
    lp.add_argument("--json", action="store_true", help="print machine-readable JSON")
    lp.set_defaults(func=cmd_ports_learn)
    rp = sub.add_parser("udev-rules", parents=list(parents),
                        help="print the udev rule for the configured allow-list "
                             "(install as /etc/udev/rules.d/70-dockd.rules)")
    rp.set_defaults(func=cmd_ports_udev_rules)
