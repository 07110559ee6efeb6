"""A storage target that is a local or NFS-mounted directory.

Each put, like rclone:

1. walks to the parent directory with ``O_NOFOLLOW`` at every level (a symlinked directory
   inside the root is refused, not followed), creating missing directories 0755;
2. returns ``already_present`` if the final file exists with the same SHA-256, and refuses
   (``retry=False``) if it exists with other content;
3. writes ``<name>.partial`` (a stale one is removed first) while hashing the source,
   refusing a source that does not match the expected size/SHA-256;
4. makes it read-only (0444), ``fsync``\\ s it, drops it from the page cache
   (``posix_fadvise(DONTNEED)``) and re-reads it, so what is compared is what the disk or
   NFS server holds;
5. publishes it with ``os.link(partial, final)`` — which fails if ``final`` appeared in the
   meantime (then the two are compared) — removes the partial and ``fsync``\\ s the
   directory. On file systems without hard links it falls back to an existence check and
   ``rename``.

All operations go through directory file descriptors, so a directory swapped for a
symlink half-way cannot redirect a write outside the root. A missing root is created
(0755, with a warning) unless ``create_root`` is false — set it false for a mount point, so
an unmounted share fails (retryable) instead of filling the local disk.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import DeliveryError
from .base import (
    CHUNK_SIZE,
    Receipt,
    RemoteObject,
    Retention,
    check_digest,
    existing_receipt,
    os_error_to_delivery,
)
from .layout import PARTIAL_SUFFIX, QUARANTINE_DIR, split_key

log = logging.getLogger(__name__)

_NO_HARDLINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK})

Writer = Callable[[int], tuple[int, str]]


class LocalTarget:
    """A directory target (local disk or NFS). Implements ``StorageTarget``."""

    def __init__(self, name: str, root: Path, required: bool = True, *,
                 chunk_size: int = CHUNK_SIZE, create_root: bool = True):
        self.name = name
        self.root = Path(root)
        self.required = required
        self.chunk_size = chunk_size
        self.create_root = create_root
        self.throttle: Callable[[int], object] | None = None
        """Bandwidth pacer hook, called with each chunk's size before it is written."""

    def describe(self) -> str:
        return f"local directory {self.root}"

    def close(self) -> None:
        """Nothing to release: no descriptor outlives a call."""

    def __repr__(self) -> str:
        return f"LocalTarget({self.name!r}, {str(self.root)!r}, required={self.required})"

    # ------------------------------------------------------------------ public operations

    def put_file(self, local_path: Path, key: str, *, sha256: str, size: int,
                 retention: Retention | None = None) -> Receipt:
        check_digest(sha256, size)

        def write(fd: int) -> tuple[int, str]:
            try:
                src = open(local_path, "rb")
            except OSError as exc:
                raise os_error_to_delivery(exc, self.name, str(local_path), "read source") from exc
            with src:
                return self._copy(src.fileno(), fd, str(local_path))

        return self._put(key, sha256, size, write)

    def put_bytes(self, data: bytes, key: str, *,
                  retention: Retention | None = None) -> Receipt:
        sha256 = hashlib.sha256(data).hexdigest()

        def write(fd: int) -> tuple[int, str]:
            _write_all(fd, data)
            return len(data), sha256

        return self._put(key, sha256, len(data), write)

    def stat(self, key: str) -> RemoteObject | None:
        try:
            opened = self._open_parent(key, create=False)
            if opened is None:
                return None
            dir_fd, name = opened
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise os_error_to_delivery(exc, self.name, key, "stat") from exc
        if not stat.S_ISREG(st.st_mode):
            raise DeliveryError(f"{self.name}: {key} is not a regular file", retry=False)
        return RemoteObject(key=key, size=st.st_size, sha256=None)

    def quarantine(self, key: str) -> str:
        """Move a landed copy that failed verification to ``_quarantine/<key>.<time>`` (kept
        for investigation, out of the docking directory) so the clip can be sent again.
        Only the queue calls this, and only for a copy proven not to match its SHA-256."""
        dest_key = f"{QUARANTINE_DIR}/{key}.{time.strftime('%Y%m%dT%H%M%S')}"
        try:
            src = self._open_parent(key, create=False)
            if src is None:
                raise DeliveryError(f"{self.name}: {key}: nothing to quarantine", retry=True)
            dst = self._open_parent(dest_key, create=True)
            assert dst is not None
            try:
                os.rename(src[1], dst[1], src_dir_fd=src[0], dst_dir_fd=dst[0])
                os.fsync(src[0])
                os.fsync(dst[0])
            finally:
                os.close(src[0])
                os.close(dst[0])
        except OSError as exc:
            raise os_error_to_delivery(exc, self.name, key, "quarantine") from exc
        log.warning("%s: %s failed verification; moved to %s", self.name, key, dest_key)
        return dest_key

    def verify(self, key: str, *, sha256: str, size: int) -> bool:
        try:
            opened = self._open_parent(key, create=False)
            if opened is None:
                return False
            dir_fd, name = opened
            try:
                found = self._hash_existing(dir_fd, name, key)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise os_error_to_delivery(exc, self.name, key, "verify") from exc
        ok = found == (size, sha256)
        if not ok:
            log.warning("%s: %s does not verify (expected %d bytes %s, found %s)",
                        self.name, key, size, sha256, found)
        return ok

    # ------------------------------------------------------------------ the put protocol

    def _put(self, key: str, sha256: str, size: int, write: Writer) -> Receipt:
        try:
            opened = self._open_parent(key, create=True)
        except OSError as exc:
            raise os_error_to_delivery(exc, self.name, key, "create directories for") from exc
        if opened is None:  # pragma: no cover - create=True never answers None
            raise DeliveryError(f"{self.name}: cannot open directory for {key}", retry=True)
        dir_fd, name = opened
        partial = name + PARTIAL_SUFFIX
        try:
            existing = self._hash_existing(dir_fd, name, key)
            if existing is not None:
                return self._compare(key, existing, sha256, size)
            _unlink_quiet(partial, dir_fd)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                written = write(fd)
                if written != (size, sha256):
                    raise DeliveryError(
                        f"{self.name}: source for {key} is {written[0]} bytes "
                        f"{written[1]}, expected {size} bytes {sha256}; not delivered",
                        retry=False)
                os.fchmod(fd, 0o444)
                os.fsync(fd)
            finally:
                os.close(fd)
            landed = self._read_back(dir_fd, partial)
            if landed != (size, sha256):
                raise DeliveryError(
                    f"{self.name}: {key} landed as {landed[0]} bytes {landed[1]}, "
                    f"expected {size} bytes {sha256}", retry=True)
            return self._publish(dir_fd, partial, name, key, sha256, size)
        except OSError as exc:
            _unlink_quiet(partial, dir_fd)
            raise os_error_to_delivery(exc, self.name, key, "write") from exc
        except BaseException:
            _unlink_quiet(partial, dir_fd)
            raise
        finally:
            os.close(dir_fd)

    def _publish(self, dir_fd: int, partial: str, name: str, key: str, sha256: str,
                 size: int) -> Receipt:
        try:
            os.link(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            return self._lost_race(dir_fd, partial, name, key, sha256, size)
        except OSError as exc:
            if exc.errno not in _NO_HARDLINKS:
                raise
            # no hard links here (vfat, some SMB): check, then rename (small race window)
            try:
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                return self._lost_race(dir_fd, partial, name, key, sha256, size)
        else:
            os.unlink(partial, dir_fd=dir_fd)
        os.fsync(dir_fd)
        log.info("%s: delivered %s (%d bytes, sha256 %s)", self.name, key, size, sha256)
        # the bytes read back above (fsync'ed, page cache dropped) are the published inode's
        return Receipt(key=key, size=size, sha256=sha256, already_present=False, verified=True)

    def _lost_race(self, dir_fd: int, partial: str, name: str, key: str, sha256: str,
                   size: int) -> Receipt:
        """``name`` appeared while we wrote: it wins; ours is dropped after comparing."""
        _unlink_quiet(partial, dir_fd)
        existing = self._hash_existing(dir_fd, name, key)
        if existing is None:
            raise DeliveryError(f"{self.name}: {key} appeared and vanished while publishing",
                                retry=True)
        return self._compare(key, existing, sha256, size)

    def _compare(self, key: str, existing: tuple[int, str], sha256: str, size: int) -> Receipt:
        # ``existing`` was hashed from the disk (``_hash_existing``): a read-back
        return existing_receipt(self.name, key, existing, sha256=sha256, size=size,
                                verified=True)

    # ------------------------------------------------------------------ file-system helpers

    def _open_parent(self, key: str, *, create: bool) -> tuple[int, str] | None:
        """(descriptor of the key's directory, file name); None if absent and not ``create``."""
        try:
            parts = split_key(key)
        except ValueError as exc:
            raise DeliveryError(f"{self.name}: refusing key: {exc}", retry=False) from exc
        if create and self.create_root and not self.root.exists():
            log.warning("%s: creating missing target root %s", self.name, self.root)
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeliveryError(f"{self.name}: target root {self.root} does not exist "
                                "(share not mounted?)", retry=True) from None
        try:
            for part in parts[:-1]:
                created = False
                # open first: a docking's directories exist after its first clip, so most
                # puts need no mkdir at all (#13: many small clips)
                sub = self._open_dir(fd, part, key)
                if sub is None:
                    if not create:
                        os.close(fd)
                        return None
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        created = True
                    except FileExistsError:
                        pass
                    sub = self._open_dir(fd, part, key)
                    if sub is None:
                        raise FileNotFoundError(errno.ENOENT, "vanished after mkdir", part)
                if created:
                    os.fsync(fd)
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def _open_dir(self, dir_fd: int, part: str, key: str) -> int | None:
        """A descriptor of the directory ``part`` inside ``dir_fd``; None if there is none. A
        symlink or a non-directory there is refused (``retry=False``)."""
        try:
            return os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise DeliveryError(
                    f"{self.name}: refusing key {key}: {part!r} is a symlink or not "
                    "a directory inside the target", retry=False) from exc
            raise

    def _hash_existing(self, dir_fd: int, name: str, key: str) -> tuple[int, str] | None:
        """(size, sha256) of the final file, read from disk; None if there is none."""
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        try:
            return self._read_back(dir_fd, name)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DeliveryError(f"{self.name}: {key} is a symlink inside the target; "
                                    "refusing", retry=False) from exc
            raise

    def _read_back(self, dir_fd: int, name: str) -> tuple[int, str]:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DeliveryError(f"{self.name}: {name} is not a regular file", retry=False)
            # drop cached pages so the bytes hashed come from the disk / NFS server
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            h = hashlib.sha256()
            size = 0
            while chunk := os.read(fd, self.chunk_size):
                h.update(chunk)
                size += len(chunk)
            return size, h.hexdigest()
        finally:
            os.close(fd)

    def _copy(self, src_fd: int, dst_fd: int, src_name: str) -> tuple[int, str]:
        h = hashlib.sha256()
        size = 0
        while True:
            try:
                chunk = os.read(src_fd, self.chunk_size)
            except OSError as exc:
                raise os_error_to_delivery(exc, self.name, src_name, "read source") from exc
            if not chunk:
                return size, h.hexdigest()
            h.update(chunk)
            size += len(chunk)
            if self.throttle is not None:
                self.throttle(len(chunk))
            _write_all(dst_fd, chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_quiet(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", name, exc.strerror or exc)

