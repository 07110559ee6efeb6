"""``dockd-mount``: the tiny root helper that mounts recorders read-only for the daemon.

Interface (argv, or one line on stdin with ``--serve`` under ``dockd-mount@.service``)::

    mount DEVNODE PORT    mount an allow-listed recorder at <mount_root>/<PORT>, read-only
    unmount PORT          lazily unmount <mount_root>/<PORT> (works when the device vanished)
    remount PORT rw|ro    make the recorder the helper mounted at <mount_root>/<PORT> writable
                          (for one clearing / clock-setting step) or read-only again
    fsck DEVNODE          read-only filesystem check (fsck.vfat -n / fsck.exfat -n)

The answer is one JSON object on stdout (``{"ok": true, ...}`` or ``{"ok": false, "error":
code, "message": ...}``). The helper trusts nothing the caller says: it re-reads the
allow-list from the root-owned configuration file, asks udev (``udevadm info``) what
DEVNODE is, requires a real block device node (no symlink) whose udev MAJOR/MINOR match,
on USB, with a vfat/exfat filesystem, and allow-listed. Mount options are fixed
(``nosuid,nodev,noexec`` + ``uid/gid`` of the caller, ``fmask=0137,dmask=0027``: the
daemon owns the files, the read-only *filesystem* is what keeps it from writing),
the port label must be one safe path component, the mount point is reached component by
component with ``O_NOFOLLOW`` (no symlink anywhere) and mounted through its file
descriptor, so a path swapped in between check and mount cannot redirect it.

Only the *superblock* is read-only; the per-mount flags are ``rw,nosuid,nodev,noexec``
from the start, so that every mount namespace's copy (the sandboxed daemon has its own,
a slave of the host's) follows the superblock when ``remount`` toggles it. To get there
without ever showing a mount with other flags under the mount root, the recorder is
mounted ``ro,nosuid,nodev,noexec`` at a helper-private staging point (a directory under
``STAGE_ROOT``, 0700 root, itself a *private* bind mount so nothing mounted there
propagates anywhere), the per-mount ``ro`` is cleared with
``MS_REMOUNT|MS_BIND|MS_NOSUID|MS_NODEV|MS_NOEXEC`` (the superblock stays read-only), and
the mount is moved (``MS_MOVE``) onto <mount_root>/<PORT>. statvfs and
/proc/self/mountinfo (per-mount vs super options, mount id) are checked after every step;
anything unexpected unmounts it again.

``remount`` only touches a mount this helper made: the only mount at <mount_root>/<PORT>,
of the whole filesystem, vfat/exfat from a /dev node, per-mount ``rw,nosuid,nodev,noexec``
and the caller's fixed data options (checked in /proc/self/mountinfo), whose device number
is that of the directory the helper holds open. ``rw`` re-checks the device with udev
(still an allowed recorder) and makes the superblock writable; ``ro`` makes it read-only
again and restores the per-mount ``rw`` that ``MS_REMOUNT`` also set to ``ro`` on the
helper's own copy. All go through ``MS_REMOUNT`` on the held descriptor and are verified
with statvfs and mountinfo.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, load
from ..devices.ports import allowed_rule, valid_port_label
from . import fuse_mount

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/dockd/config.toml")
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
DEVNODE_RE = re.compile(r"/dev/[A-Za-z0-9][A-Za-z0-9_.:+-]*(?:/[A-Za-z0-9][A-Za-z0-9_.:+-]*)*")
ST_WANTED = os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
ST_ALWAYS = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
ALWAYS_OPTIONS = frozenset({"nosuid", "nodev", "noexec"})


class Refused(Exception):
    """The request is not allowed or failed; ``code`` goes into the JSON answer."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Caller:
    uid: int
    gid: int
    how: str


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
        return _ro_flag(self.mount_options)

    @property
    def super_read_only(self) -> bool | None:
        """The superblock's read-only state (None if unknown)."""
        return _ro_flag(self.super_options)


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


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts_at(path: str, mountinfo: str) -> list[tuple[str, str]]:
    """(fstype, source) of every mount at ``path``, bottom first, from /proc/self/mountinfo."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and len(tail) >= 2 and _unescape(fields[4]) == path:
            found.append((tail[0], _unescape(tail[1])))
    return found


def mount_entries(path: str, mountinfo: str) -> list[MountEntry]:
    """Every mount at ``path``, bottom first, with device, options and source."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 2 or _unescape(fields[4]) != path:
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
        found.append(MountEntry(dev, _unescape(fields[3]), path,
                                frozenset(fields[5].split(",")), tail[0], _unescape(tail[1]),
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


def _ro_flag(options: Sequence[str] | frozenset[str]) -> bool | None:
    if "ro" in options and "rw" not in options:
        return True
    if "rw" in options and "ro" not in options:
        return False
    return None


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


# --------------------------------------------------------------------------- the helper


class Helper:
    def __init__(self, cfg: Config, caller: Caller, *,
                 properties_of: Callable[[str], dict[str, str]] = udev_properties,
                 mount: Callable[[MountCall], None] = sys_mount,
                 umount: Callable[[str, int], None] = sys_umount,
                 mountinfo: Callable[[], str] = read_mountinfo,
                 run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
                 statvfs: Callable[[str], Any] = os.statvfs,
                 mount_id: Callable[[int], int] = read_mount_id,
                 stage_root: Path = STAGE_ROOT,
                 fuse_start: Callable[..., None] = fuse_mount.start_driver,
                 kernel_has: Callable[[str], bool] = fuse_mount.kernel_has):
        self.cfg = cfg
        self.caller = caller
        self.mount_root = Path(cfg.devices.mount_root)
        self.stage_root = Path(stage_root)
        self._mount_id = mount_id
        self._props = properties_of
        self._mount = mount
        self._umount = umount
        self._mountinfo = mountinfo
        self._run = run
        self._statvfs = statvfs
        self._fuse_start = fuse_start
        self._kernel_has = kernel_has

    def handle(self, words: Sequence[str]) -> dict[str, Any]:
        """Run one request; always returns the JSON-able answer."""
        try:
            if len(words) == 3 and words[0] == "mount":
                return self.do_mount(words[1], words[2])
            if len(words) == 2 and words[0] == "unmount":
                return self.do_unmount(words[1])
            if len(words) == 3 and words[0] == "remount":
                return self.do_remount(words[1], words[2])
            if len(words) in (2, 3) and words[0] == "fsck":
                return self.do_fsck(words[1], self.check_port(words[2]) if len(words) == 3 else "?")
            raise Refused("usage", "expected: mount DEVNODE PORT | unmount PORT | "
                                   "remount PORT rw|ro | fsck DEVNODE [PORT]")
        except Refused as exc:
            log.warning("port %s: refused %s: %s", _port_of(words), " ".join(words)[:200],
                        exc.message)
            return {"ok": False, "error": exc.code, "message": exc.message}

    # ------------------------------------------------------------------ checks

    def check_port(self, port: str) -> str:
        if not valid_port_label(port):
            raise Refused("bad-port", f"invalid port label {port!r}")
        return port

    def check_device(self, devnode: str) -> tuple[str, dict[str, str]]:
        """(fstype, udev properties) of an allow-listed recorder volume, else Refused."""
        if not DEVNODE_RE.fullmatch(devnode) or "/../" in devnode + "/":
            raise Refused("bad-device", f"invalid device node {devnode!r}")
        try:
            st = os.lstat(devnode)
        except FileNotFoundError as exc:
            raise Refused("vanished", f"{devnode} does not exist (unplugged?)") from exc
        if stat.S_ISLNK(st.st_mode):
            raise Refused("bad-device", f"{devnode} is a symlink; give the real device node")
        if not stat.S_ISBLK(st.st_mode):
            raise Refused("bad-device", f"{devnode} is not a block device")
        props = self._props(devnode)
        if props.get("DEVNAME") != devnode:
            raise Refused("bad-device", f"udev names {devnode} {props.get('DEVNAME')!r}")
        if (props.get("MAJOR"), props.get("MINOR")) != (str(os.major(st.st_rdev)),
                                                        str(os.minor(st.st_rdev))):
            raise Refused("bad-device", f"{devnode}: udev device number does not match the node")
        if props.get("DEVTYPE") not in ("disk", "partition"):
            raise Refused("bad-device", f"{devnode} is not a disk or partition")
        if allowed_rule(props, self.cfg.allow) is None:
            raise Refused("not-allowed",
                          f"{devnode} (bus {props.get('ID_BUS', '-')}, vendor "
                          f"{props.get('ID_VENDOR_ID', '-')}, model {props.get('ID_MODEL_ID', '-')},"
                          f" serial {props.get('ID_SERIAL_SHORT', '-')}) is not an allowed recorder")
        fstype = props.get("ID_FS_TYPE", "")
        if fstype not in FS_DATA:
            raise Refused("bad-filesystem", f"{devnode}: filesystem {fstype or 'none'} is not "
                                            f"one of {', '.join(sorted(FS_DATA))}")
        return fstype, props

    def _open_root(self, *, create: bool) -> int | None:
        """O_PATH fd of mount_root, reached without following any symlink; None if absent."""
        fd = _walk_nofollow(self.mount_root, "devices.mount_root", 0o755 if create else None)
        if fd is None:
            return None
        st = os.fstat(fd)
        if os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
            os.close(fd)
            raise Refused("bad-config", f"{self.mount_root} must be owned by root and not "
                                        "writable by group or others")
        return fd

    # ------------------------------------------------------------------ actions

    def do_mount(self, devnode: str, port: str) -> dict[str, Any]:
        self.check_port(port)
        fstype, props = self.check_device(devnode)
        target = str(self.mount_root / port)
        root_fd = self._open_root(create=True)
        if root_fd is None:
            raise Refused("bad-config", f"the parent of {self.mount_root} does not exist")
        try:
            stage_fd, lock_fd = self._open_stage()  # also serialises concurrent mounts
            try:
                try:
                    os.mkdir(port, 0o755, dir_fd=root_fd)
                except FileExistsError:
                    pass
                current = mount_entries(target, self._mountinfo())
                if current:
                    top = current[-1]
                    if top.source == devnode and _fs_of(top.fstype) == fstype \
                            and top.mount_read_only is False \
                            and ALWAYS_OPTIONS <= top.mount_options:
                        log.info("port %s: %s already mounted at %s", port, devnode, target)
                        return self._mount_answer(port, devnode, target, fstype, already=True,
                                                  mounted_as=top.fstype)
                    self._unmount_all(port, root_fd, target,
                                      [(e.fstype, e.source) for e in current])
                data = self._data(fstype)
                self._attach(port, devnode, fstype, data, root_fd, stage_fd, target)
            finally:
                os.close(stage_fd)
                os.close(lock_fd)
        finally:
            os.close(root_fd)
        log.info("port %s: mounted %s (%s, serial %s) at %s (filesystem read-only, mount "
                 "rw,nosuid,nodev,noexec,%s)", port, devnode, fstype,
                 props.get("ID_SERIAL_SHORT", "-"), target, data)
        now = mount_entries(target, self._mountinfo())
        return self._mount_answer(port, devnode, target, fstype,
                                  mounted_as=now[-1].fstype if now else fstype)

    def _mount_answer(self, port: str, devnode: str, target: str, fstype: str, *,
                      already: bool = False, mounted_as: str = "") -> dict[str, Any]:
        data = self._data(fstype)
        driver = (fuse_mount.PROGRAMS[fstype] if fuse_mount.is_fuse(mounted_as) else "kernel")
        return {"ok": True, "action": "mount", "port": port, "devnode": devnode,
                "mountpoint": target, "fstype": fstype, "options": f"{FLAG_NAMES},{data}",
                "already": already, "driver": driver}

    # ------------------------------------------------------------------ staging

    def _open_stage(self) -> tuple[int, int]:
        """(O_PATH fd of the staging root, locked fd) once the staging root is a private
        mount of its own, 0700 root, cleared of leftovers. The lock (``flock``) is held until
        the locked fd is closed."""
        fd = _walk_nofollow(self.stage_root, "the staging directory", 0o700)
        if fd is None:
            raise Refused("bad-config", f"the parent of {self.stage_root} does not exist")
        lock_fd = -1
        try:
            self._check_stage_owner(fd)
            lock_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            path = str(self.stage_root)
            try:
                if not mount_entries(path, self._mountinfo()):
                    self._mount(MountCall(_fd_path(fd), _fd_path(fd), "", MS_BIND, ""))
                os.close(fd)
                fd = -1
                # from here on through the bind mount itself, never the directory below it
                top = _walk_nofollow(self.stage_root, "the staging directory", None)
                if top is None:
                    raise Refused("failed", f"{self.stage_root} vanished")
                fd = top
                self._check_stage_owner(fd)
                self._mount(MountCall("", _fd_path(fd), "", MS_PRIVATE, ""))
            except OSError as exc:
                raise Refused("failed", f"cannot make {self.stage_root} a private mount: "
                                        f"{exc.strerror}") from exc
            entries = mount_entries(path, self._mountinfo())
            if not entries or entries[-1].propagation \
                    or entries[-1].mount_id != self._mount_id(fd):
                raise Refused("failed", f"{self.stage_root} is not a private mount of its own")
            self._clear_stage(fd)
            return fd, lock_fd
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if lock_fd >= 0:
                os.close(lock_fd)
            raise

    def _check_stage_owner(self, fd: int) -> None:
        st = os.fstat(fd)
        if os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o077):
            raise Refused("bad-config", f"{self.stage_root} must be owned by root and "
                                        "accessible to nobody else (0700)")

    def _clear_stage(self, stage_fd: int) -> None:
        """Detach and remove what a crashed helper left in the staging root (we hold the lock,
        so nothing there is in use)."""
        info = self._mountinfo()
        for name in os.listdir(_fd_path(stage_fd)):
            path = str(self.stage_root / name)
            for _ in mount_entries(path, info):
                try:
                    fd = _open_dir_nofollow(name, stage_fd)
                    try:
                        self._umount(_fd_path(fd), MNT_DETACH)
                    finally:
                        os.close(fd)
                except (OSError, Refused) as exc:
                    log.warning("cannot detach leftover staging mount %s: %s", path, exc)
            try:
                os.rmdir(name, dir_fd=stage_fd)
                log.info("removed leftover staging directory %s", path)
            except OSError as exc:
                log.warning("cannot remove leftover staging entry %s: %s", path, exc.strerror)

    def _attach(self, port: str, devnode: str, fstype: str, data: str, root_fd: int,
                stage_fd: int, target: str, *, writable: bool = False) -> None:
        """Mount at a staging point, make the mount (not the filesystem) writable, move it
        onto the port; check statvfs and mountinfo after every step, detach on any doubt.
        ``writable``: a FUSE driver's write window (see :mod:`.fuse_mount`), filesystem rw."""
        name = f"{port}.{os.getpid()}"
        staged = str(self.stage_root / name)
        port_fd = _open_dir_nofollow(port, root_fd)  # held from before the mount to the move
        try:
            os.mkdir(name, 0o700, dir_fd=stage_fd)
        except BaseException:
            os.close(port_fd)
            raise
        mnt_fd = -1
        try:
            dir_fd = _open_dir_nofollow(name, stage_fd)
            try:
                self._mount_fs(devnode, dir_fd, staged, fstype, data, port, writable)
            except OSError as exc:
                code = "vanished" if exc.errno in (2, 6, 19) else "failed"  # ENOENT ENXIO ENODEV
                raise Refused(code, f"mount {devnode} at {target}: {exc.strerror}") from exc
            finally:
                os.close(dir_fd)
            mnt_fd = _open_dir_nofollow(name, stage_fd)  # the mounted filesystem's root
            try:
                step = "mount"
                first = self._check_attached(staged, mnt_fd, devnode, fstype,
                                             mount_ro=not writable, super_ro=not writable)
                step = "per-mount rw"
                self._mount(MountCall("", _fd_path(mnt_fd), "", MOUNT_RW_FLAGS, ""))
                self._check_attached(staged, mnt_fd, devnode, fstype, mount_ro=False,
                                     mount_id=first.mount_id, super_ro=not writable)
                step = "move"
                self._mount(MountCall(_fd_path(mnt_fd), _fd_path(port_fd), "", MS_MOVE, ""))
                if mount_entries(staged, self._mountinfo()):
                    raise Refused("failed", f"{staged} still holds a mount after the move")
                new_fd = _open_dir_nofollow(port, root_fd)
                try:
                    self._check_attached(target, new_fd, devnode, fstype, mount_ro=False,
                                         mount_id=first.mount_id, super_ro=not writable)
                finally:
                    os.close(new_fd)
            except (OSError, Refused) as exc:
                message = exc.message if isinstance(exc, Refused) else exc.strerror
                log.error("port %s: attaching %s failed at step %s (%s); unmounting it",
                          port, devnode, step, message)
                self._detach_fd(port, _fd_path(mnt_fd))
                raise Refused("failed", f"{devnode} could not be attached at {target} "
                                        f"read-only with mount flags rw,nosuid,nodev,noexec "
                                        f"({step}: {message}); unmounted") from exc
        finally:
            os.close(port_fd)
            if mnt_fd >= 0:
                os.close(mnt_fd)
            try:
                os.rmdir(name, dir_fd=stage_fd)
            except OSError as exc:
                log.warning("cannot remove staging directory %s: %s", staged, exc.strerror)

    def _mount_fs(self, devnode: str, dir_fd: int, staged: str, fstype: str, data: str,
                  port: str, writable: bool) -> None:
        """The kernel's driver, read-only; where the kernel has none (``ENODEV``), the FUSE
        driver (:mod:`.fuse_mount`), at the private staging point."""
        if not writable:
            try:
                self._mount(MountCall(devnode, _fd_path(dir_fd), fstype, MOUNT_FLAGS, data))
                return
            except OSError as exc:
                if exc.errno != fuse_mount.ENODEV or self._kernel_has(fstype) \
                        or fuse_mount.program(fstype) is None:
                    raise
        # The driver and the flag change below take the staging path, not a descriptor: it
        # lies in the staging root, 0700 root and a private mount, which only root can change.
        argv = fuse_mount.driver_argv(fstype, devnode, staged, self.caller.uid,
                                      self.caller.gid, writable=writable)
        log.info("port %s: the kernel has no %s driver; mounting %s with %s (%s)", port,
                 fstype, devnode, argv[0], "read-write" if writable else "read-only")
        self._fuse_start(argv, tz=getattr(self.cfg.tz, "key", "UTC"),
                         unit=fuse_mount.unit_name(port, "rw" if writable else "ro"))
        # per-mount flags as the kernel path has them here (exfat-fuse drops noexec)
        self._mount(MountCall("", staged, "", MOUNT_RW_FLAGS | (0 if writable else MS_RDONLY),
                              ""))

    def _check_attached(self, path: str, fd: int, devnode: str, fstype: str, *,
                        mount_ro: bool, mount_id: int | None = None,
                        super_ro: bool = True) -> MountEntry:
        """The single mount at ``path`` is ``devnode``'s whole ``fstype`` filesystem, the one
        ``fd`` is on, with a read-only superblock, per-mount ``nosuid,nodev,noexec`` and
        per-mount read-only as ``mount_ro`` says; statvfs agrees. Else Refused."""
        problems = []
        flags = self._statvfs(_fd_path(fd)).f_flag
        wanted = ST_WANTED if super_ro else ST_ALWAYS
        if flags & wanted != wanted or (not super_ro and flags & os.ST_RDONLY):
            problems.append(f"statvfs flags {flags:#x} not "
                            f"{'ro' if super_ro else 'rw'},nosuid,nodev,noexec")
        entries = mount_entries(path, self._mountinfo())
        if len(entries) != 1:
            raise Refused("failed", "; ".join([f"{len(entries)} mounts at {path} instead of "
                                               "one", *problems]))
        e = entries[0]
        if e.source != devnode or _fs_of(e.fstype) != fstype or e.root != "/":
            problems.append(f"mountinfo shows {e.fstype} {e.source} {e.root}")
        if not ALWAYS_OPTIONS <= e.mount_options:
            problems.append("mount not nosuid,nodev,noexec")
        if e.mount_read_only is not mount_ro:
            problems.append(f"mount flag {'rw' if mount_ro else 'ro'} instead of "
                            f"{'ro' if mount_ro else 'rw'}")
        if e.super_read_only is not super_ro:
            problems.append(f"filesystem (superblock) not {'read-only' if super_ro else 'rw'}")
        if mount_id is not None and e.mount_id != mount_id:
            problems.append(f"mount id {e.mount_id} instead of {mount_id}")
        if self._mount_id(fd) != e.mount_id:
            problems.append("the descriptor held is not on that mount")
        st = os.fstat(fd)
        if (os.major(st.st_dev), os.minor(st.st_dev)) != e.dev:
            problems.append("device number differs")
        if problems:
            raise Refused("failed", f"{path}: {'; '.join(problems)}")
        return e

    def _unmount_all(self, port: str, root_fd: int, target: str,
                     current: list[tuple[str, str]]) -> None:
        for fstype, source in reversed(current):
            if _fs_of(fstype) is None or not source.startswith("/dev/"):
                raise Refused("busy", f"{target} holds a {fstype} mount of {source} that dockd "
                                      "did not make; not touching it")
        for _ in current:  # lazily, through an fd reached without following links
            fd = _open_dir_nofollow(port, root_fd)
            try:
                self._umount(f"/proc/self/fd/{fd}", MNT_DETACH)
            except OSError as exc:
                raise Refused("failed", f"unmount {target}: {exc.strerror}") from exc
            finally:
                os.close(fd)
        log.info("port %s: lazily unmounted %d stale mount(s) at %s", port, len(current), target)

    def do_unmount(self, port: str) -> dict[str, Any]:
        self.check_port(port)
        target = str(self.mount_root / port)
        root_fd = self._open_root(create=False)
        if root_fd is None:
            return {"ok": True, "action": "unmount", "port": port, "was_mounted": False}
        try:
            try:
                st = os.stat(port, dir_fd=root_fd, follow_symlinks=False)
            except FileNotFoundError:
                return {"ok": True, "action": "unmount", "port": port, "was_mounted": False}
            if not stat.S_ISDIR(st.st_mode):
                raise Refused("bad-port", f"{target} is not a directory (symlink?)")
            current = mounts_at(target, self._mountinfo())
            if current:
                self._unmount_all(port, root_fd, target, current)
            try:
                os.rmdir(port, dir_fd=root_fd)
            except OSError:
                pass  # still busy or not empty: harmless, reused next time
        finally:
            os.close(root_fd)
        return {"ok": True, "action": "unmount", "port": port, "was_mounted": bool(current)}

    # ------------------------------------------------------------------ remount

    def do_remount(self, port: str, mode: str) -> dict[str, Any]:
        """Make the recorder this helper mounted at ``port`` writable (``rw``) or read-only
        again (``ro``). Refuses anything it did not mount itself."""
        self.check_port(port)
        if mode not in REMOUNT_FLAGS:
            raise Refused("usage", f"remount mode must be rw or ro, not {mode[:16]!r}")
        target = str(self.mount_root / port)
        root_fd = self._open_root(create=False)
        if root_fd is None:
            raise Refused("not-mounted", f"nothing is mounted at {target}")
        try:
            try:
                port_fd = _open_dir_nofollow(port, root_fd)
            except FileNotFoundError as exc:
                raise Refused("not-mounted", f"nothing is mounted at {target}") from exc
            try:
                entry = self._own_mount(target, port_fd)
                if fuse_mount.is_fuse(entry.fstype):
                    return fuse_mount.swap(self, port, mode, target, root_fd, port_fd, entry)
                serial = "-"
                if mode == "rw":  # writing needs today's udev verdict, read-only never does
                    fstype, props = self.check_device(entry.source)
                    rdev = os.stat(entry.source).st_rdev
                    if fstype != entry.fstype or (os.major(rdev), os.minor(rdev)) != entry.dev:
                        raise Refused("busy", f"{target}: the mounted filesystem is not the "
                                              f"{fstype} on {entry.source} that udev reports")
                    serial = props.get("ID_SERIAL_SHORT", "-")
                try:
                    if mode == "rw":
                        self._mount(MountCall(entry.source, _fd_path(port_fd), entry.fstype,
                                              REMOUNT_FLAGS["rw"], self._data(entry.fstype)))
                    else:
                        self._make_read_only(_fd_path(port_fd), entry)
                except OSError as exc:
                    code = "vanished" if exc.errno in (2, 6, 19) else "failed"
                    log.error("port %s: remount %s of %s at %s failed: %s", port, mode,
                              entry.source, target, exc.strerror)
                    if mode == "ro":  # fail closed: never leave it possibly writable
                        self._detach_fd(port, _fd_path(port_fd))
                        raise Refused(code, f"remount ro {target}: {exc.strerror}; "
                                            "unmounted") from exc
                    raise Refused(code, f"remount {mode} {target}: {exc.strerror}") from exc
                self._verify_remounted(port, mode, target, port_fd, entry)
            finally:
                os.close(port_fd)
        finally:
            os.close(root_fd)
        options = f"{'rw' if mode == 'rw' else 'ro'},nosuid,nodev,noexec"
        if mode == "rw":
            log.warning("port %s: remounted %s (%s, serial %s) at %s READ-WRITE (%s) for the "
                        "%s daemon (uid %d)", port, entry.source, entry.fstype, serial, target,
                        options, self.caller.how, self.caller.uid)
        else:
            log.info("port %s: remounted %s (%s) at %s read-only again (%s)", port,
                     entry.source, entry.fstype, target, options)
        return {"ok": True, "action": "remount", "port": port, "mode": mode,
                "devnode": entry.source, "mountpoint": target, "fstype": entry.fstype,
                "options": f"{options},{self._data(entry.fstype)}".rstrip(",")}

    def _data(self, fstype: str) -> str:
        return FS_DATA[fstype].format(uid=self.caller.uid, gid=self.caller.gid)

    def _own_mount(self, target: str, port_fd: int) -> MountEntry:
        """The mount at ``target`` if it is exactly one this helper made for this caller."""
        current = mount_entries(target, self._mountinfo())
        if not current:
            raise Refused("not-mounted", f"nothing is mounted at {target}")
        if len(current) != 1:
            raise Refused("busy", f"{target} holds {len(current)} stacked mounts; not touching "
                                  "them")
        entry = current[0]
        problems = []
        fs = _fs_of(entry.fstype)
        if fs is None or not DEVNODE_RE.fullmatch(entry.source) \
                or "/../" in entry.source + "/":
            problems.append(f"a {entry.fstype} mount of {entry.source}")
        elif entry.root != "/":
            problems.append(f"a bind mount of {entry.root}")
        else:
            if not ALWAYS_OPTIONS <= entry.mount_options:
                problems.append("not nosuid,nodev,noexec")
            if entry.mount_read_only is not False:
                problems.append("mount flags not rw (the filesystem alone is read-only on a "
                                "mount dockd made)")
            if entry.super_read_only is None:
                problems.append("filesystem neither ro nor rw")
            if fuse_mount.is_fuse(entry.fstype):  # mountinfo names who mounted: ask the root
                problems.extend(fuse_mount.owner_problems(os.fstat(port_fd), self.caller.uid,
                                                          self.caller.gid))
            want = _options(self._data(fs).split(",")) if fs == entry.fstype else {}
            have = _options(entry.super_options)
            for key in CHECKED_DATA:
                if key in want and have.get(key) != want[key]:
                    problems.append(f"{key}={have.get(key, '(none)')} instead of {want[key]}")
        if problems:
            raise Refused("busy", f"{target} holds a mount dockd did not make ("
                                  f"{'; '.join(problems)}); not touching it")
        st = os.fstat(port_fd)
        if (os.major(st.st_dev), os.minor(st.st_dev)) != entry.dev:
            raise Refused("busy", f"{target}: the directory held open is not the mounted "
                                  f"{entry.source} (changed meanwhile?)")
        return entry

    def _make_read_only(self, path: str, entry: MountEntry) -> None:
        """Superblock read-only (``MS_REMOUNT|MS_RDONLY`` also sets the helper's own mount
        ``ro``), then that mount's flags back to ``rw,nosuid,nodev,noexec`` (``MS_BIND``:
        per-mount only), as every other namespace's copy still has them."""
        self._mount(MountCall(entry.source, path, entry.fstype, REMOUNT_FLAGS["ro"],
                              self._data(entry.fstype)))
        self._mount(MountCall("", path, "", MOUNT_RW_FLAGS, ""))

    def _remount_problems(self, target: str, port_fd: int, entry: MountEntry, *,
                          super_ro: bool) -> list[str]:
        """What is off after a remount: the same single mount, per-mount
        ``rw,nosuid,nodev,noexec``, the superblock read-only as ``super_ro`` says."""
        problems = []
        flags = self._statvfs(_fd_path(port_fd)).f_flag
        if flags & ST_ALWAYS != ST_ALWAYS:
            problems.append(f"statvfs flags {flags:#x} lack nosuid,nodev,noexec")
        if bool(flags & os.ST_RDONLY) != super_ro:
            problems.append(f"statvfs {'writable' if super_ro else 'read-only'}")
        now = mount_entries(target, self._mountinfo())
        if len(now) != 1 or now[0].mount_id != entry.mount_id:
            problems.append("not the same single mount any more")
            return problems
        e = now[0]
        if not ALWAYS_OPTIONS <= e.mount_options:
            problems.append("mount not nosuid,nodev,noexec")
        if e.mount_read_only is not False:
            problems.append("mount flags not rw")
        if e.super_read_only is not super_ro:
            problems.append(f"filesystem not {'ro' if super_ro else 'rw'}")
        return problems

    def _verify_remounted(self, port: str, mode: str, target: str, port_fd: int,
                          entry: MountEntry) -> None:
        """After the remount: exactly the wanted flags, else make it safe and refuse."""
        path = _fd_path(port_fd)
        problems = self._remount_problems(target, port_fd, entry, super_ro=mode == "ro")
        if not problems:
            return
        if mode == "ro":
            log.error("port %s: %s did not come back as a read-only filesystem with mount "
                      "flags rw,nosuid,nodev,noexec (%s); unmounting it", port, target,
                      "; ".join(problems))
            self._detach_fd(port, path)
            raise Refused("failed", f"{target} did not come back read-only; unmounted")
        log.error("port %s: %s is not writable with nosuid,nodev,noexec after remount (%s); "
                  "making it read-only again", port, target, "; ".join(problems))
        try:
            self._make_read_only(path, entry)
            ok = not self._remount_problems(target, port_fd, entry, super_ro=True)
        except OSError:
            ok = False
        if not ok:
            self._detach_fd(port, path)
        raise Refused("failed", f"{target} could not be made writable with nosuid,nodev,noexec"
                                f"; {'left read-only' if ok else 'unmounted'}")

    def _detach_fd(self, port: str, path: str) -> None:
        try:
            self._umount(path, MNT_DETACH)
        except OSError as exc:
            log.error("port %s: cannot unmount %s either: %s", port, path, exc.strerror)

    def do_fsck(self, devnode: str, port: str = "?") -> dict[str, Any]:
        fstype, props = self.check_device(devnode)
        answer: dict[str, Any] = {"ok": True, "action": "fsck", "devnode": devnode,
                                  "fstype": fstype}
        tool = shutil.which(FSCK_TOOLS[fstype], path=TOOL_PATH)
        if tool is None:
            return {**answer, "verdict": "unsupported", "exit": None,
                    "detail": f"{FSCK_TOOLS[fstype]} is not installed"}
        argv = [tool, "-n", devnode]
        try:
            proc = self._run(argv, capture_output=True, text=True, timeout=FSCK_TIMEOUT_S,
                             env={"PATH": TOOL_PATH, "LANG": "C"}, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return {**answer, "verdict": "failed", "exit": None,
                    "detail": f"{FSCK_TOOLS[fstype]} timed out after {FSCK_TIMEOUT_S:.0f} s"}
        rc = proc.returncode
        verdict = "clean" if rc == 0 else "errors" if rc in FSCK_ERRORS[fstype] else "failed"
        lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        detail = " | ".join(lines[-6:])[-1000:]
        log.info("port %s: fsck %s (%s, serial %s): %s (exit %d)", port, devnode, fstype,
                 props.get("ID_SERIAL_SHORT", "-"), verdict, rc)
        return {**answer, "verdict": verdict, "exit": rc, "detail": detail, "argv": argv}


def _fs_of(mount_fstype: str) -> str | None:
    """The recorder filesystem (a key of FS_DATA) behind a mountinfo type, also for the FUSE
    drivers' mounts; None for anything else."""
    return mount_fstype if mount_fstype in FS_DATA else fuse_mount.fuse_base(mount_fstype)


def _options(items: Sequence[str]) -> dict[str, str]:
    """``key=value`` mount options as a dict (flags without a value are left out)."""
    return {k: v for k, sep, v in (o.partition("=") for o in items) if sep}


def _open_dir_nofollow(name: str, dir_fd: int) -> int:
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


def _walk_nofollow(path: Path, what: str, create: int | None) -> int | None:
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
                nfd = _open_dir_nofollow(name, fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _port_of(words: Sequence[str]) -> str:
    if words and words[0] == "mount" and len(words) > 2:
        return words[2][:64]
    if words and words[0] == "fsck" and len(words) > 2:
        return words[2][:64]
    if words and words[0] in ("unmount", "remount") and len(words) > 1:
        return words[1][:64]
    return "?"


# --------------------------------------------------------------------------- entry point


def caller_identity(serve: bool) -> Caller:
    """Whose daemon asked: the socket peer, else sudo's caller, else ourselves."""
    if serve:
        s = socket.socket(fileno=os.dup(0))
        try:
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        finally:
            s.close()
        _pid, uid, gid = struct.unpack("3i", creds)
        return Caller(uid, gid, "socket")
    if os.getuid() == 0 and "SUDO_UID" in os.environ:
        return Caller(int(os.environ["SUDO_UID"]), int(os.environ.get("SUDO_GID", "0")), "sudo")
    return Caller(os.getuid(), os.getgid(), "direct")


def trusted_config(path: Path | None, serve: bool) -> Config:
    if path is not None and not serve and (os.getuid() != 0 or "SUDO_UID" in os.environ):
        raise Refused("usage", "--config is only honoured when root runs the helper directly")
    path = path or DEFAULT_CONFIG
    try:
        st = os.stat(path)
    except OSError as exc:
        raise Refused("bad-config", f"cannot read {path}: {exc.strerror}") from exc
    if os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
        raise Refused("bad-config", f"{path} must be owned by root and not writable by "
                                    "group or others")
    from ..errors import ConfigError

    try:
        return load(path)
    except ConfigError as exc:
        raise Refused("bad-config", str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dockd-mount", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help=f"configuration (default {DEFAULT_CONFIG}; "
                                               "only when root runs the helper directly)")
    p.add_argument("--serve", action="store_true",
                   help="read one request line from stdin (a socket passed by systemd)")
    p.add_argument("words", nargs="*", help="mount DEVNODE PORT | unmount PORT | "
                                            "remount PORT rw|ro | fsck DEVNODE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="dockd-mount: %(levelname)s %(message)s")
    words = list(args.words)
    try:
        if args.serve:
            line = sys.stdin.buffer.readline(1024).decode("utf-8", "replace")
            words = line.split()
        caller = caller_identity(args.serve)
        cfg = trusted_config(args.config, args.serve)
        answer = Helper(cfg, caller).handle(words)
    except Refused as exc:
        answer = {"ok": False, "error": exc.code, "message": exc.message}
    except OSError as exc:
        answer = {"ok": False, "error": "failed", "message": str(exc)}
    sys.stdout.write(json.dumps(answer, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
