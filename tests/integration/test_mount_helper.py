"""The root mount helper: argument validation, the exact mount(2) calls (staging mount,
per-mount rw, move), refusal of symlinks and foreign devices, the real read-only fsck on
loop devices, and (this kernel has no vfat/exfat) a real mount of an ext2 loop image with a
read-only filesystem and rw,nosuid,nodev,noexec mount flags through the same code path."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockd.config import AllowConfig, Config, DevicesConfig
from dockd.helper import mount_helper as mh
from dockd.helper.mount_helper import Caller, Helper, MountCall, Refused

FIX = Path(__file__).parents[1] / "fixtures" / "udev"
CALLER = Caller(1234, 2345, "test")
EXT2_CALLER = Caller(0, 0, "test")
"""The ext2 stand-in for vfat has no uid= option: its mounts show as root's (as a vfat
mount for uid 0 does), and only root may unmount or remount a mount that is root's."""
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


VFAT_DATA = "uid=1234,gid=2345,fmask=0137,dmask=0027,utf8"


@dataclass
class FakeMount:
    id: int
    path: str
    source: str
    fstype: str
    dev: str
    mount_ro: bool
    super_ro: bool
    data: str = VFAT_DATA
    root: str = "/"
    options: tuple[str, ...] = ("nosuid", "nodev", "noexec")
    propagation: str = ""

    def line(self) -> str:
        opts = ",".join(("ro" if self.mount_ro else "rw", *self.options, "relatime"))
        sup = ",".join(("ro" if self.super_ro else "rw", *([self.data] if self.data else [])))
        return (f"{self.id} 27 {self.dev} {self.root} {self.path} {opts} {self.propagation} - "
                f"{self.fstype} {self.source} {sup}\n")


def _flag_options(flags: int) -> tuple[str, ...]:
    return tuple(n for bit, n in ((mh.MS_NOSUID, "nosuid"), (mh.MS_NODEV, "nodev"),
                                  (mh.MS_NOEXEC, "noexec")) if flags & bit)


