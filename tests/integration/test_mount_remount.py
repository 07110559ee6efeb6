"""``remount PORT rw|ro``: the narrow way a recorder becomes writable for one step.

Validation against fake mount tables, the exact remount call, the client and the
``UdevSource.writable`` window with a fake mounter, then (this kernel has no vfat/exfat) the
real thing on an ext2 loop image through the helper: read-only, writable, read-only again
(also as seen from a sandbox-like mount namespace that is a slave of the helper's and was
made before the recorder was mounted), and ``clear_recorder`` deleting delivered clips from a
loop-mounted recorder tree."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
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
from dockd.devices.mount import HelperMounter, MountError
from dockd.devices.udev import UdevSource
from dockd.helper import mount_helper as mh
from dockd.helper.mount_helper import Caller, Helper
from dockd.pipeline import Pipeline
from tests.integration.test_mount_helper import FakeKernel, detach_all, mountinfo_entry

FIX = Path(__file__).parents[1] / "fixtures" / "udev"
CALLER = Caller(1234, 2345, "test")
EXT2_CALLER = Caller(0, 0, "test")
"""The ext2 stand-in for vfat has no uid= option: its mounts show as root's (as a vfat
mount for uid 0 does), and only root may unmount or remount a mount that is root's."""
IS_ROOT = os.geteuid() == 0
VFAT_DATA = "uid=1234,gid=2345,fmask=0137,dmask=0027,utf8"


def block_node() -> str:
    for i in range(8):
        p = f"/dev/loop{i}"
        if os.path.exists(p) and not os.path.islink(p):
            return p
    pytest.skip("no /dev/loopN block device node in this environment")


def props_for(devnode: str, name: str = "recorder_part1", **over: str) -> dict[str, str]:
    st = os.stat(devnode)
    p = json.loads((FIX / f"{name}.json").read_text())
    p.update(DEVNAME=devnode, MAJOR=str(os.major(st.st_rdev)), MINOR=str(os.minor(st.st_rdev)))
    p.update(over)
    return p


def make_cfg(root: Path) -> Config:
    return Config(devices=DevicesConfig(source="udev", mount_root=root),
                  allow=(AllowConfig(vendor_id="2e8a", model_id="0001"),))


def fake_helper(root: Path, props: dict[str, str] | None, rec: FakeKernel,
                mountinfo: str = "") -> Helper:
    rec.seed(mountinfo)
    return Helper(make_cfg(root), CALLER, properties_of=lambda _d: dict(props or {}),
                  mount=rec.mount, umount=rec.umount, mountinfo=rec.mountinfo,
                  statvfs=rec.statvfs, mount_id=rec.mount_id, stage_root=rec.stage)


def port_dir(root: Path, port: str = "port-03") -> Path:
    root.mkdir(mode=0o755, exist_ok=True)
    os.chmod(root, 0o755)
    (root / port).mkdir(exist_ok=True)
    return root / port


def info_line(target: Path, *, fstype: str = "vfat", source: str = "/dev/sdb1",
              dev: str | None = None, root: str = "/", opts: str = "rw,nosuid,nodev,noexec",
              data: str = VFAT_DATA, super_ro: bool = True) -> str:
    """A mountinfo line of a mount as the helper makes it (per-mount rw, filesystem ro); by
    default with the device number of ``target`` as it is now."""
    if dev is None:
        st = os.stat(target)
        dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sb = "ro" if super_ro else "rw"
    return f"42 27 {dev} {root} {target} {opts},relatime - {fstype} {source} {sb},{data}\n"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("port", ["../etc", "..", "", "a/b", "/abs", "x" * 65, "-rf"])
def test_bad_port_labels_are_refused(tmp_path: Path, port: str) -> None:
    rec = FakeKernel(tmp_path / "stage")
    h = fake_helper(tmp_path / "mnt", None, rec)
    for mode in ("rw", "ro"):
        assert h.handle(["remount", port, mode])["error"] == "bad-port"
    assert rec.mounts == [] and not (tmp_path / "mnt").exists()


