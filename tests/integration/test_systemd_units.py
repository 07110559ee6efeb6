"""systemd units: `systemd-analyze verify` passes (warnings count as failures), the unit
keeps the settings the design relies on, and the offline security exposure stays low."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("dockd.service", "dockd-mount.socket", "dockd-mount@.service")
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")


def unit(name: str) -> dict[str, list[str]]:
    """Directive -> values (a directive may repeat)."""
    out: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def staged(tmp_path: Path) -> Path:
    """The units with ExecStart pointed at executables that exist here (verify checks
    that they do; /usr/bin/dockd is only there on an installed dock)."""
    exe = shutil.which("dockd", path=str(Path(sys.executable).parent)) or sys.executable
    for name in UNITS:
        text = (ROOT / "systemd" / name).read_text()
        text = text.replace("/usr/bin/dockd-mount ", f"{sys.executable} -m dockd.helper.mount_helper ")
        text = text.replace("/usr/bin/dockd ", f"{exe} ")
        (tmp_path / name).write_text(text)
    return tmp_path


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    d = staged(tmp_path)
    proc = subprocess.run([ANALYZE, "verify", "--man=no", *(str(d / n) for n in UNITS)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).strip() == "", proc.stdout + proc.stderr


@needs_analyze
def test_verify_catches_a_typo(tmp_path: Path) -> None:
    bad = staged(tmp_path) / "dockd.service"
    bad.write_text(bad.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectSystm=strict"))
    proc = subprocess.run([ANALYZE, "verify", "--man=no", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert "Unknown key" in proc.stdout + proc.stderr


@needs_analyze
@pytest.mark.parametrize("name,limit", [("dockd.service", 1.5), ("dockd-mount@.service", 3.0)])
def test_security_exposure(tmp_path: Path, name: str, limit: float) -> None:
    d = staged(tmp_path)
    proc = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(d / name)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot score offline: {proc.stderr.strip()[:200]}")
    assert float(m.group(1)) <= limit


def test_daemon_unit_settings() -> None:
    u = unit("dockd.service")
    one = {k: v[-1] for k, v in u.items()}
    assert one["Type"] == "notify" and one["WatchdogSec"] == "30"
    assert one["ExecStart"] == "/usr/bin/dockd run --config /etc/dockd/config.toml"
    assert one["User"] == "dockd" and one["StateDirectory"] == "dockd"
    assert one["RuntimeDirectory"] == "dockd"
    assert one["LoadCredential"] == "dock.key:/etc/dockd/dock.key"
    for key, value in [("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                       ("PrivateDevices", "yes"), ("ProtectKernelTunables", "yes"),
                       ("ProtectKernelModules", "yes"), ("ProtectKernelLogs", "yes"),
                       ("CapabilityBoundingSet", "")]:
        assert one[key] == value, key
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_NETLINK", "AF_INET",
                                                           "AF_INET6"}
    assert "@system-service" in u["SystemCallFilter"]
    assert "dockd-mount.socket" in one["Wants"] and "dockd-mount.socket" in one["After"]


def test_helper_units_stay_in_the_host_mount_namespace() -> None:
    """The helper's mounts must be visible to the daemon: nothing that unshares mounts
    (systemd's exec_needs_mount_namespace(): ProtectProc= and ProcSubset= included)."""
    u = unit("dockd-mount@.service")
    namespacing = {"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                   "PrivateMounts", "PrivateIPC", "ProtectKernelTunables",
                   "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                   "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "ExecPaths",
                   "NoExecPaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths",
                   "RootDirectory", "RootImage", "MountFlags", "ProtectProc", "ProcSubset",
                   "LogNamespace", "DynamicUser", "MountImages", "ExtensionImages"}
    assert namespacing.isdisjoint(u), namespacing & set(u)
    assert u["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"]
    assert u["StandardInput"] == ["socket"] and u["NoNewPrivileges"] == ["yes"]


def test_helper_unit_sandbox() -> None:
    """What does not unshare mounts is used (issue 11): no network, AF_UNIX only, block
    devices of the SCSI-disk group only, a system call allow-list, the built-in config."""
    u = unit("dockd-mount@.service")
    one = {k: v[-1] for k, v in u.items()}
    assert one["ExecStart"] == "/usr/bin/dockd-mount --serve"  # no --config from anyone
    assert one["PrivateNetwork"] == "yes" and one["IPAddressDeny"] == "any"
    assert one["RestrictAddressFamilies"] == "AF_UNIX"
    assert one["DevicePolicy"] == "closed" and one["DeviceAllow"] == "block-sd rw"
    assert u["SystemCallFilter"] == ["@system-service @mount", "~@privileged @resources"]
    for key in ("RestrictNamespaces", "RestrictSUIDSGID", "LockPersonality", "ProtectClock",
                "ProtectHostname", "RestrictRealtime"):
        assert one[key] == "yes", key
    s = unit("dockd-mount.socket")
    assert s["Accept"] == ["yes"] and s["SocketMode"] == ["0660"] and s["SocketGroup"] == ["dockd"]
    assert s["ListenStream"] == ["/run/dockd-mount.sock"]


def test_units_parse_as_ini() -> None:
    for name in UNITS:
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read_string((ROOT / "systemd" / name).read_text())
        assert cp.sections()
