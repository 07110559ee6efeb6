"""The copy engine's moving parts (see :mod:`dockd.ingest.offload` for the whole copy):
the *reader* thread that reads and hashes the source, the staged file written with
``O_DIRECT`` while aligned, the *syncer* that makes the writes durable in steps and reads
them back for a second hash, the pump that drains the reader into the staged file, and the
small-file read-back. Errors are translated here: a failing source is ``RecorderGone`` or
``CopyError``, a full staging disk ``StagingFull``."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CopyError, RecorderGone, StagingFull
from .pacing import source_rate
from .scan import GONE_ERRNOS

log = logging.getLogger(__name__)

SYNC_STEP = 8 * 1024 * 1024
"""Bytes written before the next background ``fdatasync`` + verify round starts (a round
takes everything written so far, so rounds grow when the source outpaces the disk; small
steps keep the verification close behind a slow source, so little is left after its last
byte)."""
READ_BUFFERS = 3
VERIFY_BUFFERS = 2
ALIGN = 4096
"""O_DIRECT alignment used for offsets, lengths and buffers (covers 512 and 4K sectors)."""
STALL_SECONDS = 120.0
"""No data from the source for this long: the recorder is treated as gone."""

_NOSPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_O_DIRECT = getattr(os, "O_DIRECT", 0)

Progress = Callable[[int], None]
ShouldStop = Callable[[], bool]


def _source_error(exc: OSError, what: str) -> CopyError | RecorderGone:
    if exc.errno in GONE_ERRNOS or exc.errno is None:
        return RecorderGone(f"{what}: recorder read failed: {exc.strerror or exc}")
    return CopyError(f"{what}: read failed: {exc.strerror or exc}")


def _staging_error(exc: OSError, what: str) -> CopyError:
    if exc.errno in _NOSPACE:
        return StagingFull(f"{what}: staging disk full: {exc.strerror}")
    return CopyError(f"{what}: staging write failed: {exc.strerror or exc}")


# --------------------------------------------------------------------------- threads


class _Reader(threading.Thread):
    """Reads exactly ``size`` bytes into rotating buffers, hashing each; owns ``fd``.

    Messages on ``full``: ("data", buf, n), ("eof", extra_bytes, fstat_after),
    ("error", exc, None).
    """

    def __init__(self, fd: int, size: int, chunk_size: int):
        super().__init__(name="dockd-offload-read", daemon=True)
        self.fd = fd
        self.size = size
        self.hasher = hashlib.sha256()
        self.free: queue.Queue[mmap.mmap | None] = queue.Queue()
        self.full: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        for _ in range(READ_BUFFERS):
            self.free.put(mmap.mmap(-1, chunk_size))  # page-aligned, for O_DIRECT
        self.cancelled = threading.Event()
        self.rate = source_rate()

    def run(self) -> None:
        try:
            self._run()
        except OSError as exc:
            self.full.put(("error", exc, None))
        except Exception as exc:  # never leave the writer waiting for the stall timeout
            self.full.put(("error", OSError(errno.EPROTO, f"reader failed: {exc!r}"), None))
        finally:
            os.close(self.fd)

    def _run(self) -> None:
        try:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:  # pragma: no cover - advisory only
            pass
        remaining = self.size
        started = time.monotonic()
        while remaining > 0:
            buf = self.free.get()
            if buf is None or self.cancelled.is_set():
                return
            mv = memoryview(buf)
            n = os.readv(self.fd, [mv[: min(len(buf), remaining)]])
            if n == 0:
                break
            self.hasher.update(mv[:n])
            remaining -= n
            if self.rate:  # a simulated bus: the chunk arrives when the bus has carried it
                due = started + (self.size - remaining) / self.rate - time.monotonic()
                if due > 0 and self.cancelled.wait(due):
                    return
            self.full.put(("data", buf, n))
        extra = len(os.read(self.fd, 1)) if remaining == 0 else 0
        self.full.put(("eof", extra, os.fstat(self.fd)))

    def cancel(self) -> None:
        self.cancelled.set()
        self.free.put(None)
        self.join(timeout=5.0)
        if self.is_alive():
            log.warning("reader thread still blocked on the recorder; abandoned")


def _set_direct(fd: int, on: bool) -> bool:
    """Switch O_DIRECT on or off for ``fd``; False where the filesystem refuses it."""
    if not _O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | _O_DIRECT) if on else (flags & ~_O_DIRECT))
    except OSError:
        return False
    return True


class _StagedFile:
    """The ``.partial`` being written: O_DIRECT while writes stay aligned, buffered after."""

    def __init__(self, path: Path, direct: bool):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o640)
        self.direct = direct and _set_direct(self.fd, True)
        self.offset = 0

    def write(self, view: memoryview) -> None:
        if self.direct and (self.offset % ALIGN or len(view) % ALIGN):
            self._buffered()
        while view:
            try:
                n = os.write(self.fd, view)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self._buffered()
                continue
            view = view[n:]
            self.offset += n

    def _buffered(self) -> None:
        _set_direct(self.fd, False)
        self.direct = False


class _Syncer(threading.Thread):
    """Makes written data durable in steps and, when verifying, reads it back from disk
    for a second thread to hash."""

    def __init__(self, wfd: int, path: Path, chunk_size: int, verify: bool, direct: bool):
        super().__init__(name="dockd-offload-sync", daemon=True)
        self.wfd = wfd
        self.verify = verify
        self.hasher = hashlib.sha256()
        self.verified = 0
        self.error: OSError | None = None
        self._rfd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC) if verify else -1
        self._direct = verify and direct and _set_direct(self._rfd, True)
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        self._hashq: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        for _ in range(VERIFY_BUFFERS):
            self._free.put(mmap.mmap(-1, chunk_size))
        self._hash_thread = threading.Thread(target=self._hash_loop, daemon=True,
                                             name="dockd-offload-verify")
        self._cond = threading.Condition()
        self._written = 0
        self._final = False
        self._abort = False
        self._step = max(SYNC_STEP, chunk_size)

    def advance(self, written: int, final: bool = False) -> None:
        with self._cond:
            self._written = written
            self._final = final
            self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self._abort = True
            self._cond.notify()
        self.join()

    def run(self) -> None:
        synced = 0
        self._hash_thread.start()
        try:
            while True:
                with self._cond:
                    while not (self._abort or self._final or self._written - synced >= self._step):
                        self._cond.wait()
                    if self._abort:
                        return
                    target, final = self._written, self._final
                (os.fsync if final else os.fdatasync)(self.wfd)
                if self.verify:
                    self._read_back(target)
                synced = target
                if final:
                    return
        except OSError as exc:
            self.error = exc
        finally:
            self._hashq.put(None)
            self._hash_thread.join()
            if self._rfd >= 0:
                os.close(self._rfd)

    def _read_back(self, target: int) -> None:
        if not self._direct:
            os.posix_fadvise(self._rfd, self.verified, target - self.verified,
                             os.POSIX_FADV_DONTNEED)
        while self.verified < target:
            want = target - self.verified
            buf = self._free.get()
            if self._direct and self.verified % ALIGN:
                self._direct = False  # an unaligned step (short source read): buffered now
                _set_direct(self._rfd, False)
                os.posix_fadvise(self._rfd, self.verified, want, os.POSIX_FADV_DONTNEED)
            length = min(len(buf), -(-want // ALIGN) * ALIGN if self._direct else want)
            try:
                n = os.preadv(self._rfd, [memoryview(buf)[:length]], self.verified)
            except OSError as exc:
                self._free.put(buf)
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                self._direct = False
                _set_direct(self._rfd, False)
                os.posix_fadvise(self._rfd, self.verified, want, os.POSIX_FADV_DONTNEED)
                continue
            if n == 0:
                self._free.put(buf)
                raise OSError(errno.EIO, "staged file shorter than written")
            n = min(n, want)
            self.verified += n
            self._hashq.put((buf, n))

    def _hash_loop(self) -> None:
        while (item := self._hashq.get()) is not None:
            buf, n = item
            self.hasher.update(memoryview(buf)[:n])
            self._free.put(buf)


# --------------------------------------------------------------------------- copy


def _pump(reader: _Reader, out: _StagedFile | None, syncer: _Syncer | None, what: str,
          progress: Progress | None, should_stop: ShouldStop | None) -> tuple[int, int, os.stat_result]:
    """Drain the reader into ``out``. Returns (bytes, extra bytes at EOF, fstat after)."""
    done = 0
    last_data = time.monotonic()
    while True:
        if should_stop is not None and should_stop():
            raise CopyError("stopped")
        if syncer is not None and syncer.error is not None:
            raise _staging_error(syncer.error, what)
        try:
            kind, obj, n = reader.full.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() - last_data > STALL_SECONDS:
                raise RecorderGone(f"{what}: no data from the recorder for {STALL_SECONDS:.0f} s") from None
            continue
        last_data = time.monotonic()
        if kind == "error":
            raise _source_error(obj, what)
        if kind == "eof":
            return done, obj, n
        if out is not None:
            try:
                out.write(memoryview(obj)[:n])
            except OSError as exc:
                raise _staging_error(exc, what) from exc
        reader.free.put(obj)
        done += n
        if syncer is not None:
            syncer.advance(done)
        if progress is not None:
            progress(done)


def _read_back_small(path: Path, size: int) -> tuple[int, str]:
    """Size and SHA-256 of the synced ``path`` as the disk has it: its (clean) pages are
    dropped from the page cache first, so the read comes from the disk."""
    rfd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.posix_fadvise(rfd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = bytearray(size + 1)  # one byte more: a longer file shows as longer
        view = memoryview(buf)
        n = 0
        while n < len(buf) and (got := os.preadv(rfd, [view[n:]], n)):
            n += got
        return n, hashlib.sha256(view[:n]).hexdigest()
    finally:
        os.close(rfd)
