"""``dockd ports learn`` and ``dockd ports udev-rules``: map the dock's physical ports.

``ports learn`` prints the physical path of the USB block devices present now (or of the
next one plugged in, ``--next``) and the ``[[port_map]]`` snippet to paste (with an
``[[allow]]`` one for a model not on the allow-list yet); ``ports udev-rules`` prints the
udev rule for the configured allow-list. The mapping itself is :mod:`.ports` (pure); the
enumeration is :func:`dockd.devices.udev_edge.list_block_properties`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from ..config import Config
from .ports import PortMap, allowed_rule, port_path, render_udev_rules
from .udev_edge import list_block_properties


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


def add_ports_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
                     parents: Sequence[argparse.ArgumentParser] = ()) -> None:
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
