"""The root mount helper: argument validation, the exact mount(2) call, refusal of
symlinks and foreign devices, the real read-only fsck on loop devices, and (this kernel has
no vfat/exfat) a real read-only mount of an ext2 loop image through the same code path."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockd.config import AllowConfig, Config, DevicesConfig
from dockd.helper import mount_helper as mh
from dockd.helper.mount_helper import Caller, Helper, MountCall, Refused

FIX = Path(__file__).parent / "fixtures" / "udev"
CALLER = Caller(1234, 2345, "test")
IS_ROOT = os.geteuid() == 0


def fixture_props(name: str) -> dict[str, str]:
    return json.loads((FIX / f"{name}.json").read_text())


def block_node() -> str:
    for i in range(8):
        p = f"/dev/loop{i}"
        if os.path.exists(p) and not os.path.islink(p):
            return p
    pytest.skip("no /dev/loopN block device node in this environment")


def props_for(devnode: str, name: str = "recorder_part1", **over: str) -> dict[str, str]:
    st = os.stat(devnode)
    p = fixture_props(name)
    p.update(DEVNAME=devnode, MAJOR=str(os.major(st.st_rdev)), MINOR=str(os.minor(st.st_rdev)))
    p.update(over)
    return p


def make_cfg(root: Path) -> Config:
    return Config(devices=DevicesConfig(source="udev", mount_root=root),
                  allow=(AllowConfig(vendor_id="2e8a", model_id="0001"),))


class Recorder:
    def __init__(self) -> None:
        self.mounts: list[MountCall] = []
        self.umounts: list[tuple[str, int]] = []

    def mount(self, call: MountCall) -> None:
        self.mounts.append(call)

    def umount(self, target: str, flags: int) -> None:
        self.umounts.append((target, flags))


def helper(root: Path, props: dict[str, str] | None, rec: Recorder | None = None,
           mountinfo: str = "", **kw: Any) -> Helper:
    rec = rec or Recorder()
    return Helper(make_cfg(root), CALLER, properties_of=lambda _d: dict(props or {}),
                  mount=rec.mount, umount=rec.umount, mountinfo=lambda: mountinfo,
                  statvfs=lambda _p: SimpleNamespace(f_flag=mh.ST_WANTED), **kw)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("port", ["../etc", "..", ".", "", "a/b", "port 3", "/abs", "x" * 65,
                                  "port-03\n", "-rf"])
def test_bad_port_labels_are_refused(tmp_path: Path, port: str) -> None:
    node = block_node()
    rec = Recorder()
    answer = helper(tmp_path / "mnt", props_for(node), rec).handle(["mount", node, port])
    assert answer == {"ok": False, "error": "bad-port", "message": answer["message"]}
    assert rec.mounts == [] and not (tmp_path / "mnt").exists()
    assert helper(tmp_path / "mnt", None).handle(["unmount", port])["error"] == "bad-port"


@pytest.mark.parametrize("devnode,code", [
    ("/dev/../etc/passwd", "bad-device"), ("/etc/passwd", "bad-device"),
    ("/dev/sdb1;reboot", "bad-device"), ("dev/sdb1", "bad-device"), ("/dev/", "bad-device"),
    ("/dev/null", "bad-device"),  # a character device
    ("/dev/stdin", "bad-device"),  # a symlink
    ("/dev/sdzz9", "vanished"),
])
def test_bad_device_nodes_are_refused(tmp_path: Path, devnode: str, code: str) -> None:
    rec = Recorder()
    answer = helper(tmp_path / "mnt", {"DEVNAME": devnode}, rec).handle(["mount", devnode, "port-03"])
    assert answer["ok"] is False and answer["error"] == code, answer
    assert rec.mounts == []


@pytest.mark.parametrize("name,over,code", [
    ("stick_part1", {}, "not-allowed"),
    ("sata_part2", {}, "not-allowed"),
    ("recorder_part1", {"ID_BUS": "ata"}, "not-allowed"),
    ("recorder_part1", {"ID_FS_TYPE": "ext4"}, "bad-filesystem"),
    ("recorder_part1", {"ID_FS_TYPE": ""}, "bad-filesystem"),
    ("recorder_part1", {"MINOR": "250"}, "bad-device"),
    ("recorder_part1", {"DEVTYPE": "usb_device"}, "bad-device"),
])
def test_non_recorders_are_refused(tmp_path: Path, name: str, over: dict[str, str],
                                   code: str) -> None:
    node = block_node()
    rec = Recorder()
    h = helper(tmp_path / "mnt", props_for(node, name, **over), rec)
    assert h.handle(["mount", node, "port-03"])["error"] == code
    assert h.handle(["fsck", node])["error"] == code
    assert rec.mounts == []


def test_udev_must_name_the_same_node(tmp_path: Path) -> None:
    node = block_node()
    answer = helper(tmp_path / "m", props_for(node, DEVNAME="/dev/sdb1")).handle(
        ["mount", node, "port-03"])
    assert answer["error"] == "bad-device"


@pytest.mark.parametrize("words", [[], ["mount"], ["mount", "/dev/sdb1"], ["format", "/dev/sdb"],
                                   ["mount", "/dev/sdb1", "port-03", "rw"], ["umount", "p"]])
def test_usage(tmp_path: Path, words: list[str]) -> None:
    assert helper(tmp_path, None).handle(words)["error"] == "usage"


# --------------------------------------------------------------------------- the mount call


def test_exact_mount_call_for_a_vfat_recorder(tmp_path: Path) -> None:
    node = block_node()
    rec = Recorder()
    answer = helper(tmp_path / "mnt", props_for(node), rec).handle(["mount", node, "port-03"])
    assert answer["ok"], answer
    (call,) = rec.mounts
    assert call.source == node and call.fstype == "vfat"
    assert call.flags == mh.MS_RDONLY | mh.MS_NOSUID | mh.MS_NODEV | mh.MS_NOEXEC == 15
    assert call.data == "uid=1234,gid=2345,umask=0227,utf8"
    assert call.target.startswith("/proc/self/fd/")  # through the fd, not a path to re-resolve
    assert answer["mountpoint"] == str(tmp_path / "mnt" / "port-03")
    assert answer["options"] == "ro,nosuid,nodev,noexec,uid=1234,gid=2345,umask=0227,utf8"
    st = os.stat(tmp_path / "mnt")
    assert st.st_mode & 0o777 == 0o755


def test_exfat_options(tmp_path: Path) -> None:
    node = block_node()
    rec = Recorder()
    helper(tmp_path / "mnt", props_for(node, ID_FS_TYPE="exfat"), rec).handle(
        ["mount", node, "port-01"])
    assert rec.mounts[0].fstype == "exfat"
    assert rec.mounts[0].data == "uid=1234,gid=2345,umask=0227,iocharset=utf8"


def test_mount_that_did_not_come_up_read_only_is_undone(tmp_path: Path) -> None:
    node = block_node()
    rec = Recorder()
    h = helper(tmp_path / "mnt", props_for(node), rec)
    h._statvfs = lambda _p: SimpleNamespace(f_flag=0)
    assert h.handle(["mount", node, "port-03"])["error"] == "failed"
    assert len(rec.umounts) == 1 and rec.umounts[0][1] == mh.MNT_DETACH


def test_vanished_device_during_mount(tmp_path: Path) -> None:
    node = block_node()

    def gone(_call: MountCall) -> None:
        raise OSError(errno.ENXIO, "No such device or address")

    h = helper(tmp_path / "mnt", props_for(node))
    h._mount = gone
    assert h.handle(["mount", node, "port-03"])["error"] == "vanished"


def test_symlinked_mount_point_is_refused(tmp_path: Path) -> None:
    node = block_node()
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (tmp_path / "mnt").mkdir(mode=0o755)
    os.chmod(tmp_path / "mnt", 0o755)
    (tmp_path / "mnt" / "port-03").symlink_to(elsewhere)
    rec = Recorder()
    h = helper(tmp_path / "mnt", props_for(node), rec)
    assert h.handle(["mount", node, "port-03"])["error"] == "symlink"
    assert h.handle(["unmount", "port-03"])["error"] == "bad-port"
    assert rec.mounts == [] and rec.umounts == []


def test_symlinked_mount_root_or_parent_is_refused(tmp_path: Path) -> None:
    node = block_node()
    real = tmp_path / "real"
    (real / "mnt").mkdir(parents=True)
    os.chmod(real / "mnt", 0o755)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "mntlink").symlink_to(real / "mnt")
    rec = Recorder()
    for root in (tmp_path / "link" / "mnt", tmp_path / "mntlink"):
        assert helper(root, props_for(node), rec).handle(["mount", node, "port-03"])["error"] \
            == "symlink"
    assert rec.mounts == []


@pytest.mark.skipif(not IS_ROOT, reason="ownership checks apply when the helper runs as root")
def test_group_writable_mount_root_is_refused(tmp_path: Path) -> None:
    node = block_node()
    (tmp_path / "mnt").mkdir()
    os.chmod(tmp_path / "mnt", 0o775)
    assert helper(tmp_path / "mnt", props_for(node)).handle(["mount", node, "p1"])["error"] \
        == "bad-config"


def test_stale_mounts_of_other_kinds_are_not_touched(tmp_path: Path) -> None:
    node = block_node()
    root = tmp_path / "mnt"
    info = f"42 27 0:50 / {root}/port-03 rw,relatime - tmpfs tmpfs rw\n"
    rec = Recorder()
    h = helper(root, props_for(node), rec, mountinfo=info)
    assert h.handle(["mount", node, "port-03"])["error"] == "busy"
    assert h.handle(["unmount", "port-03"])["error"] == "busy"
    assert rec.mounts == [] and rec.umounts == []


def test_already_mounted_is_idempotent_and_stale_vfat_is_replaced(tmp_path: Path) -> None:
    node = block_node()
    root = tmp_path / "mnt"
    rec = Recorder()
    same = f"42 27 8:17 / {root}/port-03 ro,nosuid - vfat {node} ro\n"
    answer = helper(root, props_for(node), rec, mountinfo=same).handle(["mount", node, "port-03"])
    assert answer["ok"] and answer["already"] and rec.mounts == []
    stale = f"42 27 8:33 / {root}/port-03 ro,nosuid - vfat /dev/sdc1 ro\n"
    answer = helper(root, props_for(node), rec, mountinfo=stale).handle(["mount", node, "port-03"])
    assert answer["ok"] and not answer["already"]
    assert [f for _t, f in rec.umounts] == [mh.MNT_DETACH] and len(rec.mounts) == 1


def test_unmount_of_nothing(tmp_path: Path) -> None:
    assert helper(tmp_path / "absent", None).handle(["unmount", "port-03"]) == \
        {"ok": True, "action": "unmount", "port": "port-03", "was_mounted": False}


def test_mountinfo_parsing_unescapes() -> None:
    info = ("36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n"
            "37 35 8:17 / /run/dockd-mnt/port-03 ro,nosuid - vfat /dev/sdb1 ro,uid=999\n")
    assert mh.mounts_at("/mnt/with space", info) == [("ext3", "/dev/root")]
    assert mh.mounts_at("/run/dockd-mnt/port-03", info) == [("vfat", "/dev/sdb1")]
    assert mh.mounts_at("/run/dockd-mnt", info) == []


def test_parse_udev_properties() -> None:
    text = "".join(f"{k}={v}\n" for k, v in fixture_props("recorder_part1").items())
    assert mh.parse_udev_properties(text) == fixture_props("recorder_part1")


# --------------------------------------------------------------------------- entry point


def test_main_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[devices]\nmount_root = "{tmp_path}/mnt"\n')
    os.chmod(cfg, 0o644)
    monkeypatch.delenv("SUDO_UID", raising=False)
    if not IS_ROOT:
        pytest.skip("--config is honoured only for root")
    assert mh.main(["--config", str(cfg), "unmount", "port-09"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"ok": True, "action": "unmount", "port": "port-09", "was_mounted": False}
    assert mh.main(["--config", str(cfg), "mount", "/dev/../etc/shadow", "port-09"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "bad-device"


def test_config_from_the_caller_is_refused_under_sudo(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    evil = tmp_path / "evil.toml"
    evil.write_text('[devices]\nmount_root = "/etc"\n')
    monkeypatch.setenv("SUDO_UID", "1000")
    assert mh.main(["--config", str(evil), "unmount", "port-01"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "usage"


@pytest.mark.skipif(not IS_ROOT, reason="ownership check applies to root")
def test_writable_config_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("")
    os.chmod(cfg, 0o666)
    with pytest.raises(Refused) as exc:
        mh.trusted_config(cfg, serve=True)
    assert exc.value.code == "bad-config"


# --------------------------------------------------------------------------- real devices


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


@pytest.fixture
def loop_image(tmp_path: Path) -> Iterator[Any]:
    attached: list[str] = []

    def attach(mkfs: list[str], size_mb: int = 8, read_only: bool = True) -> str:
        if not IS_ROOT or shutil.which("losetup") is None or shutil.which(mkfs[0]) is None:
            pytest.skip(f"needs root, losetup and {mkfs[0]}")
        img = tmp_path / f"img{len(attached)}.img"
        with open(img, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        proc = _run(*mkfs, str(img))
        assert proc.returncode == 0, proc.stderr
        proc = _run("losetup", "-f", "--show", *(["-r"] if read_only else []), str(img))
        if proc.returncode != 0:
            pytest.skip(f"loop devices not usable here: {proc.stderr.strip()}")
        attached.append(proc.stdout.strip())
        return proc.stdout.strip()

    yield attach
    for dev in attached:
        _run("losetup", "-d", dev)


@pytest.mark.parametrize("mkfs,fstype", [(["mkfs.vfat"], "vfat"), (["mkfs.exfat"], "exfat")])
def test_real_read_only_fsck(tmp_path: Path, loop_image: Any, mkfs: list[str],
                             fstype: str) -> None:
    node = loop_image(mkfs)
    h = helper(tmp_path / "mnt", props_for(node, ID_FS_TYPE=fstype))
    answer = h.handle(["fsck", node, "port-03"])
    assert answer["ok"] and answer["verdict"] == "clean", answer
    assert answer["argv"][1] == "-n"


def test_real_fsck_finds_errors(tmp_path: Path, loop_image: Any) -> None:
    if not IS_ROOT:
        pytest.skip("needs root")
    img = tmp_path / "bad.img"
    with open(img, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    assert _run("mkfs.vfat", str(img)).returncode == 0
    with open(img, "r+b") as f:  # make the two FAT copies disagree
        f.seek(512 * 4 + 8)  # first FAT of a small FAT12/16 image starts after 4 reserved sectors
        f.write(b"\xff\x0f\xff\x0f")
    proc = _run("losetup", "-f", "--show", "-r", str(img))
    if proc.returncode != 0:
        pytest.skip("loop devices not usable here")
    node = proc.stdout.strip()
    try:
        answer = helper(tmp_path / "m", props_for(node)).handle(["fsck", node])
    finally:
        _run("losetup", "-d", node)
    assert answer["ok"] and answer["verdict"] == "errors", answer


def test_real_read_only_mount(tmp_path: Path, loop_image: Any,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The real mount(2)/umount2(2) path. This kernel has no vfat/exfat driver, so the same
    code mounts an ext2 image (its data options are the only thing the test changes)."""
    if "ext2" not in Path("/proc/filesystems").read_text():
        pytest.skip("kernel has no ext2 driver")
    node = loop_image(["mkfs.ext2", "-q"], read_only=False)
    monkeypatch.setitem(mh.FS_DATA, "ext2", "")
    root = tmp_path / "mnt"
    h = Helper(make_cfg(root), CALLER, properties_of=lambda _d: props_for(node, ID_FS_TYPE="ext2"))
    answer = h.handle(["mount", node, "port-03"])
    if not answer["ok"] and "not permitted" in answer["message"]:
        pytest.skip(f"mounting is not permitted here: {answer['message']}")
    assert answer["ok"], answer
    mnt = root / "port-03"
    try:
        line = next(ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
                    if f" {mnt} " in ln)
        opts = set(line.split()[5].split(","))
        assert {"ro", "nosuid", "nodev", "noexec"} <= opts
        with pytest.raises(OSError) as exc:
            (mnt / "written").write_bytes(b"x")
        assert exc.value.errno == errno.EROFS
        assert h.handle(["mount", node, "port-03"])["already"] is True
    finally:
        first = h.handle(["unmount", "port-03"])
    assert first["ok"] and first["was_mounted"], first
    assert not mnt.exists()
    assert h.handle(["unmount", "port-03"])["was_mounted"] is False


