"""The mount helper's view of the kernel: mount(2)/umount2(2), /proc/self/mountinfo, udev
properties and paths walked without following links.

Plain functions and data, no policy: :mod:`dockd.helper.mount_helper` decides what may be
mounted where, this module only says what the kernel and udev report and makes the calls.
The constants are the exact flags and data options the helper ever passes.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .protocol import DEVNODE_RE, Refused

__all__ = ["DEVNODE_RE"]

STAGE_ROOT = Path("/run/dockd-mount-stage")
"""Helper-private staging directory (0700 root, a private bind mount of itself): recorders
are mounted here first and moved onto the port once their flags are right."""
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_MOVE, MS_PRIVATE = 4096, 8192, 1 << 18
MOUNT_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
"""The first mount, at the staging point: read-only superblock and mount."""
MOUNT_RW_FLAGS = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC
"""Per-mount flags only (``MS_BIND``): rw,nosuid,nodev,noexec; the superblock stays as it is."""
FLAG_NAMES = "ro,nosuid,nodev,noexec"
REMOUNT_FLAGS = {
    "rw": MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC,
    "ro": MS_REMOUNT | MOUNT_FLAGS,
}
"""The only two superblock remounts: write allowed (still nosuid,nodev,noexec) and back to
read-only. The data options are the mount's own, unchanged. ``ro`` also sets the
helper's own mount ``ro``; ``MOUNT_RW_FLAGS`` then restores its per-mount ``rw``."""
MNT_DETACH = 2
FS_DATA = {
    "vfat": "uid={uid},gid={gid},fmask=0137,dmask=0027,utf8",
    "exfat": "uid={uid},gid={gid},fmask=0137,dmask=0027,iocharset=utf8",
}
"""Filesystems the helper mounts, with their fixed data options. The caller owns the files
with owner write permission (vfat/exfat cannot change uid/umask on remount, so a recorder
could never be cleared otherwise); while mounted ``ro`` the kernel refuses every write
whatever the permission bits say."""
CHECKED_DATA = ("uid", "gid", "fmask", "dmask")
"""Data options whose value in mountinfo must equal the helper's own for a remount."""
FSCK_TOOLS = {"vfat": "fsck.vfat", "exfat": "fsck.exfat"}
FSCK_ERRORS = {"vfat": (1,), "exfat": (1, 4)}
FSCK_TIMEOUT_S = 900.0
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
ST_WANTED = os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
ST_ALWAYS = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
ALWAYS_OPTIONS = frozenset({"nosuid", "nodev", "noexec"})




@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, the parts a remount decision needs."""

    dev: tuple[int, int]
    root: str
    mountpoint: str
    mount_options: frozenset[str]
    fstype: str
    source: str
    super_options: tuple[str, ...]
    mount_id: int = -1
    propagation: tuple[str, ...] = ()
    """Optional fields such as ``shared:N`` / ``master:N``; empty for a private mount."""

    @property
    def mount_read_only(self) -> bool | None:
        """The per-mount read-only flag (None if mountinfo shows neither ro nor rw)."""
        return ro_flag(self.mount_options)

    @property
    def super_read_only(self) -> bool | None:
        """The superblock's read-only state (None if unknown)."""
        return ro_flag(self.super_options)


@dataclass(frozen=True)
class MountCall:
    """Exactly what mount(2) is called with."""

    source: str
    target: str
    fstype: str
    flags: int
    data: str


# --------------------------------------------------------------------------- system edge


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def sys_mount(call: MountCall) -> None:
    rc = _libc().mount(call.source.encode(), call.target.encode(), call.fstype.encode(),
                       ctypes.c_ulong(call.flags), call.data.encode() if call.data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def sys_umount(target: str, flags: int) -> None:
    rc = _libc().umount2(target.encode(), ctypes.c_int(flags))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def parse_udev_properties(text: str) -> dict[str, str]:
    """``udevadm info --query=property`` output (KEY=value lines) as a dict."""
    props = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            props[key.strip()] = value
    return props


def udev_properties(devnode: str) -> dict[str, str]:
    udevadm = shutil.which("udevadm", path=TOOL_PATH) or "udevadm"
    proc = subprocess.run([udevadm, "info", "--query=property", f"--name={devnode}"],
                          capture_output=True, text=True, timeout=30,
                          env={"PATH": TOOL_PATH, "LANG": "C"})
    if proc.returncode != 0:
        raise Refused("unknown-device", f"udev knows no device {devnode}: {proc.stderr.strip()}")
    return parse_udev_properties(proc.stdout)


def unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts_at(path: str, mountinfo: str) -> list[tuple[str, str]]:
    """(fstype, source) of every mount at ``path``, bottom first, from /proc/self/mountinfo."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and len(tail) >= 2 and unescape(fields[4]) == path:
            found.append((tail[0], unescape(tail[1])))
    return found


def mount_entries(path: str, mountinfo: str) -> list[MountEntry]:
    """Every mount at ``path``, bottom first, with device, options and source."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 2 or unescape(fields[4]) != path:
            continue
        major, _, minor = fields[2].partition(":")
        try:
            dev = (int(major), int(minor))
        except ValueError:
            dev = (-1, -1)
        try:
            mount_id = int(fields[0])
        except ValueError:
            mount_id = -1
        found.append(MountEntry(dev, unescape(fields[3]), path,
                                frozenset(fields[5].split(",")), tail[0], unescape(tail[1]),
                                tuple(tail[2].split(",")) if len(tail) > 2 else (),
                                mount_id, tuple(fields[6:])))
    return found


def read_mountinfo() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return f.read()


def read_mount_id(fd: int) -> int:
    """The id (as in mountinfo) of the mount that the open descriptor ``fd`` lies on."""
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "mnt_id":
                return int(value)
    raise OSError(f"no mnt_id for descriptor {fd}")


def ro_flag(options: Sequence[str] | frozenset[str]) -> bool | None:
    if "ro" in options and "rw" not in options:
        return True
    if "rw" in options and "ro" not in options:
        return False
    return None


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def key_values(items: Sequence[str]) -> dict[str, str]:
    """``key=value`` mount options as a dict (flags without a value are left out)."""
    return {k: v for k, sep, v in (o.partition("=") for o in items) if sep}


def open_dir_nofollow(name: str, dir_fd: int) -> int:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise
    if stat.S_ISLNK(st.st_mode):
        raise Refused("symlink", f"{name} is a symlink; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise Refused("bad-path", f"{name} is not a directory")
    try:
        return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        raise Refused("symlink", f"cannot open {name} without following links: {exc}") from exc


def walk_nofollow(path: Path, what: str, create: int | None) -> int | None:
    """O_PATH fd of the absolute ``path``, reached from ``/`` one component at a time
    without following any symlink; the last component is created with mode ``create``
    unless that is None. None if a component is missing."""
    if not path.is_absolute() or os.path.normpath(path) != str(path) or str(path) == "/":
        raise Refused("bad-config", f"{what} {path} must be a normalised absolute path below /")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        parts = path.parts[1:]
        for i, name in enumerate(parts):
            if create is not None and i == len(parts) - 1:
                try:
                    os.mkdir(name, create, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nfd = open_dir_nofollow(name, fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise
