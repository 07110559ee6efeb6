"""Clocks (R10): is the dock's clock NTP-synchronised, and setting a recorder's clock.

A recorder's clock offset is measured by its driver at docking (``DeviceTime`` against the
dock's clock, :attr:`dockd.model.RecorderHealth.clock_offset_s`) and stored with the docking;
it is only as good as the dock's own clock, so :func:`dock_clock_synced` asks the system
whether that is NTP-synchronised — ``timedatectl``, else the marker systemd-timesyncd leaves,
else the kernel (``adjtimex``) — and answers ``None`` when nobody can tell. It never raises.

Where the recorder's profile has a time-set file, :func:`set_clock_after_offload` writes it
(``YYYY-MM-DD HH:MM:SS``, local time) once every clip of the docking is copied — never
before, since the write touches the recorder — and records a ``clock_set`` audit entry.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..config import Config, HealthConfig, ProfileConfig
from ..errors import DockdError

if TYPE_CHECKING:
    from ..store import State

log = logging.getLogger(__name__)

TIMESET_FORMAT = "%Y-%m-%d %H:%M:%S"
"""What the time-set file holds: the dock's local time, one line."""

SET_CLOCK_MIN_OFFSET_S = 1.0
"""Set the recorder's clock only when it is off by more than this."""

TIMESYNCD_MARKER = Path("/run/systemd/timesync/synchronized")
TIMEDATECTL_TIMEOUT_S = 5.0
TIME_ERROR = 5
"""adjtimex(2) return value: the kernel clock is not synchronised (STA_UNSYNC)."""

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
SyncedFn = Callable[[], "tuple[bool | None, str]"]
Writable = Callable[[], AbstractContextManager[object]]


class ClockSetError(DockdError):
    """The recorder's time-set file could not be written."""


# --------------------------------------------------------------------------- the dock's clock


def dock_clock_synced(*, runner: Runner = subprocess.run,
                      which: Callable[[str], str | None] = shutil.which,
                      marker: Path = TIMESYNCD_MARKER,
                      adjtimex: Callable[[], int | None] | None = None
                      ) -> tuple[bool | None, str]:
    """``(synced, detail)``: True/False when the system can tell, None when it cannot."""
    exe = which("timedatectl")
    if exe:
        try:
            proc = runner([exe, "show", "-p", "NTPSynchronized", "--value"],
                          capture_output=True, text=True, timeout=TIMEDATECTL_TIMEOUT_S,
                          check=False)
            value = (proc.stdout or "").strip().lower()
            if proc.returncode == 0 and value in ("yes", "no"):
                return value == "yes", f"timedatectl: NTPSynchronized={value}"
            log.debug("timedatectl gave no answer (rc %s): %s", proc.returncode,
                      (proc.stderr or "").strip()[:200])
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.debug("timedatectl failed: %s", exc)
    try:
        if marker.exists():
            return True, f"systemd-timesyncd: {marker} present"
    except OSError:
        pass
    try:
        state = (adjtimex or kernel_adjtimex)()
    except Exception as exc:  # a foreign libc must not take the dock down
        log.debug("adjtimex failed: %s", exc)
        state = None
    if state is not None and state >= 0:
        if state == TIME_ERROR:
            return False, "kernel: clock not synchronised (adjtimex TIME_ERROR)"
        return True, f"kernel: clock synchronised (adjtimex state {state})"
    return None, "cannot tell whether the dock's clock is NTP-synchronised"


def kernel_adjtimex() -> int | None:
    """adjtimex(2) with ``modes = 0`` (read only): the clock state, None if unavailable."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    func = getattr(libc, "adjtimex", None)
    if func is None:
        return None
    buf = ctypes.create_string_buffer(1024)  # struct timex is ~208 bytes; modes (0) first
    result = int(func(buf))
    return result if result >= 0 else None


def dock_clock_doc(cfg: HealthConfig, synced_fn: SyncedFn | None = None) -> dict[str, Any]:
    """What a docking records about the dock's clock (the manifest's ``dock_clock``)."""
    synced, detail = (synced_fn or dock_clock_synced)()
    if synced is False and cfg.require_ntp:
        log.warning("dock clock is not NTP-synchronised (%s): recorder clock offsets measured "
                    "now may be wrong", detail)
    return {"ntp_synced": synced, "detail": detail, "required": cfg.require_ntp}


# --------------------------------------------------------------------------- recorder clocks


def needs_setting(clock_offset_s: float | None, threshold_s: float = SET_CLOCK_MIN_OFFSET_S
                  ) -> bool:
    return clock_offset_s is not None and abs(clock_offset_s) > threshold_s


def timeset_text(now: datetime, tz: ZoneInfo) -> str:
    """The time-set file's content for dock time ``now``: local time, one line."""
    if now.tzinfo is None:
        raise ValueError("naive datetime given for the recorder's clock")
    return now.astimezone(tz).strftime(TIMESET_FORMAT) + "\n"


