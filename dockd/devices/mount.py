"""Mounting recorders through the privileged helper (the daemon itself never has root).

The daemon asks the helper (:mod:`dockd.helper.mount_helper`, installed as ``dockd-mount``)
for exactly four things: ``fsck DEVNODE``, ``mount DEVNODE PORT``, ``unmount PORT`` and
``remount PORT rw|ro`` (writable for one clearing / clock-setting step only). The
helper re-checks everything itself (it trusts nothing the daemon says) and answers one JSON
object. ``devices.mount_helper`` says how to reach it:

- a **Unix socket** (``/run/dockd-mount.sock``, from ``dockd-mount.socket``; recommended):
  the daemon writes one request line and reads the JSON answer; systemd starts one root
  helper instance per connection. This keeps ``NoNewPrivileges=yes`` and an empty
  capability bounding set on ``dockd.service`` (see docs/privileges.md);
- an **executable**: run directly, only when the daemon itself is root (tests, a lab box).
  There is no sudo mode any more (issue 11: an elevated helper trusted arguments it must
  not); an unprivileged daemon must use the socket.

:class:`HelperMounter` is the one implementation of the small :class:`Mounter` protocol
the udev source uses; tests inject a fake one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import DockdError

log = logging.getLogger(__name__)

MOUNT_TIMEOUT_S = 60.0
FSCK_TIMEOUT_S = 900.0
MAX_REPLY = 64 * 1024


class MountError(DockdError):
    """The helper refused or failed (``code``: refused, vanished, failed, unreachable, ...)."""

    retry = True

    def __init__(self, message: str, *, code: str = "failed"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class MountResult:
    port: str
    devnode: str
    mountpoint: Path
    fstype: str
    options: str
    already: bool = False
    driver: str = "kernel"
    """Who serves the filesystem: the kernel, or a FUSE driver (``fusefat``,
    ``mount.exfat-fuse``) where the kernel has none."""


UNRELIABLE_FILE_TIMES = frozenset({"fusefat"})
"""FUSE drivers whose file times are wrong (fusefat 0.1a: FAT dates one month late; see
docs/recorder-filesystems.md): a docking through them gets ``DOCKD_FILE_TIMES=unreliable``."""


@dataclass(frozen=True)
class FsckResult:
    devnode: str
    verdict: str
    """clean | errors | failed | unsupported"""
    exit_code: int | None
    detail: str


class Mounter(Protocol):
    def fsck(self, devnode: str, port: str) -> FsckResult: ...

    def mount(self, devnode: str, port: str) -> MountResult: ...

    def unmount(self, port: str) -> bool:
        """True when something was mounted at the port (it is not any more)."""
        ...

    def remount(self, port: str, writable: bool) -> None:
        """Remount the recorder at the port read-write (``writable``) or read-only again."""
        ...


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class HelperMounter:
    """Talks to the helper over its Unix socket, or runs it directly when we are root."""

    def __init__(self, helper: str, *, runner: Runner = subprocess.run,
                 euid: Callable[[], int] = os.geteuid):
        self.helper = helper
        self._run = runner
        self._euid = euid

    # ------------------------------------------------------------------ protocol

    def fsck(self, devnode: str, port: str) -> FsckResult:
        reply = self.call(["fsck", devnode, port], timeout=FSCK_TIMEOUT_S, port=port)
        code = reply.get("exit")
        return FsckResult(devnode, str(reply.get("verdict", "failed")),
                          int(code) if isinstance(code, int) else None,
                          str(reply.get("detail", "")))

    def mount(self, devnode: str, port: str) -> MountResult:
        reply = self.call(["mount", devnode, port], timeout=MOUNT_TIMEOUT_S, port=port)
        return MountResult(port, devnode, Path(str(reply["mountpoint"])),
                           str(reply.get("fstype", "")), str(reply.get("options", "")),
                           bool(reply.get("already", False)),
                           str(reply.get("driver", "kernel")))

    def unmount(self, port: str) -> bool:
        reply = self.call(["unmount", port], timeout=MOUNT_TIMEOUT_S, port=port)
        return bool(reply.get("was_mounted", False))

    def remount(self, port: str, writable: bool) -> None:
        mode = "rw" if writable else "ro"
        reply = self.call(["remount", port, mode], timeout=MOUNT_TIMEOUT_S, port=port)
        if reply.get("mode") != mode:
            raise MountError(f"helper answered {reply!r} to remount {mode}", code="protocol")

    # ------------------------------------------------------------------ transport

    def command(self, words: Sequence[str]) -> list[str]:
        """The argv used when the helper is an executable (not a socket): only as root."""
        if self._euid() != 0:
            raise MountError(f"devices.mount_helper = {self.helper!r} is not a socket, and "
                             "only root may run the helper directly (there is no sudo mode): "
                             "use dockd-mount.socket, /run/dockd-mount.sock (docs/privileges.md)",
                             code="unreachable")
        return [self.helper, *words]

    def is_socket(self) -> bool:
        try:
            return stat.S_ISSOCK(os.stat(self.helper).st_mode)
        except OSError:
            return False

    def call(self, words: Sequence[str], *, timeout: float, port: str = "?") -> dict[str, Any]:
        """One request; the parsed JSON answer when ``ok``, else :class:`MountError`."""
        if self.is_socket():
            raw = self._call_socket(words, timeout, port)
        else:
            raw = self._call_exec(words, timeout, port)
        try:
            reply = json.loads(raw.strip().splitlines()[-1]) if raw.strip() else None
        except (json.JSONDecodeError, IndexError) as exc:
            raise MountError(f"helper answered no JSON: {raw[-300:]!r}", code="protocol") from exc
        if not isinstance(reply, dict):
            raise MountError(f"helper answered no JSON object: {raw[-300:]!r}", code="protocol")
        if not reply.get("ok"):
            raise MountError(str(reply.get("message", "helper failed")),
                             code=str(reply.get("error", "failed")))
        return reply

    def _call_exec(self, words: Sequence[str], timeout: float, port: str) -> str:
        argv = self.command(words)
        log.debug("port %s: running %s", port, " ".join(argv))
        try:
            proc = self._run(argv, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise MountError(f"mount helper not found: {exc.filename}", code="unreachable") from exc
        except subprocess.TimeoutExpired as exc:
            raise MountError(f"mount helper timed out after {timeout:.0f} s",
                             code="timeout") from exc
        if proc.stderr.strip():
            log.debug("port %s: helper stderr: %s", port, proc.stderr.strip()[-500:])
        if not proc.stdout.strip():
            raise MountError(f"mount helper exited {proc.returncode} without an answer: "
                             f"{proc.stderr.strip()[-300:]}", code="unreachable")
        return str(proc.stdout)

    def _call_socket(self, words: Sequence[str], timeout: float, port: str) -> str:
        request = " ".join(words) + "\n"
        chunks: list[bytes] = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(self.helper)
                s.sendall(request.encode("utf-8"))
                s.shutdown(socket.SHUT_WR)
                size = 0
                while size < MAX_REPLY:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except TimeoutError as exc:
            raise MountError(f"mount helper socket timed out after {timeout:.0f} s",
                             code="timeout") from exc
        except OSError as exc:
            raise MountError(f"cannot reach mount helper at {self.helper}: {exc}",
                             code="unreachable") from exc
        log.debug("port %s: helper socket request %r", port, request.strip())
        return b"".join(chunks).decode("utf-8", "replace")