@dataclass
class FakeKernel:
    """A pretend mount table behind mount(2), umount2(2), mountinfo, statvfs and the
    descriptor's mount id: enough to follow the helper's staging sequence. ``mounts`` are
    the calls that concern recorders (the staging root's own bind/private calls go to
    ``stage_setup``); ``skip`` makes a call succeed without effect, ``fail`` makes it fail,
    ``after`` may tamper with the result."""

    stage: Path
    mounts: list[MountCall] = field(default_factory=list)
    stage_setup: list[MountCall] = field(default_factory=list)
    umounts: list[tuple[str, int]] = field(default_factory=list)
    table: list[FakeMount] = field(default_factory=list)
    skip: Callable[[MountCall], bool] = lambda _c: False
    fail: Callable[[MountCall], OSError | None] = lambda _c: None
    after: Callable[[MountCall], None] = lambda _c: None
    moved: dict[str, FakeMount] = field(default_factory=dict)
    """Where a moved mount came from: a descriptor opened on it there still reaches it."""

    @staticmethod
    def resolve(path: str) -> str:
        return os.readlink(path) if path.startswith("/proc/self/fd/") else path

    def top(self, path: str) -> FakeMount | None:
        found = [m for m in self.table if m.path == path]
        if not found and path in self.moved and self.moved[path] in self.table:
            return self.moved[path]
        return found[-1] if found else None

    def add(self, path: str | Path, *, source: str = "/dev/sdb1", fstype: str = "vfat",
            mount_ro: bool = False, super_ro: bool = True, **kw: Any) -> FakeMount:
        if "dev" not in kw:
            st = os.stat(path)
            kw["dev"] = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        m = FakeMount(100 + len(self.table), str(path), source, fstype, mount_ro=mount_ro,
                      super_ro=super_ro, **kw)
        self.table.append(m)
        return m

    def mount(self, call: MountCall) -> None:
        target = self.resolve(call.target)
        (self.stage_setup if target == str(self.stage) else self.mounts).append(call)
        err = self.fail(call)
        if err is not None:
            raise err
        if self.skip(call):
            return
        f = call.flags
        if f & (mh.MS_MOVE | mh.MS_PRIVATE | mh.MS_REMOUNT):
            m = self.top(self.resolve(call.source) if f & mh.MS_MOVE else target)
            if m is None:
                raise OSError(errno.EINVAL, "Invalid argument")
            if f & mh.MS_MOVE:
                self.moved[m.path] = m
                m.path = target
            elif f & mh.MS_PRIVATE:
                m.propagation = ""
            else:
                m.mount_ro = bool(f & mh.MS_RDONLY)
                m.options = _flag_options(f)
                if not f & mh.MS_BIND:
                    m.super_ro = bool(f & mh.MS_RDONLY)
        elif f & mh.MS_BIND:
            self.add(target, source="/dev/vda", fstype="ext4", mount_ro=False, super_ro=False,
                     data="", root=target, options=(), propagation="shared:1")
        else:
            self.add(target, source=call.source, fstype=call.fstype,
                     mount_ro=bool(f & mh.MS_RDONLY), super_ro=bool(f & mh.MS_RDONLY),
                     data=call.data, options=_flag_options(f))
        self.after(call)

    def seed(self, mountinfo: str) -> None:
        """Mounts from /proc/self/mountinfo lines (the parts FakeMount has)."""
        for line in mountinfo.splitlines():
            left, _, right = line.partition(" - ")
            f, (fstype, source, *sup) = left.split(), right.split()
            opts = f[5].split(",")
            supers = sup[0].split(",") if sup else []
            self.table.append(FakeMount(
                int(f[0]), f[4], source, fstype, f[2], "ro" in opts, "ro" in supers,
                ",".join(o for o in supers if o not in ("ro", "rw")), f[3],
                tuple(o for o in opts if o not in ("ro", "rw", "relatime")), " ".join(f[6:])))

    def umount(self, target: str, flags: int) -> None:
        self.umounts.append((target, flags))
        m = self.top(self.resolve(target))
        if m is None:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.table.remove(m)

    def mountinfo(self) -> str:
        return "".join(m.line() for m in self.table)

    def statvfs(self, path: str) -> Any:
        m = self.top(self.resolve(path))
        flags = 0
        if m is not None:
            flags = (os.ST_RDONLY if m.mount_ro or m.super_ro else 0) \
                | (os.ST_NOSUID if "nosuid" in m.options else 0) \
                | (os.ST_NODEV if "nodev" in m.options else 0) \
                | (os.ST_NOEXEC if "noexec" in m.options else 0)
        return SimpleNamespace(f_flag=flags)

    def mount_id(self, fd: int) -> int:
        m = self.top(os.readlink(f"/proc/self/fd/{fd}"))
        return m.id if m is not None else 1

    def at(self, path: str | Path) -> list[FakeMount]:
        return [m for m in self.table if m.path == str(path)]


def helper(root: Path, props: dict[str, str] | None, rec: FakeKernel | None = None,
           **kw: Any) -> Helper:
    rec = rec or FakeKernel(root.parent / "stage")
    return Helper(make_cfg(root), CALLER, properties_of=lambda _d: dict(props or {}),
                  mount=rec.mount, umount=rec.umount, mountinfo=rec.mountinfo,
                  statvfs=rec.statvfs, mount_id=rec.mount_id, stage_root=rec.stage, **kw)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("port", ["../etc", "..", ".", "", "a/b", "port 3", "/abs", "x" * 65,
                                  "port-03\n", "-rf"])