def set_recorder_clock(root: Path, profile: ProfileConfig, tz: ZoneInfo, now: datetime
                       ) -> dict[str, Any]:
    """Write the profile's time-set file at the recorder's ``root`` (temp name, fsync, rename,
    fsync the directory). Returns what was written. Raises ClockSetError."""
    name = profile.timeset_file
    if not name:
        raise ClockSetError(f"profile {profile.name!r} has no time-set file")
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ClockSetError(f"profile {profile.name!r}: time-set file {name!r} is not a plain "
                            "file name")
    root = Path(root)
    if not root.is_dir():
        raise ClockSetError(f"recorder root {root} is gone")
    target = root / name
    tmp = root / f"{name}.partial"
    text = timeset_text(now, tz)
    try:
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise ClockSetError(f"{target}: exists and is not a regular file; not touched")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(root)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise ClockSetError(f"{target}: cannot write the time-set file: {exc}") from exc
    log.info("recorder at %s: wrote %s = %s (%s)", root, name, text.strip(), tz.key)
    return {"file": name, "time_local": text.strip(), "tz": tz.key,
            "time_utc": now.astimezone(UTC).isoformat(timespec="seconds")}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (vfat over FUSE) cannot fsync a directory
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- pipeline step


def set_clock_after_offload(state: State, cfg: Config, docking_id: int, root: Path,
                            profile: ProfileConfig, *, writable: Writable | None = None,
                            synced_fn: SyncedFn | None = None) -> dict[str, Any] | None:
    """After the docking's offload: set the recorder's clock when all of its clips are copied,
    the config and profile allow it and the clock is off by more than a second.

    Returns the ``clock_set`` audit detail, or None when nothing was written. Never raises for
    a recorder that cannot be written: that is logged and audited (``clock_set_failed``).
    """
    d = state.docking(docking_id)
    port, serial, offset = d["port"], d["serial"], d["clock_offset_s"]
    if not cfg.health.set_clock or not profile.timeset_file or not needs_setting(offset):
        return None
    from ..store import audit as store_audit
    from ..store import status as store_status

    left = store_status.clips_in_state(state, docking_id, "discovered")
    if left:
        log.info("port %s serial %s: %s clip(s) not copied yet: clock not set", port, serial,
                 left)
        return None
    subject = f"docking/{docking_id}"
    if store_audit.has_entry(state, "clock_set", subject):
        return None  # set already (offload resumed after a restart)
    synced, sync_detail = (synced_fn or dock_clock_synced)()
    if synced is False and cfg.health.require_ntp:
        log.warning("port %s serial %s: clock off by %+.1f s but the dock's clock is not "
                    "NTP-synchronised (%s): not setting it", port, serial, offset, sync_detail)
        return None
    try:
        with (writable or nullcontext)():
            written = set_recorder_clock(root, profile, cfg.tz, state.clock())
    except DockdError as exc:  # ClockSetError, or MountError opening the write window
        log.warning("port %s serial %s: cannot set the recorder's clock: %s", port, serial, exc)
        state.audit("clock_set_failed", subject, {"serial": serial, "old_offset_s": offset,
                                                  "error": str(exc)})
        return None
    detail = {"serial": serial, "port": port, "old_offset_s": offset,
              "new_time_local": written["time_local"], "new_time_utc": written["time_utc"],
              "tz": written["tz"], "file": written["file"], "dock_ntp_synced": synced}
    state.audit("clock_set", subject, detail)
    log.info("port %s serial %s: recorder clock was off by %+.1f s; set to %s (%s)", port,
             serial, offset, written["time_local"], written["tz"])
    return detail
