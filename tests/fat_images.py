"""Real recorder filesystems for tests: FAT32 and exFAT images built from a directory tree
(``mkfs.vfat`` + ``mcopy``, ``mkfs.exfat`` + a read-write ``mount.exfat-fuse``), attached to
loop devices and mounted by the real mount helper through FUSE (this kernel has no
vfat/exfat driver; where it has one the helper is made to see ENODEV so that the FUSE path
is the one exercised). File times are written in the dock's time zone, as a recorder's
firmware writes FAT local time."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dockd.config import AllowConfig, Config, DevicesConfig
from dockd.helper import fuse_mount
from dockd.helper import mount_helper as mh
from dockd.helper.mount_helper import Caller, Helper, MountCall

FIX = Path(__file__).parent / "fixtures" / "udev"
TOOLS = {"vfat": ("mkfs.vfat", "fsck.vfat", "mcopy", "mdir", "fusefat"),
         "exfat": ("mkfs.exfat", "fsck.exfat", "mount.exfat-fuse")}
IMAGE_MB = 40  # FAT32 needs 65525 clusters: 40 MiB with 512-byte clusters; sparse file


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def skip_unless_fuse(fs: str) -> None:
    """Skip unless this machine can build and FUSE-mount ``fs`` images as root."""
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounting)")
    if not os.path.exists("/dev/fuse") or shutil.which("losetup") is None:
        pytest.skip("needs /dev/fuse and losetup")
    missing = [t for t in TOOLS[fs] if shutil.which(t, path=fuse_mount.TOOL_PATH) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh test installs them)")


def _wait_gone(mnt: Path) -> None:
    for _ in range(200):
        if not any(f" {mnt} " in ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()):
            return
        time.sleep(0.05)


def build_image(img: Path, fs: str, tree: Path | None, tz: str, *, size_mb: int = IMAGE_MB,
                label: str = "REC", fill: bool = False) -> Path:
    """A ``fs`` image holding ``tree`` (names, folders, mtimes in local time ``tz``);
    ``fill``: then a FILL.BIN taking every free cluster (a full card)."""
    with open(img, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    env = dict(os.environ, TZ=tz, MTOOLS_SKIP_CHECK="1")
    if fs == "vfat":
        proc = _run(["mkfs.vfat", "-F", "32", "-S", "512", "-s", "1", "-n", label, str(img)])
        assert proc.returncode == 0, proc.stderr
        if tree is not None and any(tree.iterdir()):
            proc = _run(["mcopy", "-s", "-m", "-Q", "-i", str(img),
                         *[str(p) for p in sorted(tree.iterdir())], "::/"], env=env)
            assert proc.returncode == 0, proc.stderr
        if fill:
            proc = _run(["mdir", "-i", str(img), "::/"], env=env)
            free = int(proc.stdout.strip().splitlines()[-1].split("bytes")[0].replace(" ", ""))
            filler = img.with_suffix(".fill")
            with open(filler, "wb") as f:
                f.truncate(free)
            proc = _run(["mcopy", "-i", str(img), str(filler), "::/FILL.BIN"], env=env)
            filler.unlink()
            assert proc.returncode == 0, proc.stderr
        return img
    proc = _run(["mkfs.exfat", "-L", label, str(img)])
    assert proc.returncode == 0, proc.stderr
    if tree is None:
        return img
    node = _run(["losetup", "-f", "--show", str(img)]).stdout.strip()
    assert node, "losetup failed"
    mnt = img.with_suffix(".fill")
    mnt.mkdir()
    try:
        proc = _run([shutil.which("mount.exfat-fuse", path=fuse_mount.TOOL_PATH) or "",
                     "-o", "rw", node, str(mnt)], env=env)
        assert proc.returncode == 0, proc.stderr
        try:
            proc = _run(["cp", "-r", "--preserve=timestamps", f"{tree}/.", str(mnt)], env=env)
            assert proc.returncode == 0, proc.stderr
            if fill:
                with open(mnt / "FILL.BIN", "wb", buffering=0) as f:
                    try:
                        while True:
                            f.write(bytes(1 << 20))
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                    for size in (65536, 4096, 512):
                        try:
                            while True:
                                f.write(bytes(size))
                        except OSError:
                            pass
        finally:
            _run(["umount", str(mnt)])
            _wait_gone(mnt)
            fuse_mount.wait_released(os.stat(node).st_rdev, timeout=30)
    finally:
        _run(["losetup", "-d", node])
        mnt.rmdir()
    return img


def fsck(fs: str, img: Path) -> subprocess.CompletedProcess[str]:
    return _run(["fsck.vfat" if fs == "vfat" else "fsck.exfat", "-n", str(img)])


def fat_listing(img: Path) -> list[str]:
    """Every path on a FAT image, read with mtools (no FUSE, no kernel)."""
    proc = _run(["mdir", "-/", "-b", "-i", str(img), "::/"],
                env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    assert proc.returncode == 0, proc.stderr
    return sorted(ln.strip().removeprefix("::/") for ln in proc.stdout.splitlines() if ln.strip())


def udev_props(devnode: str, fs: str, serial: str = "A1B2C3D4") -> dict[str, str]:
    st = os.stat(devnode)
    p = json.loads((FIX / "recorder_part1.json").read_text())
    p.update(DEVNAME=devnode, MAJOR=str(os.major(st.st_rdev)), MINOR=str(os.minor(st.st_rdev)),
             ID_FS_TYPE=fs, ID_SERIAL_SHORT=serial)
    return p


def force_enodev(call: MountCall) -> None:
    """mount(2), except that vfat/exfat answer ENODEV as on a kernel without them."""
    if call.fstype in ("vfat", "exfat"):
        raise OSError(errno.ENODEV, "No such device")
    mh.sys_mount(call)


@dataclass
class Dock:
    """Loop-attached images and the real helper mounting them through FUSE."""

    base: Path
    caller: Caller
    nodes: list[str] = field(default_factory=list)
    helpers: list[Helper] = field(default_factory=list)
    answer: dict[str, Any] = field(default_factory=dict)
    """The helper's answer to the last ``mount``."""

    def cfg(self, tz: str) -> Config:
        from dockd.config import DockConfig

        return Config(dock=DockConfig(timezone=tz),
                      devices=DevicesConfig(source="udev", mount_root=self.base / "mnt"),
                      allow=(AllowConfig(vendor_id="2e8a", model_id="0001"),))

    def attach(self, img: Path) -> str:
        proc = _run(["losetup", "-f", "--show", str(img)])
        if proc.returncode != 0:
            pytest.skip(f"loop devices not usable here: {proc.stderr.strip()}")
        node = proc.stdout.strip()
        self.nodes.append(node)
        return node

    def helper(self, node: str, fs: str, tz: str = "Asia/Shanghai", **props: str) -> Helper:
        h = Helper(self.cfg(tz), self.caller,
                   properties_of=lambda _d: {**udev_props(node, fs), **props},
                   mount=force_enodev, stage_root=self.base / "stage",
                   kernel_has=lambda _fs: False)
        self.helpers.append(h)
        return h

    def mount(self, h: Helper, node: str, port: str = "port-03") -> Path:
        answer = h.handle(["mount", node, port])
        if not answer["ok"] and "not permitted" in answer.get("message", ""):
            pytest.skip(f"mounting is not permitted here: {answer['message']}")
        assert answer["ok"], answer
        self.answer = answer
        return Path(answer["mountpoint"])

    def release(self, node: str) -> None:
        """Wait until no FUSE driver holds ``node`` (a detached driver flushes and exits)."""
        assert fuse_mount.wait_released(os.stat(node).st_rdev, timeout=30)

    def close(self) -> None:
        for h in self.helpers:
            for port in os.listdir(h.mount_root) if h.mount_root.is_dir() else []:
                h.handle(["unmount", port])
        for node in self.nodes:
            try:
                fuse_mount.wait_released(os.stat(node).st_rdev, timeout=10)
            except OSError:
                pass
            _run(["losetup", "-d", node])
        self.nodes.clear()
        self.helpers.clear()
        from tests.integration.test_mount_helper import detach_all

        detach_all(self.base / "stage")


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[Dock]:
    d = Dock(tmp_path / "dock", Caller(os.getuid(), os.getgid(), "test"))
    d.base.mkdir()
    yield d
    d.close()


def in_process(h: Helper) -> Any:
    """The daemon's real client (HelperMounter) with the helper object as its 'executable'."""
    from dockd.devices.mount import HelperMounter

    def run(argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        answer = h.handle(argv[1:])
        return subprocess.CompletedProcess(argv, 0 if answer["ok"] else 1,
                                           json.dumps(answer) + "\n", "")

    return HelperMounter("dockd-mount", runner=run, euid=lambda: 0)


def window(h: Helper, tmp: Path) -> Callable[[str], Any]:
    """port -> the udev source's write window, through the real client and helper."""
    from dockd.devices.udev import UdevSource

    src = UdevSource(h.cfg, mounter=in_process(h), enumerate_devices=lambda: [],
                     use_monitor=False)
    return src.writable
