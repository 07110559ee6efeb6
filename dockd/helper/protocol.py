"""The mount helper's front door: who is calling, what they asked, which configuration counts.

Everything here runs before the helper touches a mount, and refuses early:

- **Who**: the only privileged way in is ``dockd-mount.socket`` (systemd starts the helper
  as root per connection, ``--serve``); the caller is the socket peer as the kernel reports
  it (``SO_PEERCRED``). A helper started through ``sudo``, ``doas`` or ``pkexec`` refuses
  to do anything: the sudo mode is gone (an elevated caller could pass ``--serve`` and
  ``--config`` and make root load a configuration of its choosing). Run directly, the
  helper acts with its own ids (root in tests and on a lab box; anyone else cannot mount).
- **What**: one request line, read from the socket with an absolute deadline
  (:data:`REQUEST_TIMEOUT_S`, also against a client that drips one byte at a time) and a
  size limit (:data:`MAX_REQUEST`); ASCII only, at most three words.
- **Which configuration**: :func:`trusted_config` opens the file once — every directory on
  the way reached with ``O_NOFOLLOW`` and checked on its descriptor (owned by root or the
  helper's own user, not group/world-writable unless sticky), the file itself opened
  ``O_NOFOLLOW`` and checked on the open descriptor (a regular file owned by root or the
  helper's user, not group/world-writable, at most :data:`MAX_CONFIG` bytes) — and parses
  exactly the bytes read from that descriptor. Nothing re-opens the path, so a file or
  symlink swapped in after the check is never read.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import struct
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, from_dict
from ..devices.ports import valid_port_label
from ..errors import ConfigError

DEFAULT_CONFIG = Path("/etc/dockd/config.toml")
REQUEST_TIMEOUT_S = 10.0
"""A caller has this long (in total) to send its request line."""
MAX_REQUEST = 512
"""Bytes of one request line, newline included."""
MAX_CONFIG = 1024 * 1024
ELEVATION_VARS = ("SUDO_UID", "SUDO_USER", "SUDO_COMMAND", "DOAS_USER", "PKEXEC_UID")
"""Set by sudo / doas / pkexec (and run0) in the program they start; the caller cannot
remove them."""
DEVNODE_RE = re.compile(r"/dev/[A-Za-z0-9][A-Za-z0-9_.:+-]*(?:/[A-Za-z0-9][A-Za-z0-9_.:+-]*)*")
VERBS = {"mount": (3,), "unmount": (2,), "remount": (3,), "fsck": (2, 3)}
USAGE = "expected: mount DEVNODE PORT | unmount PORT | remount PORT rw|ro | fsck DEVNODE [PORT]"


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

    @property
    def is_root(self) -> bool:
        return self.uid == 0


# --------------------------------------------------------------------------- who


def elevation(environ: Mapping[str, str] | None = None) -> str | None:
    """The variable that shows the helper was started through sudo/doas/pkexec, else None."""
    env = os.environ if environ is None else environ
    return next((name for name in ELEVATION_VARS if name in env), None)


def refuse_elevation(environ: Mapping[str, str] | None = None) -> None:
    via = elevation(environ)
    if via is not None:
        raise Refused("sudo", f"dockd-mount does not run under sudo/doas/pkexec ({via} is set): "
                              "the daemon reaches it through dockd-mount.socket, an admin as "
                              "root through the socket too (see docs/privileges.md)")
    if os.getuid() != os.geteuid() or os.getgid() != os.getegid():
        raise Refused("sudo", "dockd-mount does not run set-uid/set-gid")


def socket_caller(sock: socket.socket) -> Caller:
    """The connected peer as the kernel saw it at ``connect()`` (SO_PEERCRED)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as exc:
        raise Refused("usage", f"--serve needs a connected Unix socket on stdin: "
                               f"{exc.strerror}") from exc
    _pid, uid, gid = struct.unpack("3i", creds)
    if uid < 0 or gid < 0:
        raise Refused("usage", "the socket peer has no credentials")
    return Caller(uid, gid, "socket")


def direct_caller() -> Caller:
    return Caller(os.getuid(), os.getgid(), "direct")


# --------------------------------------------------------------------------- what


