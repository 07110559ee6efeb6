"""The mount helper's FUSE path, without root: when it is taken (ENODEV from a kernel
without the driver, and only then), the fixed driver command lines, the systemd-run
launcher, the driver's output kept off the answer channel, refusal of FUSE mounts the
helper did not make for this caller, and waiting for a detached driver."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dockd.helper import fuse_mount
from dockd.helper.stage import fs_of
from tests.integration.test_mount_helper import CALLER, FakeKernel, block_node, helper, props_for


class FakeDriver:
    """Stands in for fusefat / mount.exfat-fuse: records the argv and makes the mount appear
    in the fake kernel at the staging point, read-only unless started ``rw``/``rw+``."""

    def __init__(self, rec: FakeKernel, fail: str | None = None):
        self.rec, self.fail = rec, fail
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, argv: list[str], **kw: Any) -> None:
        self.calls.append((argv, kw))
        if self.fail:
            raise OSError(errno.EIO, self.fail)
        opts, devnode, target = argv[2], argv[3], argv[4]
        ro = opts.split(",")[0] == "ro"
        fstype = "fuse.vfat" if "subtype=vfat" in opts else "fuseblk"
        self.rec.add(target, source=devnode, fstype=fstype, mount_ro=ro, super_ro=ro,
                     data="user_id=0,group_id=0,default_permissions,allow_other",
                     options=("nosuid", "nodev"))


def enodev_for(*fstypes: str) -> Any:
    return lambda c: OSError(errno.ENODEV, "No such device") if c.fstype in fstypes else None


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuse_mount, "program", lambda fs: f"/usr/bin/{fuse_mount.PROGRAMS[fs]}")


@pytest.mark.parametrize("fs", ["vfat", "exfat"])
def test_fallback_to_fuse_when_the_kernel_has_no_driver(fs: str, tmp_path: Path,
                                                        installed: None) -> None:
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    rec.fail = enodev_for(fs)
    drv = FakeDriver(rec)
    h = helper(tmp_path / "mnt", props_for(node, ID_FS_TYPE=fs), rec, fuse_start=drv,
               kernel_has=lambda _fs: False)
    answer = h.handle(["mount", node, "port-03"])
    assert answer["ok"], answer
    ((argv, kw),) = drv.calls
    assert argv[0] == f"/usr/bin/{fuse_mount.PROGRAMS[fs]}" and argv[3] == node
    assert argv[4].startswith(str(tmp_path / "stage") + "/port-03.")  # the private staging point
    assert {f"uid={CALLER.uid}", f"gid={CALLER.gid}", "ro"} <= set(argv[2].split(","))
    assert kw["tz"] == "Asia/Shanghai" and kw["unit"].startswith("dockd-fuse-port-03-ro-")
    (m,) = rec.at(tmp_path / "mnt" / "port-03")  # moved onto the port like a kernel mount
    assert m.fstype == fuse_mount.FUSE_TYPES[fs] and m.source == node
    assert (m.mount_ro, m.super_ro) == (False, True)
    assert {"nosuid", "nodev", "noexec"} <= set(m.options)  # noexec added per mount


def test_no_fallback_when_the_kernel_has_the_driver(tmp_path: Path, installed: None) -> None:
    """ENODEV from a kernel that has vfat means the device went away: no FUSE driver."""
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    rec.fail = enodev_for("vfat")
    drv = FakeDriver(rec)
    h = helper(tmp_path / "mnt", props_for(node), rec, fuse_start=drv, kernel_has=lambda _: True)
    assert h.handle(["mount", node, "port-03"])["error"] == "vanished"
    assert drv.calls == []


def test_other_mount_errors_do_not_fall_back(tmp_path: Path, installed: None) -> None:
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    rec.fail = lambda c: OSError(errno.EINVAL, "Invalid argument") if c.fstype == "vfat" else None
    drv = FakeDriver(rec)
    h = helper(tmp_path / "mnt", props_for(node), rec, fuse_start=drv, kernel_has=lambda _: False)
    assert h.handle(["mount", node, "port-03"])["error"] == "failed"
    assert drv.calls == []


def test_failing_driver_is_a_clear_refusal(tmp_path: Path, installed: None) -> None:
    node = block_node()
    rec = FakeKernel(tmp_path / "stage")
    rec.fail = enodev_for("vfat")
    h = helper(tmp_path / "mnt", props_for(node), rec,
               fuse_start=FakeDriver(rec, fail="fusefat exited 1: not a FAT filesystem"),
               kernel_has=lambda _: False)
    answer = h.handle(["mount", node, "port-03"])
    assert answer["ok"] is False and "not a FAT filesystem" in answer["message"], answer
    assert answer["error"] == "failed"  # not "vanished": the device is still there
    assert rec.at(tmp_path / "mnt" / "port-03") == []


@pytest.mark.parametrize("fs", ["vfat", "exfat"])
def test_driver_command_lines_are_fixed(fs: str) -> None:
    for writable in (False, True):
        argv = fuse_mount.driver_argv(fs, "/dev/sdb1", "/run/stage/p.1", 1234, 2345,
                                      writable=writable, exe="/x/drv")
        assert argv[0] == "/x/drv" and argv[1] == "-o" and argv[3:] == ["/dev/sdb1",
                                                                         "/run/stage/p.1"]
        opts = argv[2].split(",")
        assert opts[0] == ("rw+" if fs == "vfat" and writable else "rw" if writable else "ro")
        assert {"nosuid", "nodev", "noexec", "uid=1234", "gid=2345"} <= set(opts)
        assert ("umask=0027" in opts) if fs == "vfat" else {"fmask=0137", "dmask=0027"} <= set(opts)
        if fs == "vfat":  # the driver's own permission model would let anyone read
            assert {"allow_other", "default_permissions", "fsname=/dev/sdb1"} <= set(opts)


def test_launcher_uses_systemd_run_only_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["/usr/bin/fusefat", "-o", "ro", "/dev/sdb1", "/run/s/p.1"]
    assert fuse_mount.launcher_argv(argv, unit="u", tz="Asia/Shanghai", environ={}) == argv
    monkeypatch.setattr(fuse_mount.shutil, "which",
                        lambda name, path=None: "/usr/bin/systemd-run"
                        if name == "systemd-run" else None)
    full = fuse_mount.launcher_argv(argv, unit="dockd-fuse-port-03-ro-1", tz="Asia/Shanghai",
                                    environ={"INVOCATION_ID": "abc"})
    assert full[0] == "/usr/bin/systemd-run" and full[-len(argv):] == argv
    assert "--unit=dockd-fuse-port-03-ro-1" in full and "--collect" in full
    assert "--service-type=forking" in full and "--setenv=TZ=Asia/Shanghai" in full
    assert "--property=NoNewPrivileges=yes" in full
    assert full[full.index("--") + 1:] == argv


def test_driver_output_never_reaches_the_answer_channel(tmp_path: Path,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """The helper's stdout is its JSON answer: a driver that talks (fusefat prints debug
    lines) must not add to it; its words come back in the error instead."""
    script = tmp_path / "drv"
    script.write_text("#!/bin/sh\necho 'fat type: FAT32'\necho 'cannot open device' >&2\n"
                      "exit 3\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(OSError) as exc:
        fuse_mount.start_driver([str(script), "-o", "ro", "/dev/x", "/y"], tz="UTC", unit="u",
                                environ={})
    assert "exited 3" in str(exc.value) and "cannot open device" in str(exc.value)
    assert "FAT32" not in capfd.readouterr().out
    ok = tmp_path / "ok"
    ok.write_text("#!/bin/sh\necho chatty\n[ \"$TZ\" = Asia/Shanghai ] || exit 9\n")
    ok.chmod(0o755)
    fuse_mount.start_driver([str(ok)], tz="Asia/Shanghai", unit="u", environ={})
    assert "chatty" not in capfd.readouterr().out


def test_timeout_is_an_error(tmp_path: Path) -> None:
    def slow(*_a: Any, **kw: Any) -> Any:
        raise subprocess.TimeoutExpired("drv", kw["timeout"])

    with pytest.raises(OSError, match="did not mount"):
        fuse_mount.start_driver(["/x/fusefat"], tz="UTC", unit="u", run=slow, environ={})


def fuse_line(target: Path, *, source: str = "/dev/sdb1", fstype: str = "fuse.vfat",
              super_ro: bool = True) -> str:
    st = os.stat(target)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    return (f"42 27 {dev} / {target} rw,nosuid,nodev,noexec,relatime - {fstype} {source} "
            f"{'ro' if super_ro else 'rw'},user_id=0,group_id=0,default_permissions,"
            "allow_other\n")


def test_remount_refuses_a_fuse_mount_made_for_someone_else(tmp_path: Path) -> None:
    """mountinfo says user_id=0 for every FUSE mount: ownership is checked on the mounted
    root itself (here a directory owned by another uid with access for others): sec's
    ownership check refuses it as another caller's mount."""
    root = tmp_path / "mnt"
    root.mkdir(mode=0o755)
    (root / "port-03").mkdir(mode=0o755)
    rec = FakeKernel(tmp_path / "stage")
    rec.seed(fuse_line(root / "port-03"))
    h = helper(root, None, rec)
    for mode in ("rw", "ro"):
        answer = h.handle(["remount", "port-03", mode])
        assert answer["error"] == "not-owner" and "uid 1234 may not remount" \
            in answer["message"], answer
    assert rec.mounts == [] and rec.umounts == []


