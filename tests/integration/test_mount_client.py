"""HelperMounter: how the unprivileged daemon reaches the helper (socket; directly as root)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from dockd.devices.mount import HelperMounter, MountError


class FakeRun:
    def __init__(self, stdout: str, rc: int = 0, stderr: str = ""):
        self.stdout, self.rc, self.stderr = stdout, rc, stderr
        self.argv: list[list[str]] = []

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.argv.append(argv)
        assert kw["timeout"] > 0 and kw["capture_output"]
        return subprocess.CompletedProcess(argv, self.rc, self.stdout, self.stderr)


def test_direct_when_root_and_never_through_sudo() -> None:
    run = FakeRun(json.dumps({"ok": True, "mountpoint": "/run/dockd-mnt/port-03",
                              "fstype": "vfat", "options": "ro"}))
    m = HelperMounter("/usr/bin/dockd-mount", runner=run, euid=lambda: 0)
    res = m.mount("/dev/sdb1", "port-03")
    assert run.argv[-1] == ["/usr/bin/dockd-mount", "mount", "/dev/sdb1", "port-03"]
    assert res.mountpoint == Path("/run/dockd-mnt/port-03") and res.fstype == "vfat"
    m = HelperMounter("/usr/bin/dockd-mount", runner=run, euid=lambda: 999)
    with pytest.raises(MountError, match="no sudo mode") as exc:
        m.mount("/dev/sdb1", "port-03")
    assert exc.value.code == "unreachable" and len(run.argv) == 1  # nothing was run


def test_fsck_and_unmount_answers() -> None:
    run = FakeRun(json.dumps({"ok": True, "verdict": "errors", "exit": 1, "detail": "x"}))
    m = HelperMounter("/h", runner=run, euid=lambda: 0)
    res = m.fsck("/dev/sdb1", "port-03")
    assert (res.verdict, res.exit_code, res.detail) == ("errors", 1, "x")
    assert run.argv[-1] == ["/h", "fsck", "/dev/sdb1", "port-03"]
    run.stdout = json.dumps({"ok": True, "was_mounted": True})
    assert m.unmount("port-03") is True


@pytest.mark.parametrize("stdout,code", [
    (json.dumps({"ok": False, "error": "not-allowed", "message": "no"}), "not-allowed"),
    ("garbage", "protocol"), ("[1]", "protocol"), ("", "unreachable")])
def test_refusals_and_garbage_raise(stdout: str, code: str) -> None:
    m = HelperMounter("/h", runner=FakeRun(stdout, rc=1), euid=lambda: 0)
    with pytest.raises(MountError) as exc:
        m.mount("/dev/sdb1", "port-03")
    assert exc.value.code == code and exc.value.retry


def test_missing_helper_and_timeout() -> None:
    def missing(argv: list[str], **kw: Any) -> Any:
        raise FileNotFoundError(2, "nope", argv[0])

    with pytest.raises(MountError) as exc:
        HelperMounter("/nonexistent", runner=missing, euid=lambda: 0).unmount("p")
    assert exc.value.code == "unreachable"

    def slow(argv: list[str], **kw: Any) -> Any:
        raise subprocess.TimeoutExpired(argv, kw["timeout"])

    with pytest.raises(MountError) as exc:
        HelperMounter("/h", runner=slow, euid=lambda: 0).unmount("p")
    assert exc.value.code == "timeout"


def test_socket_transport_with_the_real_helper(tmp_path: Path) -> None:
    """A listening socket standing in for dockd-mount.socket (Accept=yes): each connection
    becomes the stdin/stdout of one `dockd-mount --serve` process."""
    if os.geteuid() != 0:
        pytest.skip("--config is honoured only for root")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[devices]\nmount_root = "{tmp_path}/mnt"\n')
    os.chmod(cfg, 0o644)
    path = str(tmp_path / "dockd-mount.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    env = {k: v for k, v in os.environ.items() if k != "SUDO_UID"}

    def serve(n: int) -> None:
        for _ in range(n):
            conn, _addr = server.accept()
            with conn:
                subprocess.run([sys.executable, "-m", "dockd.helper.mount_helper", "--serve",
                                "--config", str(cfg)], stdin=conn, stdout=conn,
                               stderr=subprocess.DEVNULL, timeout=60, env=env)

    t = threading.Thread(target=serve, args=(2,), daemon=True)
    t.start()
    try:
        m = HelperMounter(path)
        assert m.is_socket()
        assert m.unmount("port-07") is False
        with pytest.raises(MountError) as exc:
            m.mount("/dev/../etc/passwd", "port-07")
        assert exc.value.code == "bad-device"
        t.join(timeout=30)
    finally:
        server.close()


def test_unreachable_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # a stale socket file nobody listens on
    with pytest.raises(MountError) as exc:
        HelperMounter(path).unmount("port-01")
    assert exc.value.code == "unreachable"