@pytest.mark.parametrize("words", [["remount"], ["remount", "port-03"],
                                   ["remount", "port-03", "rwx"], ["remount", "port-03", "RW"],
                                   ["remount", "port-03", "rw", "now"]])
def test_usage(tmp_path: Path, words: list[str]) -> None:
    port_dir(tmp_path / "mnt")
    rec = FakeKernel(tmp_path / "stage")
    assert fake_helper(tmp_path / "mnt", None, rec).handle(words)["error"] == "usage"
    assert rec.mounts == []


def test_nothing_mounted_by_the_helper(tmp_path: Path) -> None:
    rec = FakeKernel(tmp_path / "stage")
    assert fake_helper(tmp_path / "absent", None, rec).handle(
        ["remount", "port-03", "rw"])["error"] == "not-mounted"
    port_dir(tmp_path / "mnt")
    h = fake_helper(tmp_path / "mnt", None, rec)
    assert h.handle(["remount", "port-03", "rw"])["error"] == "not-mounted"  # empty directory
    assert h.handle(["remount", "port-04", "ro"])["error"] == "not-mounted"  # no directory
    assert rec.mounts == [] and rec.umounts == []


def test_symlinked_port_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    (tmp_path / "etc").mkdir()
    (root / "port-03").symlink_to(tmp_path / "etc")
    rec = FakeKernel(tmp_path / "stage")
    info = info_line(root / "port-03")
    assert fake_helper(root, None, rec, info).handle(
        ["remount", "port-03", "rw"])["error"] == "symlink"
    assert rec.mounts == []


@pytest.mark.parametrize("over", [
    {"fstype": "tmpfs", "source": "tmpfs"},            # somebody else's tmpfs
    {"fstype": "ext4", "source": "/dev/sda1"},          # the system disk
    {"root": "/secret"},                                # a bind mount of a sub-directory
    {"source": "/dev/../etc/shadow"},
    {"opts": "rw,nodev,noexec"},                        # not nosuid: not the helper's mount
    {"opts": "ro,nosuid,nodev,noexec"},                 # per-mount ro: not how dockd mounts
    {"data": "uid=0,gid=0,fmask=0137,dmask=0027"},      # another caller's mount
    {"data": "uid=1234,gid=2345,fmask=0022,dmask=0022"},  # other permissions
    {"dev": "259:77"},                                  # not the directory the helper holds
])
def test_foreign_mounts_are_not_touched(tmp_path: Path, over: dict[str, str]) -> None:
    node = block_node()
    target = port_dir(tmp_path / "mnt")
    rec = FakeKernel(tmp_path / "stage")
    h = fake_helper(tmp_path / "mnt", props_for(node), rec, info_line(target, **over))
    code = "not-owner" if over.get("data", "").startswith("uid=0,") else "busy"
    for mode in ("rw", "ro"):
        answer = h.handle(["remount", "port-03", mode])
        assert answer["ok"] is False and answer["error"] == code, answer
    assert rec.mounts == [] and rec.umounts == []


def test_stacked_mounts_are_not_touched(tmp_path: Path) -> None:
    target = port_dir(tmp_path / "mnt")
    rec = FakeKernel(tmp_path / "stage")
    info = info_line(target) + info_line(target, source="/dev/sdc1")
    assert fake_helper(tmp_path / "mnt", None, rec, info).handle(
        ["remount", "port-03", "ro"])["error"] == "busy"
    assert rec.mounts == []


@pytest.mark.parametrize("name,over,code", [
    ("stick_part1", {}, "not-allowed"),                  # udev no longer says "recorder"
    ("recorder_part1", {"ID_FS_TYPE": "ext4"}, "bad-filesystem"),
    ("recorder_part1", {}, "busy"),  # allowed, but the mounted filesystem is not on that device
])
def test_writable_needs_todays_udev_verdict(tmp_path: Path, name: str, over: dict[str, str],
                                            code: str) -> None:
    node = block_node()
    target = port_dir(tmp_path / "mnt")
    rec = FakeKernel(tmp_path / "stage")
    h = fake_helper(tmp_path / "mnt", props_for(node, name, **over), rec,
                    info_line(target, source=node))
    assert h.handle(["remount", "port-03", "rw"])["error"] == code
    assert rec.mounts == []