def test_bad_port_labels_are_refused(tmp_path: Path, port: str) -> None:
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
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
    rec = FakeKernel(tmp_path / "stage")
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
    rec = FakeKernel(tmp_path / "stage")
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
    """Read-only at a private staging point, per-mount rw (superblock untouched), moved."""
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    answer = helper(tmp_path / "mnt", props_for(node), rec).handle(["mount", node, "port-03"])
    assert answer["ok"], answer
    first, unlock, move = rec.mounts
    assert first.source == node and first.fstype == "vfat"
    assert first.flags == mh.MS_RDONLY | mh.MS_NOSUID | mh.MS_NODEV | mh.MS_NOEXEC == 15
    assert first.data == VFAT_DATA
    for call in rec.mounts:  # through descriptors, never a path to re-resolve
        assert call.target.startswith("/proc/self/fd/")
    assert unlock.flags == mh.MS_REMOUNT | mh.MS_BIND | mh.MS_NOSUID | mh.MS_NODEV | mh.MS_NOEXEC
    assert unlock.data == "" and not unlock.flags & mh.MS_RDONLY
    assert move.flags == mh.MS_MOVE and move.source.startswith("/proc/self/fd/")
    assert [c.flags for c in rec.stage_setup] == [mh.MS_BIND, mh.MS_PRIVATE]
    assert answer["mountpoint"] == str(tmp_path / "mnt" / "port-03")
    assert answer["options"] == f"ro,nosuid,nodev,noexec,{VFAT_DATA}"
    (m,) = rec.at(tmp_path / "mnt" / "port-03")
    assert (m.mount_ro, m.super_ro, m.source) == (False, True, node)
    assert set(m.options) == {"nosuid", "nodev", "noexec"}
    assert os.listdir(tmp_path / "stage") == [] and rec.umounts == []
    assert os.stat(tmp_path / "mnt").st_mode & 0o777 == 0o755
    assert os.stat(tmp_path / "stage").st_mode & 0o777 == 0o700
    # a second mount reuses the private staging root as it is
    answer = helper(tmp_path / "mnt", props_for(node), rec).handle(["mount", node, "port-03"])
    assert answer["ok"] and answer["already"] and len(rec.mounts) == 3
    assert [c.flags for c in rec.stage_setup] == [mh.MS_BIND, mh.MS_PRIVATE, mh.MS_PRIVATE]


def test_exfat_options(tmp_path: Path) -> None:
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    helper(tmp_path / "mnt", props_for(node, ID_FS_TYPE="exfat"), rec).handle(
        ["mount", node, "port-01"])
    assert rec.mounts[0].fstype == "exfat"
    assert rec.mounts[0].data == "uid=1234,gid=2345,fmask=0137,dmask=0027,iocharset=utf8"


def test_mount_that_did_not_come_up_read_only_is_undone(tmp_path: Path) -> None:
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    h = helper(tmp_path / "mnt", props_for(node), rec)
    h._statvfs = lambda _p: SimpleNamespace(f_flag=0)
    assert h.handle(["mount", node, "port-03"])["error"] == "failed"
    assert len(rec.umounts) == 1 and rec.umounts[0][1] == mh.MNT_DETACH
    assert rec.table[-1].path == str(tmp_path / "stage")  # only the staging root's own bind
    assert os.listdir(tmp_path / "stage") == []


@pytest.mark.parametrize("broken", ["superblock-rw", "unlock-ignored", "unlock-sets-suid",
                                    "move-ignored", "moved-elsewhere"])
def test_every_step_is_verified_and_fails_closed(tmp_path: Path, broken: str) -> None:
    """Whatever step does not give exactly the expected flags, the mount is detached and
    nothing is left at the port or the staging point."""
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    root = tmp_path / "mnt"
    def tamper(call: MountCall) -> None:
        last = rec.table[-1]
        if broken == "superblock-rw" and call.flags == mh.MOUNT_FLAGS:
            last.super_ro = False  # the first mount came up with a writable filesystem
        elif broken == "unlock-ignored" and call.flags == mh.MOUNT_RW_FLAGS:
            last.mount_ro = True
        elif broken == "unlock-sets-suid" and call.flags == mh.MOUNT_RW_FLAGS:
            last.options = ("nodev", "noexec")
        elif broken == "move-ignored" and call.flags == mh.MS_MOVE:
            last.path = rec.resolve(call.source)
        elif broken == "moved-elsewhere" and call.flags == mh.MS_MOVE:
            last.path = str(tmp_path / "other")  # and something else is at the port

    (tmp_path / "other").mkdir()
    rec.after = tamper
    answer = helper(root, props_for(node), rec).handle(["mount", node, "port-03"])
    assert answer["ok"] is False and answer["error"] == "failed", answer
    assert "unmounted" in answer["message"]
    assert [f for _t, f in rec.umounts] == [mh.MNT_DETACH]
    assert [m.path for m in rec.table] == [str(tmp_path / "stage")]
    assert os.listdir(tmp_path / "stage") == []


def test_staging_root_must_be_private_to_root(tmp_path: Path) -> None:
    node = block_node()
    (tmp_path / "stage").mkdir(mode=0o755)
    os.chmod(tmp_path / "stage", 0o755)
    rec = FakeKernel(tmp_path / "stage")
    answer = helper(tmp_path / "mnt", props_for(node), rec).handle(["mount", node, "port-03"])
    if IS_ROOT:
        assert answer["error"] == "bad-config" and rec.mounts == [] and rec.stage_setup == []
    (tmp_path / "stage").rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "stage").symlink_to(tmp_path / "elsewhere")
    answer = helper(tmp_path / "mnt", props_for(node), rec).handle(["mount", node, "port-03"])
    assert answer["error"] == "symlink" and rec.mounts == []