def test_unmount_after_the_device_vanished(tmp_path: Path, loop_image: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if "ext2" not in Path("/proc/filesystems").read_text():
        pytest.skip("kernel has no ext2 driver")
    node = loop_image(["mkfs.ext2", "-q"])
    monkeypatch.setitem(mh.FS_DATA, "ext2", "")
    h = Helper(make_cfg(tmp_path / "mnt"), CALLER,
               properties_of=lambda _d: props_for(node, ID_FS_TYPE="ext2"))
    answer = h.handle(["mount", node, "port-05"])
    if not answer["ok"]:
        pytest.skip(f"mounting is not possible here: {answer['message']}")
    fd = os.open(tmp_path / "mnt" / "port-05", os.O_RDONLY)  # a reader still busy on it
    try:
        _run("losetup", "-d", node)  # "unplugged" (auto-clears once unmounted)
        answer = h.handle(["unmount", "port-05"])
        assert answer["ok"] and answer["was_mounted"], answer  # lazy: busy is fine
    finally:
        os.close(fd)
    assert not (tmp_path / "mnt" / "port-05").exists()


def test_serve_mode_over_a_socket(tmp_path: Path) -> None:
    """One request line on a socket as stdin (as systemd's Accept=yes passes it)."""
    if not IS_ROOT:
        pytest.skip("--config is honoured only for root")
    import socket

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[devices]\nmount_root = "{tmp_path}/mnt"\n')
    os.chmod(cfg, 0o644)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"unmount port-04\n")
        env = {k: v for k, v in os.environ.items() if k != "SUDO_UID"}
        proc = subprocess.run([sys.executable, "-m", "dockd.helper.mount_helper", "--serve",
                               "--config", str(cfg)], stdin=b, stdout=b,
                              stderr=subprocess.PIPE, timeout=60, env=env)
        b.shutdown(socket.SHUT_WR)
        reply = a.makefile("rb").read().decode()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(reply) == {"ok": True, "action": "unmount", "port": "port-04",
                                 "was_mounted": False}
