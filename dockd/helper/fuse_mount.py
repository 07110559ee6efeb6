"""FUSE-backed recorders: mounting FAT32/exFAT when the kernel has no vfat/exfat driver.

Some dock kernels (minimal or hardened builds, containers) lack ``vfat``/``exfat``:
``mount(2)`` answers ``ENODEV``. The mount helper then starts a userspace driver instead —
``fusefat`` (package fusefat) for FAT, ``mount.exfat-fuse`` (package exfat-fuse) for exFAT —
at the same helper-private staging point, and the rest of the staged sequence is unchanged
(per-mount ``rw,nosuid,nodev,noexec`` with ``MS_REMOUNT|MS_BIND``, ``MS_MOVE`` onto the port,
every step checked in mountinfo). What differs:

- **Read-only is the driver's, not only the superblock's.** The driver runs ``ro`` (it opens
  the device read-only and writes nothing: a read-write ``mount.exfat-fuse`` would set the
  volume-dirty flag at every docking). So ``remount PORT rw`` cannot just flip the
  superblock: the driver would still refuse writes. The write window *swaps* drivers: the
  read-only mount is detached, the driver is waited for, a read-write driver is mounted and
  moved onto the port; ``remount PORT ro`` swaps back and, before answering, waits until the
  read-write driver has exited (it flushes FAT and directory entries to the device on
  unmount), so "read-only again" also means "the erasures are on the card".
- **Access.** Options are fixed: ``allow_other,default_permissions`` with the caller's
  ``uid``/``gid`` and no access for others (``umask=0027`` for fusefat,
  ``fmask=0137,dmask=0027`` for exfat-fuse); ``nosuid,nodev`` from the driver and
  ``noexec`` from the per-mount remount (exfat-fuse drops it). mountinfo shows ``user_id=0``
  (who mounted), so a remount checks ownership on the mounted root directory instead.
- **Lifetime.** The driver is a process. Under systemd (the helper runs as
  ``dockd-mount@.service``, whose processes are stopped with it) it is started with
  ``systemd-run`` as its own transient, collected service; elsewhere it daemonizes itself.
  Its output never reaches the helper's answer channel.
- **Time.** FAT stores local time; the driver is given ``TZ`` = the dock's configured time
  zone (the kernel driver uses the system zone). fusefat 0.1a reads and writes FAT dates one
  month off (measured, see docs/recorder-filesystems.md): file times of FUSE-mounted FAT
  recorders are not trusted (clip times come from names and metadata first anyway).

Filesystem type in mountinfo: ``fuse.vfat`` (fusefat, ``subtype=vfat``, source the device
node through ``fsname=``) and ``fuseblk`` (exfat-fuse; source the device node, device
number the block device's).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .kernel import MNT_DETACH, MountEntry
from .kernel import fd_path as _fd_path
from .protocol import Refused

if TYPE_CHECKING:  # pragma: no cover - the helper calls swap() with itself
    from .mount_helper import Helper

log = logging.getLogger(__name__)

TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
FUSE_TYPES = {"vfat": "fuse.vfat", "exfat": "fuseblk"}
"""Filesystem type in mountinfo of a recorder mounted through FUSE, per recorder type."""
PROGRAMS = {"vfat": "fusefat", "exfat": "mount.exfat-fuse"}
COMMS = frozenset({"fusefat", "mount.exfat-fus"})
"""``/proc/PID/comm`` of the drivers (15 characters at most)."""
START_TIMEOUT_S = 30.0
RELEASE_TIMEOUT_S = 30.0
ENODEV = 19


def fuse_base(mount_fstype: str) -> str | None:
    """``vfat``/``exfat`` for a mountinfo type of one of the FUSE drivers' mounts, else None."""
    for fs, fuse_type in FUSE_TYPES.items():
        if mount_fstype == fuse_type:
            return fs
    return None


def is_fuse(mount_fstype: str) -> bool:
    return mount_fstype in FUSE_TYPES.values()


def kernel_has(fstype: str, filesystems: str | None = None) -> bool:
    """Whether the running kernel lists ``fstype`` in /proc/filesystems."""
    if filesystems is None:
        try:
            filesystems = Path("/proc/filesystems").read_text(encoding="ascii", errors="replace")
        except OSError:
            return True  # cannot tell: do not second-guess the kernel's own answer
    return any(line.split()[-1:] == [fstype] for line in filesystems.splitlines())