def test_owner_problems() -> None:
    def st(uid: int, gid: int, mode: int) -> Any:
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 0, uid, gid, 0, 0, 0, 0))

    assert fuse_mount.owner_problems(st(1234, 2345, 0o750), 1234, 2345) == []
    assert fuse_mount.owner_problems(st(0, 0, 0o750), 1234, 2345)
    assert fuse_mount.owner_problems(st(1234, 2345, 0o755), 1234, 2345)


def test_types() -> None:
    assert fuse_mount.fuse_base("fuse.vfat") == "vfat" and fuse_mount.fuse_base("fuseblk") == "exfat"
    assert fuse_mount.fuse_base("vfat") is None and fuse_mount.fuse_base("fuse.sshfs") is None
    assert fs_of("vfat") == "vfat" and fs_of("fuse.vfat") == "vfat"
    assert fs_of("tmpfs") is None
    assert fuse_mount.kernel_has("vfat", "nodev\tsysfs\n\tvfat\n")
    assert not fuse_mount.kernel_has("vfat", "nodev\tfuse\n\tfuseblk\n\text4\n")


def test_wait_released() -> None:
    holders = [[7], [7], []]
    slept: list[float] = []
    assert fuse_mount.wait_released(1, 10, holding=lambda _r: holders.pop(0),
                                    sleep=slept.append, clock=lambda: 0.0)
    assert len(slept) == 2
    t = iter(range(100))
    assert not fuse_mount.wait_released(1, 5, holding=lambda _r: [7], sleep=lambda _s: None,
                                        clock=lambda: float(next(t)))



