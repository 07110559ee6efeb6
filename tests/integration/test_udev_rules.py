"""The udev rule: udev's own parser accepts it, it marks allow-listed recorders (and only
them), and the shipped file is what `dockd ports udev-rules` renders for the example config."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dockd.config import AllowConfig, load
from dockd.devices.ports import render_udev_rules

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "udev-rules" / "70-dockd.rules"
KEY_RE = re.compile(r'^(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]+)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"]*)"$')
MATCH_KEYS = {"ACTION", "SUBSYSTEM", "KERNEL", "ENV", "ATTRS", "ATTR", "TAG"}
ASSIGN_KEYS = {"ENV", "TAG", "GOTO", "LABEL"}


def parse(text: str) -> list[list[tuple[str, str | None, str, str]]]:
    rules = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = []
        for item in (p.strip() for p in line.split(", ")):
            m = KEY_RE.match(item)
            assert m, f"line {n}: cannot parse {item!r}"
            key, op = m["key"], m["op"]
            if op in ("==", "!="):
                assert key in MATCH_KEYS, f"line {n}: {key} is not a match key"
            else:
                assert key in ASSIGN_KEYS, f"line {n}: {key} cannot be assigned"
            parts.append((key, m["attr"], op, m["value"]))
        rules.append(parts)
    return rules


def test_rule_file_parses_and_gotos_have_labels() -> None:
    rules = parse(RULES.read_text())
    labels = {v for r in rules for k, _a, _o, v in r if k == "LABEL"}
    gotos = {v for r in rules for k, _a, _o, v in r if k == "GOTO"}
    assert gotos <= labels and {"dockd_end", "dockd_recorder"} <= labels
    flat = {(k, a, o, v) for r in rules for k, a, o, v in r}
    for want in [("ENV", "UDISKS_IGNORE", "=", "1"), ("ENV", "DOCKD_RECORDER", "=", "1"),
                 ("TAG", None, "+=", "dockd")]:
        assert want in flat


def test_shipped_rule_matches_the_example_config() -> None:
    cfg = load(ROOT / "config.example.toml")
    body = "\n".join(ln for ln in RULES.read_text().splitlines() if not ln.startswith("#   "))
    rendered = render_udev_rules(cfg.allow)
    for line in rendered.splitlines():
        if line and not line.startswith("#"):
            assert line in body, line


def test_render_skips_invalid_ids_and_lowercases() -> None:
    text = render_udev_rules((AllowConfig(vendor_id="2E8A", model_id=""),
                              AllowConfig(vendor_id='x" RUN+="/bin/sh'),))
    assert 'ENV{ID_VENDOR_ID}=="2e8a", GOTO="dockd_recorder"' in text
    assert "RUN" not in text
    parse(text)


def _udevadm_test(tmp_path: Path, extra_rule: str, *, hide_run: bool = False) -> str:
    """Run `udevadm test` on loop0 with only our rule (+ a rule faking USB IDs) in
    /etc/udev/rules.d, inside a private mount namespace (nothing on the host changes).

    A machine where udev is not running has no /run/udev: the namespace then gets a private
    /run with the mount point created in it. ``hide_run`` makes that case happen here."""
    udevadm, unshare = shutil.which("udevadm"), shutil.which("unshare")
    if udevadm is None or unshare is None:
        pytest.skip("udevadm/unshare not installed (apt-get install udev)")
    if os.geteuid() != 0 or not os.path.exists("/sys/class/block/loop0"):
        pytest.skip("needs root and /sys/class/block/loop0 for a private mount namespace")
    (tmp_path / "69-fake.rules").write_text(extra_rule + "\n")
    hide = "mount -t tmpfs tmpfs /run;" if hide_run else ""
    script = (f"set -e; {hide} mount -t tmpfs tmpfs /etc/udev/rules.d;"
              " [ -d /run/udev ] || mount -t tmpfs tmpfs /run; mkdir -p /run/udev;"
              " mount -t tmpfs tmpfs /run/udev;"
              f" cp {RULES} {tmp_path / '69-fake.rules'} /etc/udev/rules.d/;"
              f" {udevadm} test --action=add /sys/class/block/loop0 2>&1")
    proc = subprocess.run([unshare, "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0 and "Operation not permitted" in proc.stdout + proc.stderr:
        pytest.skip("cannot create a private mount namespace here")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_udev_parses_the_rule_and_marks_an_allowed_recorder(tmp_path: Path) -> None:
    out = _udevadm_test(tmp_path, 'KERNEL=="loop0", ENV{ID_BUS}="usb", '
                                  'ENV{ID_VENDOR_ID}="2e8a", ENV{ID_MODEL_ID}="0001"')
    problems = [ln for ln in out.splitlines() if "70-dockd.rules" in ln and "Reading" not in ln]
    assert problems == []
    props = dict(ln.split("=", 1) for ln in out.splitlines() if re.match(r"^[A-Z_]+=", ln))
    assert props.get("UDISKS_IGNORE") == "1" and props.get("DOCKD_RECORDER") == "1"
    assert ":dockd:" in props.get("TAGS", "")


def test_udev_leaves_other_usb_devices_alone(tmp_path: Path) -> None:
    out = _udevadm_test(tmp_path, 'KERNEL=="loop0", ENV{ID_BUS}="usb", '
                                  'ENV{ID_VENDOR_ID}="0781", ENV{ID_MODEL_ID}="5581"')
    props = dict(ln.split("=", 1) for ln in out.splitlines() if re.match(r"^[A-Z_]+=", ln))
    assert "DOCKD_RECORDER" not in props and "UDISKS_IGNORE" not in props
    assert ":dockd:" not in props.get("TAGS", "")


def test_udev_test_runs_where_udev_is_not_running(tmp_path: Path) -> None:
    """No /run/udev (a clean machine, a container): the namespace creates the mount point."""
    out = _udevadm_test(tmp_path, 'KERNEL=="loop0", ENV{ID_BUS}="usb", '
                                  'ENV{ID_VENDOR_ID}="2e8a", ENV{ID_MODEL_ID}="0001"',
                        hide_run=True)
    props = dict(ln.split("=", 1) for ln in out.splitlines() if re.match(r"^[A-Z_]+=", ln))
    assert props.get("DOCKD_RECORDER") == "1"