def program(fstype: str) -> str | None:
    """Absolute path of the FUSE driver for ``fstype``, if installed."""
    name = PROGRAMS.get(fstype)
    return shutil.which(name, path=TOOL_PATH) if name else None


def driver_argv(fstype: str, devnode: str, target: str, uid: int, gid: int, *,
                writable: bool, exe: str | None = None) -> list[str]:
    """The fixed command line mounting ``devnode`` at ``target`` (nothing from the caller but
    the checked device node, the helper's own staging path and the caller's ids)."""
    exe = exe or program(fstype) or PROGRAMS[fstype]
    if fstype == "vfat":
        opts = (f"{'rw+' if writable else 'ro'},fsname={devnode},subtype=vfat,allow_other,"
                f"default_permissions,uid={uid},gid={gid},umask=0027,nosuid,nodev,noexec")
    elif fstype == "exfat":
        opts = (f"{'rw' if writable else 'ro'},uid={uid},gid={gid},fmask=0137,dmask=0027,"
                "nosuid,nodev,noexec")
    else:
        raise ValueError(f"no FUSE driver for {fstype}")
    return [exe, "-o", opts, devnode, target]


def launcher_argv(argv: Sequence[str], *, unit: str, tz: str,
                  environ: dict[str, str] | None = None) -> list[str]:
    """How the driver is started: as a transient collected service through ``systemd-run``
    when the helper itself runs under systemd (its unit's processes die with it), else as is
    (the driver daemonizes)."""
    env = os.environ if environ is None else environ
    systemd_run = shutil.which("systemd-run", path=TOOL_PATH)
    if not env.get("INVOCATION_ID") or systemd_run is None:
        return list(argv)
    return [systemd_run, "--quiet", "--collect", f"--unit={unit}", "--service-type=forking",
            f"--setenv=TZ={tz}", "--setenv=LANG=C",
            "--property=NoNewPrivileges=yes", "--property=CapabilityBoundingSet=CAP_SYS_ADMIN",
            "--property=RestrictAddressFamilies=AF_UNIX", "--property=IPAddressDeny=any",
            "--property=RestrictSUIDSGID=yes", "--property=LockPersonality=yes",
            "--property=ProtectClock=yes", "--property=ProtectHostname=yes",
            "--property=RestrictRealtime=yes", "--", *argv]


