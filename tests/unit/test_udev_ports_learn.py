"""`dockd ports learn` / `dockd ports udev-rules` on recorded udev property sets."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from dockd.config import AllowConfig, Config, PortMapConfig
from dockd.devices.ports_cli import add_ports_parser, learn

FIX = Path(__file__).parents[1] / "fixtures" / "udev"


def props(name: str) -> dict[str, str]:
    return json.loads((FIX / f"{name}.json").read_text())


CFG = Config(allow=(AllowConfig(vendor_id="2e8a", model_id="0001"),),
             port_map=(PortMapConfig(path="pci-0000:00:14.0-usb-0:1.1", port="port-01"),))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dockd")
    sub = parser.add_subparsers(dest="command", required=True)
    add_ports_parser(sub, parents=[])
    return parser.parse_args(list(argv))


def test_parser_registers_learn_and_udev_rules() -> None:
    args = parse("ports", "learn", "--next", "--timeout", "5", "--port", "port-07")
    assert args.next and args.timeout == 5.0 and args.port == "port-07"
    assert args.func.__name__ == "cmd_ports_learn"
    assert parse("ports", "udev-rules").func.__name__ == "cmd_ports_udev_rules"


def test_learn_lists_present_devices_with_a_snippet() -> None:
    devices = [props(n) for n in ("recorder_disk", "recorder_part1", "stick_disk",
                                  "stick_part1", "sata_disk")]
    out = io.StringIO()
    assert learn(CFG, parse("ports", "learn"), enumerate_devices=lambda: devices, out=out) == 0
    text = out.getvalue()
    assert "pci-0000:00:14.0-usb-0:1.3:1.0-scsi-0:0:0:0" in text  # the raw ID_PATH
    assert '[[port_map]]\npath = "pci-0000:00:14.0-usb-0:1.3"\nport = "port-02"' in text
    assert "serial A1B2C3D4, fs vfat, allowed" in text
    assert "NOT on the allow-list" in text and 'vendor_id = "0781"' in text  # the stick
    assert "sda" not in text  # not a dock port


def test_learn_next_waits_for_a_new_device() -> None:
    calls = {"n": 0}

    def enumerate_devices() -> list[dict[str, str]]:
        calls["n"] += 1
        return [props("recorder_disk"), props("recorder_part1")] if calls["n"] > 3 else []

    t = {"now": 0.0}

    def clock() -> float:
        return t["now"]

    def sleep(s: float) -> None:
        t["now"] += s

    out = io.StringIO()
    args = parse("ports", "learn", "--next", "--json", "--timeout", "10")
    assert learn(CFG, args, enumerate_devices=enumerate_devices, out=out, clock=clock,
                 sleep=sleep) == 0
    (dev,) = json.loads(out.getvalue())
    assert dev["port_path"] == "pci-0000:00:14.0-usb-0:1.3" and dev["allowed"] is True
    assert dev["serial"] == "A1B2C3D4" and not dev["mapped"]


def test_learn_next_times_out() -> None:
    t = {"now": 0.0}
    args = parse("ports", "learn", "--next", "--timeout", "2")
    rc = learn(CFG, args, enumerate_devices=list, out=io.StringIO(), clock=lambda: t["now"],
               sleep=lambda s: t.__setitem__("now", t["now"] + s))
    assert rc == 1
