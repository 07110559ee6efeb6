"""``dockd-mount``: the tiny root helper that mounts recorders read-only for the daemon.

Interface (argv, or one line on stdin with ``--serve`` under ``dockd-mount@.service``)::

    mount DEVNODE PORT    mount an allow-listed recorder at <mount_root>/<PORT>, read-only
    unmount PORT          lazily unmount <mount_root>/<PORT> (works when the device vanished)
    remount PORT rw|ro    make the recorder the helper mounted at <mount_root>/<PORT> writable
                          (for one clearing / clock-setting step) or read-only again
    fsck DEVNODE          read-only filesystem check (fsck.vfat -n / fsck.exfat -n)

The answer is one JSON object on stdout (``{"ok": true, ...}`` or ``{"ok": false, "error":
code, "message": ...}``). Modules: :mod:`.protocol` (who is calling: SO_PEERCRED, no sudo;
the request line, bounded in time and size; the configuration, read once from a checked
descriptor), :mod:`.kernel` (mount calls, mountinfo, udev), :mod:`.stage` (the staged mount
sequence) and this one (the decisions). **Callers are told apart**: a mount belongs to the
uid it was mounted for (its ``uid=`` option); only that caller, or root, may unmount or
remount it, or have it reported as "already mounted". The helper trusts nothing the caller says: it re-reads the
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
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import logredact
from ..config import Config
from ..devices.ports import allowed_rule
from . import fuse_mount
from .kernel import (
    ALWAYS_OPTIONS,
    CHECKED_DATA,
    FLAG_NAMES,
    FS_DATA,
    FSCK_ERRORS,
    FSCK_TIMEOUT_S,
    FSCK_TOOLS,
    MNT_DETACH,
    MOUNT_FLAGS,
    MOUNT_RW_FLAGS,
    MS_BIND,
    MS_MOVE,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REMOUNT,
    REMOUNT_FLAGS,
    ST_ALWAYS,
    ST_WANTED,
    STAGE_ROOT,
    TOOL_PATH,
    MountCall,
    MountEntry,
    fd_path,
    key_values,
    mount_entries,
    mounts_at,
    open_dir_nofollow,
    parse_udev_properties,
    read_mount_id,
    read_mountinfo,
    sys_mount,
    sys_umount,
    udev_properties,
    walk_nofollow,
)
from .protocol import (
    DEFAULT_CONFIG,
    DEVNODE_RE,
    Caller,
    Refused,
    check_devnode,
    check_port,
    check_words,
    direct_caller,
    drain,
    port_of,
    read_request,
    refuse_elevation,
    socket_caller,
    trusted_config,
)
from .stage import StagedAttach, fs_of

__all__ = [  # what callers and tests use from here
    "DEFAULT_CONFIG", "MNT_DETACH", "MS_BIND", "MS_MOVE", "MS_NODEV", "MS_NOEXEC", "MS_NOSUID",
    "MOUNT_FLAGS", "ST_WANTED", "MS_PRIVATE", "MS_RDONLY", "MS_REMOUNT", "REMOUNT_FLAGS", "Caller", "Helper", "MountCall",
    "MountEntry", "Refused", "main", "mount_entries", "mounts_at", "parse_udev_properties",
    "trusted_config",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the helper


class Helper(StagedAttach):
    def __init__(self, cfg: Config, caller: Caller, *,
                 properties_of: Callable[[str], dict[str, str]] = udev_properties,
                 mount: Callable[[MountCall], None] = sys_mount,
                 umount: Callable[[str, int], None] = sys_umount,
                 mountinfo: Callable[[], str] = read_mountinfo,
                 run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
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
            check_words(words)
            if words[0] == "mount":
                return self.do_mount(words[1], words[2])
            if words[0] == "unmount":
                return self.do_unmount(words[1])
            if words[0] == "remount":
                return self.do_remount(words[1], words[2])
            return self.do_fsck(words[1], words[2] if len(words) == 3 else "?")
        except Refused as exc:
            log.warning("port %s: refused %s for uid %d: %s", port_of(words),
                        " ".join(words)[:200], self.caller.uid, exc.message)
            return {"ok": False, "error": exc.code, "message": exc.message}

    # ------------------------------------------------------------------ checks

    def check_port(self, port: str) -> str:
        return check_port(port)

    def owner(self, entry: MountEntry, st: os.stat_result | None = None) -> tuple[int, int]:
        """(uid, gid) the files of a mount belong to: whose daemon it was mounted for (the
        helper mounts with ``uid=``/``gid=`` of its caller; vfat leaves out a 0, so a
        mount without them is root's). A FUSE driver's mount names in mountinfo who mounted
        it (root), not whose files they are: its root directory ``st`` tells (unknown:
        root's)."""
        if fuse_mount.is_fuse(entry.fstype):
            return (st.st_uid, st.st_gid) if st is not None else (0, 0)
        opts = key_values(entry.super_options)
        try:
            return int(opts.get("uid", "0")), int(opts.get("gid", "0"))
        except ValueError:
            return 0, 0

    def check_owner(self, entry: MountEntry, target: str, action: str,
                    st: os.stat_result | None = None) -> None:
        """Only the caller a mount was made for, or root, may unmount or remount it."""
        if self.caller.is_root:
            return
        uid = self.owner(entry, st)[0]
        if uid != self.caller.uid:
            raise Refused("not-owner", f"{target} was mounted for uid {uid}; uid "
                                       f"{self.caller.uid} may not {action} it")

    def check_device(self, devnode: str) -> tuple[str, dict[str, str]]:
        """(fstype, udev properties) of an allow-listed recorder volume, else Refused."""
        check_devnode(devnode)
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

    def _port_stat(self, port: str, root_fd: int) -> os.stat_result | None:
        """stat of what is at <mount_root>/<PORT> (the top mount's root), not following
        links; None if unreadable."""
        try:
            fd = open_dir_nofollow(port, root_fd)
        except (OSError, Refused):
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def _open_root(self, *, create: bool) -> int | None:
        """O_PATH fd of mount_root, reached without following any symlink; None if absent."""
        fd = walk_nofollow(self.mount_root, "devices.mount_root", 0o755 if create else None)
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
                    if top.source == devnode and fs_of(top.fstype) == fstype \
                            and top.mount_read_only is False \
                            and ALWAYS_OPTIONS <= top.mount_options \
                            and self.owner(top, self._port_stat(port, root_fd)) \
                            == (self.caller.uid, self.caller.gid):
                        log.info("port %s: %s already mounted at %s", port, devnode, target)
                        return self._mount_answer(port, devnode, target, fstype, already=True,
                                                  mounted_as=top.fstype)
                    self._unmount_all(port, root_fd, target, current, "replace")
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

    def _unmount_all(self, port: str, root_fd: int, target: str, current: list[MountEntry],
                     action: str) -> None:
        for e in reversed(current):
            if fs_of(e.fstype) is None or not e.source.startswith("/dev/"):
                raise Refused("busy", f"{target} holds a {e.fstype} mount of {e.source} that "
                                      "dockd did not make; not touching it")
        top_st = self._port_stat(port, root_fd)  # the top mount's root (for a FUSE one)
        for i, e in enumerate(current):
            self.check_owner(e, target, action, top_st if i == len(current) - 1 else None)
        for _ in current:  # lazily, through an fd reached without following links
            fd = open_dir_nofollow(port, root_fd)
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
            current = mount_entries(target, self._mountinfo())
            if current:
                self._unmount_all(port, root_fd, target, current, "unmount")
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
                port_fd = open_dir_nofollow(port, root_fd)
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
                        self._mount(MountCall(entry.source, fd_path(port_fd), entry.fstype,
                                              REMOUNT_FLAGS["rw"],
                                              self._data(entry.fstype, self._ids_for(entry))))
                    else:
                        self._make_read_only(fd_path(port_fd), entry)
                except OSError as exc:
                    code = "vanished" if exc.errno in (2, 6, 19) else "failed"
                    log.error("port %s: remount %s of %s at %s failed: %s", port, mode,
                              entry.source, target, exc.strerror)
                    if mode == "ro":  # fail closed: never leave it possibly writable
                        self._detach_fd(port, fd_path(port_fd))
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
                "options": f"{options},{self._data(entry.fstype, self._ids_for(entry))}"}

    def _data(self, fstype: str, ids: tuple[int, int] | None = None) -> str:
        """The fixed data options, for the caller (or, for root, the mount's owner ``ids``)."""
        uid, gid = ids or (self.caller.uid, self.caller.gid)
        return FS_DATA[fstype].format(uid=uid, gid=gid)

    def _ids_for(self, entry: MountEntry, st: os.stat_result | None = None) -> tuple[int, int]:
        """Whose data options a remount keeps: the caller's; root acts for the owner."""
        if self.caller.is_root:
            return self.owner(entry, st)
        return self.caller.uid, self.caller.gid

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
        fs = fs_of(entry.fstype)
        if fs is None or not DEVNODE_RE.fullmatch(entry.source) \
                or "/../" in entry.source + "/":
            problems.append(f"a {entry.fstype} mount of {entry.source}")
        elif entry.root != "/":
            problems.append(f"a bind mount of {entry.root}")
        else:
            port_st = os.fstat(port_fd)
            self.check_owner(entry, target, "remount", port_st)
            if not ALWAYS_OPTIONS <= entry.mount_options:
                problems.append("not nosuid,nodev,noexec")
            if entry.mount_read_only is not False:
                problems.append("mount flags not rw (the filesystem alone is read-only on a "
                                "mount dockd made)")
            if entry.super_read_only is None:
                problems.append("filesystem neither ro nor rw")
            if fuse_mount.is_fuse(entry.fstype):  # mountinfo names who mounted: ask the root
                problems.extend(fuse_mount.owner_problems(port_st,
                                                          *self._ids_for(entry, port_st)))
            want = (key_values(self._data(fs, self._ids_for(entry, port_st)).split(","))
                    if fs == entry.fstype else {})
            have = key_values(entry.super_options)
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
                              self._data(entry.fstype, self._ids_for(entry))))
        self._mount(MountCall("", path, "", MOUNT_RW_FLAGS, ""))

    def _remount_problems(self, target: str, port_fd: int, entry: MountEntry, *,
                          super_ro: bool) -> list[str]:
        """What is off after a remount: the same single mount, per-mount
        ``rw,nosuid,nodev,noexec``, the superblock read-only as ``super_ro`` says."""
        problems = []
        flags = self._statvfs(fd_path(port_fd)).f_flag
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
        path = fd_path(port_fd)
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dockd-mount", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help=f"configuration (default {DEFAULT_CONFIG})")
    p.add_argument("--serve", action="store_true",
                   help="read one request line from the socket on stdin (dockd-mount.socket)")
    p.add_argument("words", nargs="*", help="mount DEVNODE PORT | unmount PORT | "
                                            "remount PORT rw|ro | fsck DEVNODE [PORT]")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="dockd-mount: %(levelname)s %(message)s")
    logredact.install()
    try:
        if args.serve:  # read (or drain) the request first: unread bytes reset the answer
            sock = socket.socket(fileno=os.dup(0))
            try:
                caller = socket_caller(sock)
                words = read_request(sock)
            finally:
                drain(sock)
        else:
            caller, words = direct_caller(), list(args.words)
        refuse_elevation()
        cfg = trusted_config(args.config)
        answer = Helper(cfg, caller).handle(words)
    except Refused as exc:
        log.warning("refused: %s", exc.message)
        answer = {"ok": False, "error": exc.code, "message": exc.message}
    except OSError as exc:
        answer = {"ok": False, "error": "failed", "message": str(exc)}
    sys.stdout.write(json.dumps(answer, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