def test_staging_root_that_stays_shared_is_refused(tmp_path: Path) -> None:
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    rec.skip = lambda c: c.flags == mh.MS_PRIVATE
    answer = helper(tmp_path / "mnt", props_for(node), rec).handle(["mount", node, "port-03"])
    assert answer["error"] == "failed" and "private" in answer["message"]
    assert rec.mounts == []


def test_leftovers_of_a_crashed_helper_are_cleared(tmp_path: Path) -> None:
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    h = helper(tmp_path / "mnt", props_for(node), rec)
    assert h.handle(["unmount", "port-03"])["ok"]
    (tmp_path / "stage").mkdir(mode=0o700)
    rec.add(tmp_path / "stage", source="/dev/vda", fstype="ext4", data="")
    (tmp_path / "stage" / "port-03.999").mkdir()
    rec.add(tmp_path / "stage" / "port-03.999", source="/dev/sdc1", mount_ro=True)
    answer = h.handle(["mount", node, "port-03"])
    assert answer["ok"], answer
    assert len(rec.umounts) == 1 and os.listdir(tmp_path / "stage") == []
    assert [m.source for m in rec.table] == ["/dev/vda", node]


def test_vanished_device_during_mount(tmp_path: Path) -> None:
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    rec.fail = lambda c: OSError(errno.ENXIO, "No such device or address") \
        if c.source == node else None
    h = helper(tmp_path / "mnt", props_for(node), rec)
    assert h.handle(["mount", node, "port-03"])["error"] == "vanished"
    assert os.listdir(tmp_path / "stage") == [] and rec.umounts == []


def test_symlinked_mount_point_is_refused(tmp_path: Path) -> None:
    node = block_node()
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (tmp_path / "mnt").mkdir(mode=0o755)
    os.chmod(tmp_path / "mnt", 0o755)
    (tmp_path / "mnt" / "port-03").symlink_to(elsewhere)
    rec = FakeKernel(tmp_path / "stage")
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
    rec = FakeKernel(tmp_path / "stage")
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
    (root / "port-03").mkdir(parents=True)
    os.chmod(root, 0o755)
    rec = FakeKernel(tmp_path / "stage")
    rec.add(root / "port-03", source="tmpfs", fstype="tmpfs", super_ro=False, data="")
    h = helper(root, props_for(node), rec)
    assert h.handle(["mount", node, "port-03"])["error"] == "busy"
    assert h.handle(["unmount", "port-03"])["error"] == "busy"
    assert rec.mounts == [] and rec.umounts == []


def test_already_mounted_is_idempotent_and_stale_vfat_is_replaced(tmp_path: Path) -> None:
    node = block_node()
    root = tmp_path / "mnt"
    (root / "port-03").mkdir(parents=True)
    os.chmod(root, 0o755)
    rec = FakeKernel(tmp_path / "stage")
    same = rec.add(root / "port-03", source=node)
    answer = helper(root, props_for(node), rec).handle(["mount", node, "port-03"])
    assert answer["ok"] and answer["already"] and rec.mounts == []
    same.mount_ro = True  # mounted the old way (per-mount ro): replaced
    answer = helper(root, props_for(node), rec).handle(["mount", node, "port-03"])
    assert answer["ok"] and not answer["already"] and len(rec.mounts) == 3
    rec.table[-1].source = "/dev/sdc1"  # a stale recorder
    answer = helper(root, props_for(node), rec).handle(["mount", node, "port-03"])
    assert answer["ok"] and not answer["already"]
    assert [f for _t, f in rec.umounts] == [mh.MNT_DETACH] * 2 and len(rec.mounts) == 6
    assert [m.source for m in rec.at(root / "port-03")] == [node]


def test_unmount_of_nothing(tmp_path: Path) -> None:
    assert helper(tmp_path / "absent", None).handle(["unmount", "port-03"]) == \
        {"ok": True, "action": "unmount", "port": "port-03", "was_mounted": False}


