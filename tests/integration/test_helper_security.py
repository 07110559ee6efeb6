"""The root mount helper against a hostile local caller (issue 11): no sudo mode, a
configuration that cannot be swapped between check and read, callers told apart by
SO_PEERCRED uid, and requests bounded in time and size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dockd.helper import mount_helper as mh
from dockd.helper import protocol
from dockd.helper.mount_helper import Caller, Helper, Refused
from tests.integration.test_mount_helper import (
    IS_ROOT,
    FakeKernel,
    block_node,
    helper,
    make_cfg,
    props_for,
)

OTHER = Caller(999, 999, "socket")
ROOT = Caller(0, 0, "socket")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in protocol.ELEVATION_VARS}
    return {**env, **extra}


def _serve(cfg: Path, request: bytes, env: dict[str, str]) -> dict[str, object]:
    """Run ``dockd-mount --serve`` with one end of a socketpair as stdin/stdout (as
    systemd's Accept=yes does) and return its JSON answer."""
    a, b = socket.socketpair()
    with a, b:
        a.sendall(request)
        a.shutdown(socket.SHUT_WR)
        proc = subprocess.run([sys.executable, "-m", "dockd.helper.mount_helper", "--serve",
                               "--config", str(cfg)], stdin=b, stdout=b,
                              stderr=subprocess.PIPE, timeout=60, env=env)
        b.close()
        reply = a.makefile("rb").read().decode()
    assert reply, proc.stderr
    return json.loads(reply)


# --------------------------------------------------------------------------- hole 1: sudo


def test_serve_and_config_under_sudo_are_refused(tmp_path: Path) -> None:
    """The old helper honoured --config whenever --serve was given, also under sudo: the
    daemon's user could make root load a configuration of its choosing."""
    evil_root = tmp_path / "etc-of-the-attacker"
    (evil_root / "port-01").mkdir(parents=True)
    evil = tmp_path / "evil.toml"
    evil.write_text(f'[devices]\nmount_root = "{evil_root}"\n')
    os.chmod(evil, 0o644)
    answer = _serve(evil, b"unmount port-01\n", _env(SUDO_UID="1000", SUDO_GID="1000"))
    assert answer["ok"] is False and answer["error"] == "sudo"
    assert (evil_root / "port-01").is_dir()  # the evil mount root was never acted on


@pytest.mark.parametrize("var", protocol.ELEVATION_VARS)
def test_every_elevation_wrapper_is_refused(var: str) -> None:
    with pytest.raises(Refused) as exc:
        protocol.refuse_elevation({var: "1000"})
    assert exc.value.code == "sudo"
    protocol.refuse_elevation({"HOME": "/root"})  # plain environment: fine


def test_config_swapped_after_the_check_is_never_read(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic check-then-use race: the moment the helper has looked at the good file
    (stat or fstat), the path is replaced by a symlink to another file. The helper must
    use what it checked."""
    good = tmp_path / "config.toml"
    good.write_text(f'[devices]\nmount_root = "{tmp_path}/good-mnt"\n')
    os.chmod(good, 0o644)
    evil = tmp_path / "evil.toml"
    evil.write_text(f'[devices]\nmount_root = "{tmp_path}/evil-mnt"\n')
    os.chmod(evil, 0o666)
    good_ino = good.stat().st_ino
    swapped: list[bool] = []
    real_stat, real_fstat = os.stat, os.fstat

    def swap(result: os.stat_result) -> os.stat_result:
        if result.st_ino == good_ino and not swapped:
            swapped.append(True)
            link = tmp_path / "swap.lnk"
            link.symlink_to(evil)
            link.replace(good)  # atomically: the config path is now a symlink to evil
        return result

    monkeypatch.setattr(os, "stat", lambda *a, **kw: swap(real_stat(*a, **kw)))
    monkeypatch.setattr(os, "fstat", lambda fd: swap(real_fstat(fd)))
    cfg = protocol.trusted_config(good)
    assert swapped, "the hook never ran"
    assert good.is_symlink()
    assert Path(cfg.devices.mount_root) == tmp_path / "good-mnt"


def test_config_symlink_or_untrusted_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text("")
    os.chmod(real, 0o644)
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    with pytest.raises(Refused, match="symlink"):
        protocol.trusted_config(link)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone may rename files in here: not trusted
    (shared / "config.toml").write_text("")
    os.chmod(shared / "config.toml", 0o644)
    with pytest.raises(Refused, match="directory shared"):
        protocol.trusted_config(shared / "config.toml")
    os.chmod(shared, 0o1777)  # sticky (like /tmp): others cannot replace our file
    assert protocol.trusted_config(shared / "config.toml").devices.mount_root


def test_oversized_or_special_config_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# x\n" * (protocol.MAX_CONFIG // 4 + 1))
    os.chmod(big, 0o644)
    with pytest.raises(Refused, match="larger"):
        protocol.trusted_config(big)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo, 0o644)
    with pytest.raises(Refused, match="not a regular file"):  # and it did not block
        protocol.trusted_config(fifo)


# --------------------------------------------------------------------------- hole 2: callers


def _mounted(tmp_path: Path) -> tuple[Path, FakeKernel, str]:
    node = block_node()
    root = tmp_path / "mnt"
    (root / "port-03").mkdir(parents=True)
    os.chmod(root, 0o755)
    rec = FakeKernel(tmp_path / "stage")
    rec.add(root / "port-03", source=node)  # mounted for tests' CALLER (uid 1234)
    return root, rec, node


def _as(caller: Caller, root: Path, node: str, rec: FakeKernel) -> Helper:
    return Helper(make_cfg(root), caller, properties_of=lambda _d: props_for(node),
                  mount=rec.mount, umount=rec.umount, mountinfo=rec.mountinfo,
                  statvfs=rec.statvfs, mount_id=rec.mount_id, stage_root=rec.stage)


def test_another_caller_cannot_unmount_a_port(tmp_path: Path) -> None:
    root, rec, node = _mounted(tmp_path)
    answer = _as(OTHER, root, node, rec).handle(["unmount", "port-03"])
    assert answer["error"] == "not-owner" and "uid 1234" in answer["message"]
    assert rec.umounts == [] and len(rec.at(root / "port-03")) == 1
    assert helper(root, props_for(node), rec).handle(["unmount", "port-03"])["was_mounted"]
    assert rec.at(root / "port-03") == []


def test_root_may_unmount_any_port(tmp_path: Path) -> None:
    root, rec, node = _mounted(tmp_path)
    assert _as(ROOT, root, node, rec).handle(["unmount", "port-03"])["was_mounted"]
    assert rec.at(root / "port-03") == []


def test_already_mounted_for_another_caller_is_not_theirs(tmp_path: Path) -> None:
    """The old 'already mounted' answer ignored the uid: another group member got the
    port reported as its own (and a stale one replaced under the daemon)."""
    root, rec, node = _mounted(tmp_path)
    answer = _as(OTHER, root, node, rec).handle(["mount", node, "port-03"])
    assert answer["error"] == "not-owner"
    assert rec.mounts == [] and rec.umounts == []
    assert helper(root, props_for(node), rec).handle(["mount", node, "port-03"])["already"]


def test_another_caller_cannot_remount_a_port(tmp_path: Path) -> None:
    root, rec, node = _mounted(tmp_path)
    for mode in ("rw", "ro"):
        answer = _as(OTHER, root, node, rec).handle(["remount", "port-03", mode])
        assert answer["error"] == "not-owner", answer
    assert rec.mounts == [] and rec.umounts == []


def test_root_remounts_with_the_owners_options(tmp_path: Path) -> None:
    root, rec, node = _mounted(tmp_path)
    answer = _as(ROOT, root, node, rec).handle(["remount", "port-03", "ro"])
    assert answer["ok"], answer
    assert "uid=1234,gid=2345" in answer["options"]
    assert rec.mounts[0].data == "uid=1234,gid=2345,fmask=0137,dmask=0027,utf8"


# --------------------------------------------------------------------------- bounded requests


def test_a_silent_client_times_out() -> None:
    a, b = socket.socketpair()
    with a, b:
        t0 = time.monotonic()
        with pytest.raises(Refused) as exc:
            protocol.read_request(b, timeout=0.3)
        assert exc.value.code == "timeout" and time.monotonic() - t0 < 5


def test_a_dripping_client_times_out_in_total() -> None:
    """One byte every 0.1 s never lets a per-recv timeout expire; the deadline is total."""
    a, b = socket.socketpair()
    stop = threading.Event()

    def drip() -> None:
        while not stop.is_set():
            try:
                a.send(b"u")
            except OSError:
                return
            time.sleep(0.05)

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    try:
        with pytest.raises(Refused) as exc:
            protocol.read_request(b, timeout=0.5, limit=10_000)
        assert exc.value.code == "timeout"
    finally:
        stop.set()
        t.join(5)
        a.close()
        b.close()


@pytest.mark.parametrize("line,code", [
    (b"x" * 600 + b"\n", "too-long"),
    (b"unmount " + b"p" * 600, "too-long"),
    (b"unmount port-03\xff\n", "usage"),
    (b"unmount port\x1b[2J\n", "usage"),
    (b"unmount port-03 extra\n", "usage"),
    (b"mount /dev/sdb1 port-03 --config\n", "usage"),
    (b"remount port-03 rwx\n", "usage"),
    (b"mount /dev/../etc/shadow port-03\n", "bad-device"),
    (b"mount /dev/sdb1 ../etc\n", "bad-port"),
    (b"fsck /dev/sdb1 a/b\n", "bad-port"),
    (b"\n", "usage"),
    (b"shutdown now\n", "usage"),
])
def test_every_malformed_request_is_refused(line: bytes, code: str) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(line)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(Refused) as exc:
            protocol.read_request(b, timeout=5)
    assert exc.value.code == code


def test_a_good_request_is_read_up_to_the_newline() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"mount /dev/sdb1 port-03\r\nignored\n")
        assert protocol.read_request(b, timeout=5) == ["mount", "/dev/sdb1", "port-03"]


@pytest.mark.skipif(not IS_ROOT, reason="the config must belong to root or the helper's user")
def test_serve_refuses_an_oversized_request_end_to_end(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[devices]\nmount_root = "{tmp_path}/mnt"\n')
    os.chmod(cfg, 0o644)
    answer = _serve(cfg, b"unmount " + b"a" * 4096 + b"\n", _env())
    assert answer["ok"] is False and answer["error"] == "too-long"
    assert _serve(cfg, b"unmount port-04\n", _env()) == {
        "ok": True, "action": "unmount", "port": "port-04", "was_mounted": False}


def test_old_names_stay_importable() -> None:
    assert mh.Refused is Refused and mh.trusted_config is protocol.trusted_config


# --------------------------------------------------------------------------- remaining refusals


def test_a_port_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    node = block_node()
    root = tmp_path / "mnt"
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "port-03").write_text("")  # a file where the mount point should be
    rec = FakeKernel(tmp_path / "stage")
    assert helper(root, props_for(node), rec).handle(["mount", node, "port-03"])["error"] \
        == "bad-path"
    assert rec.mounts == []


@pytest.mark.parametrize("mount_root", ["relative/mnt", "/run/../etc", "/"])
def test_a_mount_root_that_is_not_a_clean_absolute_path_is_refused(tmp_path: Path,
                                                                   mount_root: str) -> None:
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    h = helper(Path(mount_root), props_for(node), rec)
    assert h.handle(["mount", node, "port-03"])["error"] == "bad-config"
    assert rec.mounts == []


def test_a_device_udev_does_not_know_is_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from dockd.helper import kernel

    node = block_node()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    udevadm = bin_dir / "udevadm"
    udevadm.write_text("#!/bin/sh\necho 'Unknown device' >&2\nexit 4\n")
    udevadm.chmod(0o755)
    monkeypatch.setattr(kernel, "TOOL_PATH", str(bin_dir))
    h = Helper(make_cfg(tmp_path / "mnt"), Caller(1234, 2345, "test"),
               stage_root=tmp_path / "stage")
    answer = h.handle(["mount", node, "port-03"])
    assert answer["error"] == "unknown-device" and "Unknown device" in answer["message"]
