"""The staged mount sequence of the mount helper: mount a recorder at a private staging
point with a read-only superblock, make the *mount* writable (``MS_BIND`` remount, the
superblock stays read-only), move it onto the port, and check statvfs and mountinfo after
every step; detach on any doubt (docs/privileges.md, "Read-only filesystem, writable mount
flags"). A mixin of :class:`dockd.helper.mount_helper.Helper`, which supplies the kernel
calls (``_mount``, ``_umount``, ``_mountinfo``, ``_statvfs``, ``_mount_id``) so that tests
can replace them.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from . import fuse_mount
from .kernel import (
    ALWAYS_OPTIONS,
    FS_DATA,
    MNT_DETACH,
    MOUNT_FLAGS,
    MOUNT_RW_FLAGS,
    MS_BIND,
    MS_MOVE,
    MS_PRIVATE,
    MS_RDONLY,
    ST_ALWAYS,
    ST_WANTED,
    MountCall,
    MountEntry,
    fd_path,
    mount_entries,
    open_dir_nofollow,
    walk_nofollow,
)
from .protocol import Caller, Refused

log = logging.getLogger("dockd.helper.mount_helper")


def fs_of(mount_fstype: str) -> str | None:
    """The recorder filesystem (a key of FS_DATA) behind a mountinfo type, also for the FUSE
    drivers' mounts; None for anything else."""
    return mount_fstype if mount_fstype in FS_DATA else fuse_mount.fuse_base(mount_fstype)


class StagedAttach:
    stage_root: Path
    cfg: Config
    caller: Caller
    _fuse_start: Callable[..., None]
    _kernel_has: Callable[[str], bool]
    _mount: Callable[[MountCall], None]
    _umount: Callable[[str, int], None]
    _mountinfo: Callable[[], str]
    _statvfs: Callable[[str], os.statvfs_result]
    _mount_id: Callable[[int], int]

    def _detach_fd(self, port: str, path: str) -> None:
        try:
            self._umount(path, MNT_DETACH)
        except OSError as exc:
            log.error("port %s: cannot unmount %s either: %s", port, path, exc.strerror)

    # ------------------------------------------------------------------ staging

    def _open_stage(self) -> tuple[int, int]:
        """(O_PATH fd of the staging root, locked fd) once the staging root is a private
        mount of its own, 0700 root, cleared of leftovers. The lock (``flock``) is held until
        the locked fd is closed."""
        fd = walk_nofollow(self.stage_root, "the staging directory", 0o700)
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
                    self._mount(MountCall(fd_path(fd), fd_path(fd), "", MS_BIND, ""))
                os.close(fd)
                fd = -1
                # from here on through the bind mount itself, never the directory below it
                top = walk_nofollow(self.stage_root, "the staging directory", None)
                if top is None:
                    raise Refused("failed", f"{self.stage_root} vanished")
                fd = top
                self._check_stage_owner(fd)
                self._mount(MountCall("", fd_path(fd), "", MS_PRIVATE, ""))
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
        for name in os.listdir(fd_path(stage_fd)):
            path = str(self.stage_root / name)
            for _ in mount_entries(path, info):
                try:
                    fd = open_dir_nofollow(name, stage_fd)
                    try:
                        self._umount(fd_path(fd), MNT_DETACH)
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
                stage_fd: int, target: str, *, writable: bool = False,
                ids: tuple[int, int] | None = None) -> None:
        """Mount at a staging point, make the mount (not the filesystem) writable, move it
        onto the port; check statvfs and mountinfo after every step, detach on any doubt.
        ``writable``: a FUSE driver's write window (see :mod:`.fuse_mount`), filesystem rw;
        ``ids``: whose files a FUSE driver shows (default: the caller's)."""
        name = f"{port}.{os.getpid()}"
        staged = str(self.stage_root / name)
        port_fd = open_dir_nofollow(port, root_fd)  # held from before the mount to the move
        try:
            os.mkdir(name, 0o700, dir_fd=stage_fd)
        except BaseException:
            os.close(port_fd)
            raise
        mnt_fd = -1
        try:
            dir_fd = open_dir_nofollow(name, stage_fd)
            try:
                self._mount_fs(devnode, dir_fd, staged, fstype, data, port, writable, ids)
            except OSError as exc:
                code = "vanished" if exc.errno in (2, 6, 19) else "failed"  # ENOENT ENXIO ENODEV
                raise Refused(code, f"mount {devnode} at {target}: {exc.strerror}") from exc
            finally:
                os.close(dir_fd)
            mnt_fd = open_dir_nofollow(name, stage_fd)  # the mounted filesystem's root
            try:
                step = "mount"
                first = self._check_attached(staged, mnt_fd, devnode, fstype,
                                             mount_ro=not writable, super_ro=not writable)
                step = "per-mount rw"
                self._mount(MountCall("", fd_path(mnt_fd), "", MOUNT_RW_FLAGS, ""))
                self._check_attached(staged, mnt_fd, devnode, fstype, mount_ro=False,
                                     mount_id=first.mount_id, super_ro=not writable)
                step = "move"
                self._mount(MountCall(fd_path(mnt_fd), fd_path(port_fd), "", MS_MOVE, ""))
                if mount_entries(staged, self._mountinfo()):
                    raise Refused("failed", f"{staged} still holds a mount after the move")
                new_fd = open_dir_nofollow(port, root_fd)
                try:
                    self._check_attached(target, new_fd, devnode, fstype, mount_ro=False,
                                         mount_id=first.mount_id, super_ro=not writable)
                finally:
                    os.close(new_fd)
            except (OSError, Refused) as exc:
                message = exc.message if isinstance(exc, Refused) else exc.strerror
                log.error("port %s: attaching %s failed at step %s (%s); unmounting it",
                          port, devnode, step, message)
                self._detach_fd(port, fd_path(mnt_fd))
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
                  port: str, writable: bool, ids: tuple[int, int] | None = None) -> None:
        """The kernel's driver, read-only; where the kernel has none (``ENODEV``), the FUSE
        driver (:mod:`.fuse_mount`), at the private staging point."""
        if not writable:
            try:
                self._mount(MountCall(devnode, fd_path(dir_fd), fstype, MOUNT_FLAGS, data))
                return
            except OSError as exc:
                if exc.errno != fuse_mount.ENODEV or self._kernel_has(fstype) \
                        or fuse_mount.program(fstype) is None:
                    raise
        # The driver and the flag change below take the staging path, not a descriptor: it
        # lies in the staging root, 0700 root and a private mount, which only root can change.
        uid, gid = ids or (self.caller.uid, self.caller.gid)
        argv = fuse_mount.driver_argv(fstype, devnode, staged, uid, gid, writable=writable)
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
        flags = self._statvfs(fd_path(fd)).f_flag
        wanted = ST_WANTED if super_ro else ST_ALWAYS
        if flags & wanted != wanted or (not super_ro and flags & os.ST_RDONLY):
            problems.append(f"statvfs flags {flags:#x} not "
                            f"{'ro' if super_ro else 'rw'},nosuid,nodev,noexec")
        entries = mount_entries(path, self._mountinfo())
        if len(entries) != 1:
            raise Refused("failed", "; ".join([f"{len(entries)} mounts at {path} instead of "
                                               "one", *problems]))
        e = entries[0]
        if e.source != devnode or fs_of(e.fstype) != fstype or e.root != "/":
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