def test_mountinfo_parsing_unescapes() -> None:
    info = ("36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n"
            "37 35 8:17 / /run/dockd-mnt/port-03 ro,nosuid - vfat /dev/sdb1 ro,uid=999\n")
    assert mh.mounts_at("/mnt/with space", info) == [("ext3", "/dev/root")]
    assert mh.mounts_at("/run/dockd-mnt/port-03", info) == [("vfat", "/dev/sdb1")]
    assert mh.mounts_at("/run/dockd-mnt", info) == []
    (e,) = mh.mount_entries("/mnt/with space", info)
    assert e.mount_id == 36 and e.propagation == ("master:1",) and e.mount_read_only is False
    (e,) = mh.mount_entries("/run/dockd-mnt/port-03", info)
    assert e.propagation == () and e.mount_read_only is True and e.super_read_only is True


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


def test_the_helper_refuses_to_run_under_sudo(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    evil = tmp_path / "evil.toml"
    evil.write_text('[devices]\nmount_root = "/etc"\n')
    monkeypatch.setenv("SUDO_UID", "1000")
    assert mh.main(["--config", str(evil), "unmount", "port-01"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "sudo"


@pytest.mark.skipif(not IS_ROOT, reason="ownership check applies to root")
def test_writable_config_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("")
    os.chmod(cfg, 0o666)
    with pytest.raises(Refused) as exc:
        mh.trusted_config(cfg)
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


def detach_all(path: Path) -> None:
    """Lazily unmount everything at ``path`` (a real staging root after a test)."""
    for _ in range(8):
        if _run("umount", "-l", str(path)).returncode != 0:
            break


@pytest.fixture
def real_stage(tmp_path: Path) -> Iterator[Path]:
    stage = tmp_path / "stage"
    yield stage
    detach_all(stage)


def mountinfo_entry(path: Path) -> mh.MountEntry:
    (entry,) = mh.mount_entries(str(path), Path("/proc/self/mountinfo").read_text())
    return entry


def test_real_read_only_mount(tmp_path: Path, loop_image: Any, real_stage: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The real mount(2)/umount2(2) path. This kernel has no vfat/exfat driver, so the same
    code mounts an ext2 image (its data options are the only thing the test changes)."""
    if "ext2" not in Path("/proc/filesystems").read_text():
        pytest.skip("kernel has no ext2 driver")
    node = loop_image(["mkfs.ext2", "-q"], read_only=False)
    monkeypatch.setitem(mh.FS_DATA, "ext2", "")
    root = tmp_path / "mnt"
    h = Helper(make_cfg(root), EXT2_CALLER,
               properties_of=lambda _d: props_for(node, ID_FS_TYPE="ext2"),
               stage_root=real_stage)
    answer = h.handle(["mount", node, "port-03"])
    if not answer["ok"] and "not permitted" in answer["message"]:
        pytest.skip(f"mounting is not permitted here: {answer['message']}")
    assert answer["ok"], answer
    mnt = root / "port-03"
    try:
        entry = mountinfo_entry(mnt)
        assert {"rw", "nosuid", "nodev", "noexec"} <= entry.mount_options  # the mount: rw
        assert entry.super_read_only is True  # the filesystem: read-only
        assert entry.source == node and entry.root == "/"
        assert os.statvfs(mnt).f_flag & mh.ST_WANTED == mh.ST_WANTED
        with pytest.raises(OSError) as exc:
            (mnt / "written").write_bytes(b"x")
        assert exc.value.errno == errno.EROFS
        stage = mountinfo_entry(real_stage)  # a private mount, now empty
        assert stage.propagation == () and os.listdir(real_stage) == []
        assert os.stat(real_stage).st_mode & 0o777 == 0o700
        assert h.handle(["mount", node, "port-03"])["already"] is True
    finally:
        first = h.handle(["unmount", "port-03"])
    assert first["ok"] and first["was_mounted"], first
    assert not mnt.exists()
    assert h.handle(["unmount", "port-03"])["was_mounted"] is False


def test_unmount_after_the_device_vanished(tmp_path: Path, loop_image: Any, real_stage: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if "ext2" not in Path("/proc/filesystems").read_text():
        pytest.skip("kernel has no ext2 driver")
    node = loop_image(["mkfs.ext2", "-q"])
    monkeypatch.setitem(mh.FS_DATA, "ext2", "")
    h = Helper(make_cfg(tmp_path / "mnt"), EXT2_CALLER,
               properties_of=lambda _d: props_for(node, ID_FS_TYPE="ext2"), stage_root=real_stage)
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