def read_request(sock: socket.socket, *, timeout: float = REQUEST_TIMEOUT_S,
                 limit: int = MAX_REQUEST) -> list[str]:
    """The words of the one request line on ``sock``, read within ``timeout`` seconds in
    total (a line cut off by end-of-file counts as complete)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Refused("timeout", f"no complete request line within {timeout:g} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(limit + 1 - len(buf))
        except TimeoutError as exc:
            raise Refused("timeout", f"no complete request line within {timeout:g} s") from exc
        if not chunk:
            break
        buf += chunk
        if b"\n" not in buf and len(buf) > limit:
            raise Refused("too-long", f"request line longer than {limit} bytes")
    return parse_request(buf.split(b"\n", 1)[0], limit=limit)


def drain(sock: socket.socket, limit: int = 65536) -> None:
    """Discard what the client sent beyond its request (so closing does not reset the
    connection before it reads the answer), restore blocking mode (the read timeout made
    the shared socket non-blocking, stdout included) and close our duplicate."""
    try:
        sock.setblocking(False)
        while limit > 0:
            chunk = sock.recv(min(limit, 8192))
            if not chunk:
                break
            limit -= len(chunk)
    except OSError:
        pass
    finally:
        sock.setblocking(True)
        sock.close()


def parse_request(line: bytes, *, limit: int = MAX_REQUEST) -> list[str]:
    """Words of one request line: ASCII, printable, at most three; else Refused."""
    if len(line) >= limit:
        raise Refused("too-long", f"request line longer than {limit} bytes")
    line = line.removesuffix(b"\r")
    if any(b < 0x20 and b != 0x09 or b > 0x7E for b in line):
        raise Refused("usage", "the request must be printable ASCII")
    words = line.decode("ascii").split()
    check_words(words)
    return words


def check_words(words: Sequence[str]) -> None:
    """A known verb with its number of words, and well-formed arguments; else Refused."""
    if not words or len(words) not in VERBS.get(words[0], ()):
        raise Refused("usage", USAGE)
    verb = words[0]
    if verb in ("mount", "fsck"):
        check_devnode(words[1])
    if verb == "mount" or (verb == "fsck" and len(words) == 3):
        check_port(words[2])
    if verb in ("unmount", "remount"):
        check_port(words[1])
    if verb == "remount" and words[2] not in ("rw", "ro"):
        raise Refused("usage", f"remount mode must be rw or ro, not {words[2][:16]!r}")


def check_port(port: str) -> str:
    if not valid_port_label(port):
        raise Refused("bad-port", f"invalid port label {port[:80]!r}")
    return port


def check_devnode(devnode: str) -> str:
    if not DEVNODE_RE.fullmatch(devnode) or "/../" in devnode + "/" or "/./" in devnode + "/":
        raise Refused("bad-device", f"invalid device node {devnode[:80]!r}")
    return devnode


def port_of(words: Sequence[str]) -> str:
    """The port a request is about, for log lines ("?" if none)."""
    if words and words[0] in ("mount", "fsck") and len(words) > 2:
        return words[2][:64]
    if words and words[0] in ("unmount", "remount") and len(words) > 1:
        return words[1][:64]
    return "?"


# --------------------------------------------------------------------------- which configuration


def _trusted_owner(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def _open_trusted_parent(path: Path) -> int:
    """O_PATH fd of ``path``'s directory, every component reached without following links
    and owned by root (or us), not writable by group or others unless sticky."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in path.parts[1:-1]:
            try:
                nfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            except OSError as exc:
                raise Refused("bad-config", f"cannot reach {path} without following links "
                                            f"({name}: {exc.strerror})") from exc
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            if not _trusted_owner(st) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
                raise Refused("bad-config", f"{path}: directory {name} must be owned by root and "
                                            "not writable by group or others")
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_trusted(path: Path, *, limit: int = MAX_CONFIG) -> bytes:
    """The bytes of ``path``, read from one descriptor checked before reading (see module
    doc); never re-opened by name."""
    path = Path(os.path.abspath(path))
    if path == Path("/"):
        raise Refused("bad-config", "the configuration must be a file")
    parent = _open_trusted_parent(path)
    try:
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                         | os.O_NOCTTY, dir_fd=parent)
        except OSError as exc:
            why = "a symlink" if exc.errno == 40 else exc.strerror  # ELOOP
            raise Refused("bad-config", f"cannot open {path}: {why}") from exc
    finally:
        os.close(parent)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("bad-config", f"{path} is not a regular file")
        if not _trusted_owner(st) or st.st_mode & 0o022:
            raise Refused("bad-config", f"{path} must be owned by root and not writable by "
                                        "group or others")
        if st.st_size > limit:
            raise Refused("bad-config", f"{path} is larger than {limit} bytes")
        chunks, total = [], 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise Refused("bad-config", f"{path} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def trusted_config(path: Path | None = None) -> Config:
    """The configuration at ``path`` (default :data:`DEFAULT_CONFIG`), read safely."""
    path = path or DEFAULT_CONFIG
    data = read_trusted(path)
    try:
        return from_dict(tomllib.loads(data.decode("utf-8")))
    except UnicodeDecodeError as exc:
        raise Refused("bad-config", f"{path}: not UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise Refused("bad-config", f"{path}: not valid TOML: {exc}") from exc
    except ConfigError as exc:
        raise Refused("bad-config", f"{path}: {exc}") from exc