def start_driver(argv: Sequence[str], *, tz: str, unit: str,
                 run: Callable[..., subprocess.CompletedProcess[Any]] = subprocess.run,
                 environ: dict[str, str] | None = None) -> None:
    """Start the driver; returns once its foreground part exited (the mount is in place),
    raises OSError (with the driver's last words) otherwise. Its output goes to a temporary
    file, never to the helper's stdout (the answer channel)."""
    full = launcher_argv(argv, unit=unit, tz=tz, environ=environ)
    with tempfile.TemporaryFile() as err:
        try:
            proc = run(full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                       env={"PATH": TOOL_PATH, "LANG": "C", "TZ": tz}, timeout=START_TIMEOUT_S,
                       start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise OSError(errno.ETIMEDOUT, f"{Path(argv[0]).name} did not mount within "
                                  f"{START_TIMEOUT_S:.0f} s") from exc
        err.seek(0)
        words = err.read(4096).decode("utf-8", "replace")
    if proc.returncode != 0:
        last = " | ".join(ln.strip() for ln in words.splitlines() if ln.strip())[-300:]
        raise OSError(errno.EIO, f"{Path(argv[0]).name} exited {proc.returncode}: {last}")


def drivers_holding(rdev: int, proc_root: Path = Path("/proc")) -> list[int]:
    """PIDs of FUSE driver processes that hold the block device ``rdev`` open."""
    pids = []
    with os.scandir(proc_root) as procs:
        candidates = [e.path for e in procs if e.name.isdigit()]
    for path in candidates:
        try:
            comm = (Path(path) / "comm").read_text(errors="replace").strip()
            if comm not in COMMS:
                continue
            with os.scandir(Path(path) / "fd") as fds:
                links = [fd.path for fd in fds]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        for link in links:
            try:
                st = os.stat(link)
            except OSError:
                continue
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev:
                pids.append(int(Path(path).name))
                break
    return pids


def wait_released(rdev: int, timeout: float = RELEASE_TIMEOUT_S,
                  holding: Callable[[int], list[int]] = drivers_holding,
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> bool:
    """Wait until no FUSE driver holds the device (a detached driver flushes, closes the
    device and exits); False when one still does after ``timeout``."""
    end = clock() + timeout
    while True:
        if not holding(rdev):
            return True
        if clock() >= end:
            return False
        sleep(0.05)


def unit_name(port: str, mode: str) -> str:
    """A transient unit name per mount (port labels are safe path components)."""
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in port)
    return f"dockd-fuse-{safe}-{mode}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def owner_problems(st: os.stat_result, uid: int, gid: int) -> list[str]:
    """What is off on the root of a FUSE recorder mount made for caller ``uid``/``gid``."""
    problems = []
    if (st.st_uid, st.st_gid) != (uid, gid):
        problems.append(f"owned by {st.st_uid}:{st.st_gid} instead of {uid}:{gid}")
    if st.st_mode & 0o007:
        problems.append(f"mode {stat.S_IMODE(st.st_mode):o} gives others access")
    return problems


def swap(helper: Helper, port: str, mode: str, target: str, root_fd: int, port_fd: int,
         entry: MountEntry) -> dict[str, Any]:
    """``remount PORT rw|ro`` for a recorder mounted through a FUSE driver: detach the mount,
    wait for its driver to let go of the device, mount the driver in the wanted mode through
    the helper's staged sequence. ``rw`` needs today's udev verdict (as for the kernel's
    drivers); ``ro`` never does, and answers only once the read-write driver has exited
    (flushed). Idempotent: a mount already in the wanted mode is left alone."""
    fs = fuse_base(entry.fstype)
    assert fs is not None
    writable = mode == "rw"
    serial = "-"
    if writable:
        fstype, props = helper.check_device(entry.source)
        rdev = os.stat(entry.source).st_rdev
        if fstype != fs or (entry.fstype == FUSE_TYPES["exfat"]
                            and (os.major(rdev), os.minor(rdev)) != entry.dev):
            raise Refused("busy", f"{target}: the mounted filesystem is not the {fstype} on "
                                  f"{entry.source} that udev reports")
        serial = props.get("ID_SERIAL_SHORT", "-")
    else:
        try:
            rdev = os.stat(entry.source).st_rdev
        except OSError:
            rdev = -1  # vanished: nothing to wait for, nothing to mount again
    answer = {"ok": True, "action": "remount", "port": port, "mode": mode,
              "devnode": entry.source, "mountpoint": target, "fstype": fs, "driver": "fuse",
              "options": f"{mode},nosuid,nodev,noexec"}
    if entry.super_read_only is (not writable):
        return answer
    ids = helper._ids_for(entry, os.fstat(port_fd))  # whose files: root acts for the owner
    stage_fd, lock_fd = helper._open_stage()  # serialised with mounts
    try:
        try:
            helper._umount(_fd_path(port_fd), MNT_DETACH)
        except OSError as exc:
            raise Refused("failed", f"cannot detach {target}: {exc.strerror}") from exc
        # The caller's descriptor on the mount's root would keep the detached mount (and its
        # driver) alive: point it at the mount root directory instead (the caller closes it).
        os.dup2(root_fd, port_fd)
        if rdev != -1 and not wait_released(rdev):
            if not writable:
                log.error("port %s: the read-write driver of %s did not exit within %.0f s "
                          "(a reader still holds a file?); its last writes may not be on the "
                          "card; left unmounted", port, entry.source, RELEASE_TIMEOUT_S)
                raise Refused("failed", f"{target}: the read-write driver did not finish; "
                                        "unmounted")
            log.warning("port %s: the read-only driver of %s is still running", port,
                        entry.source)
        if rdev == -1:
            raise Refused("vanished", f"{entry.source} is gone; {target} unmounted")
        try:
            helper._attach(port, entry.source, fs, helper._data(fs, ids), root_fd, stage_fd,
                           target, writable=writable, ids=ids)
        except Refused:
            if writable:  # no window; leave the recorder as it was: mounted read-only
                helper._attach(port, entry.source, fs, helper._data(fs, ids), root_fd,
                               stage_fd, target, writable=False, ids=ids)
            raise
    finally:
        os.close(stage_fd)
        os.close(lock_fd)
    if writable:
        log.warning("port %s: %s (%s, serial %s) at %s READ-WRITE through %s for the %s daemon "
                    "(uid %d)", port, entry.source, fs, serial, target, PROGRAMS[fs],
                    helper.caller.how, helper.caller.uid)
    else:
        log.info("port %s: %s (%s) at %s read-only again through %s (writes flushed)", port,
                 entry.source, fs, target, PROGRAMS[fs])
    return answer