def test_exact_read_only_remount_call(tmp_path: Path) -> None:
    """ro never needs udev (the device may have vanished): it only makes things safer. The
    superblock goes read-only, then the helper's own mount gets back its per-mount rw (the
    one MS_REMOUNT without MS_BIND also set), as every other namespace's copy has."""
    target = port_dir(tmp_path / "mnt")
    rec = FakeKernel(tmp_path / "stage")
    h = fake_helper(tmp_path / "mnt", None, rec, info_line(target, super_ro=False))
    answer = h.handle(["remount", "port-03", "ro"])
    assert answer["ok"], answer
    call, unlock = rec.mounts
    assert call.flags == mh.MS_REMOUNT | mh.MS_RDONLY | mh.MS_NOSUID | mh.MS_NODEV | mh.MS_NOEXEC
    assert not call.flags & mh.MS_BIND  # the superblock, keeping the filesystem's options
    assert call.data == VFAT_DATA and call.fstype == "vfat" and call.source == "/dev/sdb1"
    assert unlock.flags == mh.MS_REMOUNT | mh.MS_BIND | mh.MS_NOSUID | mh.MS_NODEV | mh.MS_NOEXEC
    assert call.target.startswith("/proc/self/fd/") and unlock.target.startswith("/proc/self/fd/")
    assert answer["options"] == f"ro,nosuid,nodev,noexec,{VFAT_DATA}"
    assert mh.REMOUNT_FLAGS["rw"] == mh.MS_REMOUNT | mh.MS_NOSUID | mh.MS_NODEV | mh.MS_NOEXEC
    (m,) = rec.at(target)
    assert (m.mount_ro, m.super_ro) == (False, True) and rec.umounts == []


@pytest.mark.parametrize("broken", ["superblock-stays-rw", "mount-stays-ro", "loses-nosuid",
                                    "unlock-fails", "remount-fails"])
def test_read_only_that_does_not_stick_unmounts(tmp_path: Path, broken: str) -> None:
    target = port_dir(tmp_path / "mnt")
    rec = FakeKernel(tmp_path / "stage")
    h = fake_helper(tmp_path / "mnt", None, rec, info_line(target, super_ro=False))
    (m,) = rec.at(target)

    def tamper(call: mh.MountCall) -> None:
        if broken == "superblock-stays-rw" and not call.flags & mh.MS_BIND:
            m.super_ro = False
        elif broken == "mount-stays-ro" and call.flags & mh.MS_BIND:
            m.mount_ro = True
        elif broken == "loses-nosuid" and call.flags & mh.MS_BIND:
            m.options = ("nodev", "noexec")

    rec.after = tamper
    rec.fail = lambda c: OSError(errno.EIO, "Input/output error") if (
        (broken == "unlock-fails" and c.flags & mh.MS_BIND)
        or (broken == "remount-fails" and not c.flags & mh.MS_BIND)) else None
    answer = h.handle(["remount", "port-03", "ro"])
    assert answer["ok"] is False and "unmounted" in answer["message"], answer
    assert [f for _t, f in rec.umounts] == [mh.MNT_DETACH] and rec.at(target) == []


def test_mount_data_lets_the_owner_delete_once_writable() -> None:
    for fstype in ("vfat", "exfat"):
        data = mh.FS_DATA[fstype].format(uid=1, gid=2)
        assert "fmask=0137" in data and "dmask=0027" in data and "umask" not in data