@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the port to the caller")
def test_failed_read_write_driver_leaves_the_recorder_mounted_read_only(
        tmp_path: Path, installed: None) -> None:
    """The window swaps drivers; when the read-write one cannot start, the read-only one is
    mounted again (the daemon goes on without a window, the recorder stays readable)."""
    node = block_node()
    root = tmp_path / "mnt"
    root.mkdir(mode=0o755)
    port = root / "port-03"
    port.mkdir(mode=0o750)
    os.chown(port, CALLER.uid, CALLER.gid)
    rec = FakeKernel(tmp_path / "stage")
    rec.seed(fuse_line(port, source=node))
    rec.fail = enodev_for("vfat")
    drv = FakeDriver(rec)
    real_call = drv.__call__

    def driver(argv: list[str], **kw: Any) -> None:
        if argv[2].startswith("rw+"):
            drv.calls.append((argv, kw))
            raise OSError(errno.EIO, "fusefat exited 1: cannot open device read-write")
        real_call(argv, **kw)

    h = helper(root, props_for(node), rec, fuse_start=driver, kernel_has=lambda _: False)
    answer = h.handle(["remount", "port-03", "rw"])
    assert answer["ok"] is False and "read-write" in answer["message"], answer
    assert [a[2].split(",")[0] for a, _ in drv.calls] == ["rw+", "ro"]
    (m,) = rec.at(port)
    assert m.fstype == "fuse.vfat" and (m.mount_ro, m.super_ro) == (False, True)


def test_the_driver_travels_to_the_docking_hints() -> None:
    """helper answer -> MountResult.driver -> docking hints; fusefat's times are flagged."""
    from dockd.devices.mount import HelperMounter
    from dockd.devices.udev_core import PortView, docking_hints

    def run(argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        import json

        return subprocess.CompletedProcess(argv, 0, json.dumps(
            {"ok": True, "mountpoint": "/run/m/port-03", "fstype": "vfat",
             "driver": "fusefat"}) + "\n", "")

    result = HelperMounter("/h", runner=run, euid=lambda: 0).mount("/dev/sdb1", "port-03")
    assert result.driver == "fusefat"
    view = PortView("port-03", "pci-0:1", "recorder", None)
    hints = docking_hints(view, None, result.driver)
    assert hints["DOCKD_FS_DRIVER"] == "fusefat" and hints["DOCKD_FILE_TIMES"] == "unreliable"
    for driver in ("kernel", "mount.exfat-fuse"):
        hints = docking_hints(view, None, driver)
        assert hints["DOCKD_FS_DRIVER"] == driver and "DOCKD_FILE_TIMES" not in hints