def test_mountinfo_entries() -> None:
    info = ("37 35 8:17 / /run/dockd-mnt/port-03 rw,nosuid,nodev,noexec,relatime shared:9 - "
            "vfat /dev/sdb1 ro,uid=999,gid=999,fmask=0137,dmask=0027,utf8\n")
    (e,) = mh.mount_entries("/run/dockd-mnt/port-03", info)
    assert e.dev == (8, 17) and e.root == "/" and e.fstype == "vfat" and e.source == "/dev/sdb1"
    assert {"rw", "nosuid", "nodev", "noexec"} <= e.mount_options
    assert e.mount_read_only is False and e.super_read_only is True
    assert e.mount_id == 37 and e.propagation == ("shared:9",)
    assert "fmask=0137" in e.super_options
    assert mh.mount_entries("/run/dockd-mnt", info) == []


# --------------------------------------------------------------------------- client side


def test_helper_mounter_remount() -> None:
    argv: list[list[str]] = []

    def run(a: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        argv.append(a)
        mode = a[-1]
        return subprocess.CompletedProcess(a, 0, json.dumps({"ok": True, "mode": mode}), "")

    m = HelperMounter("/h", runner=run, euid=lambda: 0)
    m.remount("port-03", True)
    m.remount("port-03", False)
    assert argv == [["/h", "remount", "port-03", "rw"], ["/h", "remount", "port-03", "ro"]]

    def wrong(a: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(a, 0, json.dumps({"ok": True, "mode": "ro"}), "")

    with pytest.raises(MountError) as exc:
        HelperMounter("/h", runner=wrong, euid=lambda: 0).remount("port-03", True)
    assert exc.value.code == "protocol"


class FakeMounter:
    def __init__(self, fail_rw: str | None = None, fail_ro: bool = False):
        self.calls: list[tuple[str, ...]] = []
        self.fail_rw, self.fail_ro = fail_rw, fail_ro

    def fsck(self, devnode: str, port: str) -> Any:
        raise AssertionError("not used")

    def mount(self, devnode: str, port: str) -> Any:
        raise AssertionError("not used")

    def unmount(self, port: str) -> bool:
        self.calls.append(("unmount", port))
        return True

    def remount(self, port: str, writable: bool) -> None:
        self.calls.append(("remount", port, "rw" if writable else "ro"))
        if writable and self.fail_rw:
            raise MountError("helper said no", code=self.fail_rw)
        if not writable and self.fail_ro:
            raise MountError("remount failed", code="failed")


def fake_source(tmp_path: Path, mounter: Any) -> UdevSource:
    return UdevSource(make_cfg(tmp_path / "mnt"), mounter=mounter,
                      enumerate_devices=lambda: [], use_monitor=False)


def test_window_restores_read_only_even_on_exceptions(tmp_path: Path) -> None:
    m = FakeMounter()
    src = fake_source(tmp_path, m)
    with src.writable("port-03"):
        assert m.calls == [("remount", "port-03", "rw")]
    with pytest.raises(KeyError), src.writable("port-03"):
        raise KeyError("boom")
    assert m.calls == [("remount", "port-03", p) for p in ("rw", "ro", "rw", "ro")]


def test_nested_windows_share_one_read_write_period(tmp_path: Path) -> None:
    m = FakeMounter()
    src = fake_source(tmp_path, m)
    with src.writable("port-03"):
        with src.writable("port-03"):
            pass
        assert m.calls == [("remount", "port-03", "rw")]
    assert m.calls == [("remount", "port-03", "rw"), ("remount", "port-03", "ro")]


def test_failed_read_only_remount_unmounts(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    m = FakeMounter(fail_ro=True)
    src = fake_source(tmp_path, m)
    with caplog.at_level(logging.ERROR), src.writable("port-03"):
        pass
    assert m.calls[-1] == ("unmount", "port-03")
    assert "rather than leave it writable" in caplog.text
    with pytest.raises(MountError), src.writable("port-03"):  # unmounted: no more windows
        pass


@pytest.mark.parametrize("code,restores", [("not-allowed", False), ("not-mounted", False),
                                           ("timeout", True), ("unreachable", True)])
def test_refused_read_write(tmp_path: Path, code: str, restores: bool) -> None:
    m = FakeMounter(fail_rw=code)
    src = fake_source(tmp_path, m)
    ran = False
    with pytest.raises(MountError), src.writable("port-03"):
        ran = True
    assert not ran
    assert (("remount", "port-03", "ro") in m.calls) is restores


def test_pipeline_hook() -> None:
    seen: list[str] = []

    def factory(port: str) -> Any:
        seen.append(port)
        return "cm"

    assert Pipeline.writable(SimpleNamespace(writable_for=None), "port-03", Path("/x")) is None
    fn = Pipeline.writable(SimpleNamespace(writable_for=factory), "port-03", Path("/x"))
    assert fn is not None and fn() == "cm" and seen == ["port-03"]


# --------------------------------------------------------------------------- real devices


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


@pytest.fixture
def ext2_recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """attach(content_dir=None) -> (helper, devnode): an ext2 loop device (read-write loop,
    so that a remount rw can work) and a real helper that treats it as a recorder."""
    if not IS_ROOT or shutil.which("losetup") is None or shutil.which("mkfs.ext2") is None:
        pytest.skip("needs root, losetup and mkfs.ext2")
    if "ext2" not in Path("/proc/filesystems").read_text():
        pytest.skip("kernel has no ext2 driver")
    monkeypatch.setitem(mh.FS_DATA, "ext2", "")
    attached: list[str] = []
    helpers: list[Helper] = []

    def attach(content: Path | None = None, root: Path | None = None,
               stage: Path | None = None) -> tuple[Helper, str]:
        img = tmp_path / f"rec{len(attached)}.img"
        with open(img, "wb") as f:
            f.truncate(16 * 1024 * 1024)
        proc = _run("mkfs.ext2", "-q", *(["-d", str(content)] if content else []), str(img))
        assert proc.returncode == 0, proc.stderr
        proc = _run("losetup", "-f", "--show", str(img))
        if proc.returncode != 0:
            pytest.skip(f"loop devices not usable here: {proc.stderr.strip()}")
        node = proc.stdout.strip()
        attached.append(node)
        h = Helper(make_cfg(root or tmp_path / "mnt"), EXT2_CALLER,
                   properties_of=lambda _d: props_for(node, ID_FS_TYPE="ext2"),
                   stage_root=stage or tmp_path / "stage")
        helpers.append(h)
        return h, node

    yield attach
    for h in helpers:
        h.handle(["unmount", "port-03"])
        detach_all(h.stage_root)
    for node in attached:
        _run("losetup", "-d", node)


def mount_opts(mnt: Path) -> set[str]:
    return set(mountinfo_entry(mnt).mount_options)


def assert_read_only(mnt: Path) -> None:
    """EROFS because the filesystem is read-only; the mount itself is rw,nosuid,nodev,noexec."""
    with pytest.raises(OSError) as exc:
        (mnt / "written").write_bytes(b"x")
    assert exc.value.errno == errno.EROFS
    entry = mountinfo_entry(mnt)
    assert {"rw", "nosuid", "nodev", "noexec"} <= entry.mount_options
    assert entry.super_read_only is True
    assert os.statvfs(mnt).f_flag & mh.ST_WANTED == mh.ST_WANTED


def mount_or_skip(h: Helper, node: str) -> Path:
    answer = h.handle(["mount", node, "port-03"])
    if not answer["ok"] and "not permitted" in answer["message"]:
        pytest.skip(f"mounting is not permitted here: {answer['message']}")
    assert answer["ok"], answer
    return Path(answer["mountpoint"])


def test_real_remount_read_write_and_back(ext2_recorder: Any,
                                          caplog: pytest.LogCaptureFixture) -> None:
    h, node = ext2_recorder()
    mnt = mount_or_skip(h, node)
    assert_read_only(mnt)
    with caplog.at_level(logging.INFO, logger="dockd.helper.mount_helper"):
        answer = h.handle(["remount", "port-03", "rw"])
    assert answer["ok"] and answer["mode"] == "rw", answer
    assert "READ-WRITE" in caplog.text  # every remount is logged
    opts = mount_opts(mnt)
    assert {"rw", "nosuid", "nodev", "noexec"} <= opts and "ro" not in opts
    assert mountinfo_entry(mnt).super_read_only is False
    (mnt / "clip.mp4").write_bytes(b"video")
    (mnt / "clip.mp4").unlink()
    (mnt / "TIME.TXT").write_text("2024-01-01 00:00:00\n")
    assert h.handle(["remount", "port-03", "rw"])["ok"]  # idempotent
    answer = h.handle(["remount", "port-03", "ro"])
    assert answer["ok"] and answer["mode"] == "ro", answer
    assert_read_only(mnt)
    assert (mnt / "TIME.TXT").read_text() == "2024-01-01 00:00:00\n"
    assert h.handle(["unmount", "port-03"])["was_mounted"]
    assert h.handle(["remount", "port-03", "rw"])["error"] == "not-mounted"


def test_real_remount_refused_once_udev_no_longer_allows(ext2_recorder: Any) -> None:
    h, node = ext2_recorder()
    mnt = mount_or_skip(h, node)
    h._props = lambda _d: props_for(node, "stick_part1", ID_FS_TYPE="ext2")
    assert h.handle(["remount", "port-03", "rw"])["error"] == "not-allowed"
    assert_read_only(mnt)
    assert h.handle(["remount", "port-03", "ro"])["ok"]  # making it safer is always allowed


def in_process(h: Helper) -> HelperMounter:
    """The real client, its 'executable' being the helper object in this process."""
    def run(argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        answer = h.handle(argv[1:])
        return subprocess.CompletedProcess(argv, 0 if answer["ok"] else 1,
                                           json.dumps(answer) + "\n", "")

    return HelperMounter("dockd-mount", runner=run, euid=lambda: 0)


def test_real_window_restores_read_only_after_an_exception(tmp_path: Path,
                                                           ext2_recorder: Any) -> None:
    h, node = ext2_recorder()
    mnt = mount_or_skip(h, node)
    src = fake_source(tmp_path, in_process(h))
    with pytest.raises(RuntimeError), src.writable("port-03"):
        (mnt / "half-written").write_bytes(b"x")
        raise RuntimeError("step failed half-way")
    assert_read_only(mnt)
    assert (mnt / "half-written").exists()


@pytest.mark.slow
def test_real_clearing_through_the_window(tmp_path: Path, workdir: Path, make_recorder: Any,
                                          ext2_recorder: Any) -> None:
    """Delivered clips are erased from a loop-mounted recorder that is read-only before and
    after; the same tree ingested from a plain directory gives the clips' delivered state."""
    from dockd.config import for_workdir
    from dockd.delivery.clearing import clear_recorder, verify_with
    from dockd.delivery.local import LocalTarget
    from dockd.oneshot import ingest_tree
    from dockd.store import State

    cfg = for_workdir(workdir)
    cfg = dataclasses.replace(cfg, profiles=(dataclasses.replace(cfg.profiles[0],
                                                                 clear_policy="never"),))
    tree = make_recorder(segments=2)
    assert ingest_tree(cfg, tree, create_key=True)["ok"]
    clips = sorted(p.relative_to(tree) for p in tree.rglob("*.MP4"))
    assert len(clips) == 2
    h, node = ext2_recorder(tree)  # the recorder's filesystem holds the same tree
    mnt = mount_or_skip(h, node)
    assert_read_only(mnt)
    src = fake_source(tmp_path, in_process(h))
    with State(cfg.paths.database) as s:
        out = clear_recorder(s, serial="A1234567", root=mnt, port="port-03",
                             required_targets=["primary"],
                             verify_copy=verify_with({"primary": LocalTarget(
                                 "primary", cfg.targets[0].path)}),
                             writable=lambda: src.writable("port-03"))
        assert {r["state"] for r in s.query("SELECT state FROM clips")} == {"cleared"}
    assert sorted(out.cleared) == sorted(p.name for p in clips) and out.kept == []
    assert not any((mnt / p).exists() for p in clips)
    assert_read_only(mnt)


CHILD = r"""
import errno, json, os, sys
print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "write":
        try:
            with open(arg, "wb") as f:
                f.write(b"from the sandbox")
            os.unlink(arg)
            print("ok", flush=True)
        except OSError as exc:
            print(errno.errorcode.get(exc.errno, str(exc.errno)), flush=True)
    elif cmd == "mountinfo":
        with open("/proc/self/mountinfo") as f:
            print(json.dumps(f.read()), flush=True)
    else:
        break
"""


class Sandbox:
    """A process in its own mount namespace, a slave of ours (as systemd sets up
    ``PrivateMounts=``/``ProtectSystem=`` for dockd.service), created before any recorder is
    mounted."""

    def __init__(self, unshare: str) -> None:
        self.proc = subprocess.Popen([unshare, "-m", "--propagation", "slave", sys.executable,
                                      "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline() if self.proc.stdout else ""
        if ready.strip() != "ready":
            self.close()
            pytest.skip(f"cannot make a mount namespace here: {ready!r}")

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def write(self, path: Path) -> str:
        return self.ask(f"write {path}")

    def entries(self, path: Path) -> list[mh.MountEntry]:
        return mh.mount_entries(str(path), json.loads(self.ask("mountinfo")))

    def mountinfo(self) -> str:
        return str(json.loads(self.ask("mountinfo")))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture
def shared_area(tmp_path: Path) -> Iterator[Path]:
    """A directory that is a shared mount of its own, as ``/run`` is on a systemd host (this
    test machine's ``/`` is private, which would propagate nothing at all)."""
    area = tmp_path / "area"
    area.mkdir()
    proc = _run("mount", "--bind", str(area), str(area))
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.strip()}")
    try:
        assert _run("mount", "--make-shared", str(area)).returncode == 0
        yield area
    finally:
        _run("umount", "-l", str(area))


def test_real_window_works_in_a_slave_mount_namespace(ext2_recorder: Any,
                                                      shared_area: Path) -> None:
    """The sandboxed daemon's problem: its copy of the mount must follow the remounts. Only
    the filesystem is read-only, so the namespace made before the mount gets EROFS, then can
    write inside the window, then gets EROFS again; and the staging mount never shows up
    there."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1)")
    root, stage = shared_area / "mnt", shared_area / "stage"
    sandbox = Sandbox(unshare)
    try:
        h, node = ext2_recorder(root=root, stage=stage)
        mnt = mount_or_skip(h, node)
        assert_read_only(mnt)
        (entry,) = sandbox.entries(mnt)  # the propagated copy
        assert {"rw", "nosuid", "nodev", "noexec"} <= entry.mount_options
        assert entry.super_read_only is True and entry.source == node
        assert not any(f" {stage}/" in ln for ln in sandbox.mountinfo().splitlines())
        assert sandbox.write(mnt / "clip.mp4") == "EROFS"

        assert h.handle(["remount", "port-03", "rw"])["ok"]
        assert sandbox.write(mnt / "clip.mp4") == "ok"  # inside the window: writable there too
        (entry,) = sandbox.entries(mnt)
        assert entry.super_read_only is False and entry.mount_read_only is False
        assert {"nosuid", "nodev", "noexec"} <= entry.mount_options

        assert h.handle(["remount", "port-03", "ro"])["ok"]
        assert sandbox.write(mnt / "clip.mp4") == "EROFS"
        assert_read_only(mnt)
        assert sandbox.entries(mnt)[0].super_read_only is True

        assert h.handle(["unmount", "port-03"])["was_mounted"]
        assert sandbox.entries(mnt) == []  # the unmount propagates as well
    finally:
        sandbox.close()
