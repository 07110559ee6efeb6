"""Copy one clip off a recorder into staging, the way rclone does it.

``copy_clip`` opens the source read-only without following symlinks, streams it once
through SHA-256 into ``<staging>/<safe_name>.partial``, makes it durable, reads it back
from disk to prove the bytes landed, then renames it to its final name and syncs the
folder. A partial is never mistaken for a copy: it is removed on every error, and
``clean_stale_partials`` removes any left over by a crash.

Four threads keep the source, the CPU and the staging disk busy at once:

* the *reader* ``readinto``-s the source into a few rotating page-aligned buffers and
  hashes each one (hashlib and file I/O release the GIL on large buffers);
* the caller's thread writes the buffers to the partial, with ``O_DIRECT`` while the
  writes stay block-aligned (no page-cache copy: on the reference box a buffered write
  costs more CPU than SHA-256), buffered for an unaligned tail or where the filesystem
  refuses ``O_DIRECT``; it reports progress and honours ``should_stop``;
* the *syncer* ``fdatasync``-s what has been written every ``SYNC_STEP`` bytes and reads
  that range back from the disk (``O_DIRECT``, or ``POSIX_FADV_DONTNEED`` then a buffered
  read, which with ``keep_cached`` leaves the verified pages cached for a delivery that
  reads them next), handing the buffers to
* the *verify hasher*, so the final ``fsync`` and the verification pass are mostly done
  by the time the last byte is written.

Memory is a handful of ``chunk_size`` buffers, whatever the file size; copies running at
once share one buffer budget (``pacing.BUFFER_BUDGET``; later ones get smaller chunks), so it stays flat in the number
of ports.

:func:`pace_sources` makes the reader deliver no more than a given rate per copy (a
simulated USB bus for ``bench/dock.py``, whose recorders are trees on a local disk); off
unless called.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from pathlib import Path

from ..errors import CopyError, HostileName, RecorderGone, SourceChanged, StagingFull
from ..model import ClipEntry, CopyResult
from .copy_io import (
    ALIGN,
    READ_BUFFERS,
    VERIFY_BUFFERS,
    Progress,
    ShouldStop,
    _pump,
    _read_back_small,
    _Reader,
    _StagedFile,
    _staging_error,
    _Syncer,
)
from .pacing import BufferBudget, pace_sources
from .scan import GONE_ERRNOS

__all__ = ["CopyResult", "clean_stale_partials", "copy_clip", "hash_file", "pace_sources"]

log = logging.getLogger(__name__)

CHUNK_SIZE = 4 * 1024 * 1024
SMALL_FILE = 1024 * 1024
"""Clips up to this size are copied by :func:`_copy_small` (one thread, not three)."""
PARTIAL_SUFFIX = ".partial"

_O_NOATIME = getattr(os, "O_NOATIME", 0)



# --------------------------------------------------------------------------- helpers


def hash_file(path: Path, chunk_size: int = CHUNK_SIZE) -> tuple[int, str]:
    """(size, SHA-256 hex) of ``path``, read with one fixed buffer; symlinks refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return _hash_fd(fd, chunk_size)
    finally:
        os.close(fd)


def _hash_fd(fd: int, chunk_size: int) -> tuple[int, str]:
    h = hashlib.sha256()
    buf = bytearray(chunk_size)
    mv = memoryview(buf)
    size = 0
    while n := os.readv(fd, [mv]):
        h.update(mv[:n])
        size += n
    return size, h.hexdigest()


def clean_stale_partials(staging_dir: Path) -> list[Path]:
    """Remove every ``*.partial`` under ``staging_dir`` (start-up cleanup). Returns them."""
    removed: list[Path] = []
    if not os.path.isdir(staging_dir):
        return removed
    for dirpath, _dirs, files in os.walk(staging_dir, followlinks=False):
        for name in files:
            if name.endswith(PARTIAL_SUFFIX):
                p = Path(dirpath, name)
                try:
                    p.unlink()
                except FileNotFoundError:
                    continue
                removed.append(p)
    if removed:
        log.warning("removed %d stale partial file(s) from %s", len(removed), staging_dir)
    return sorted(removed)


def _staged_paths(staging_dir: Path, safe_name: str) -> tuple[Path, Path, Path]:
    """(resolved staging dir, final path, partial path); refuses names that could escape."""
    if (not safe_name or safe_name in (".", "..") or "/" in safe_name or "\x00" in safe_name
            or safe_name.endswith(PARTIAL_SUFFIX)):
        raise HostileName(f"unsafe staging name {safe_name!r}")
    Path(staging_dir).mkdir(parents=True, exist_ok=True)
    real = Path(staging_dir).resolve(strict=True)
    final = real / safe_name
    partial = real / (safe_name + PARTIAL_SUFFIX)
    if final.parent != real or partial.parent != real:
        raise HostileName(f"staging name {safe_name!r} escapes {real}")
    return real, final, partial


def _open_source(root: Path, rel_path: str) -> tuple[int, os.stat_result]:
    """Open ``root/rel_path`` read-only, component by component, never following a link.

    Returns (fd, fstat). The fd is non-blocking-opened (a FIFO swapped in after the scan
    cannot hang us) and must be a regular file.
    """
    parts = rel_path.split("/")
    if rel_path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise HostileName(f"unsafe path on recorder: {rel_path!r}")
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    where = rel_path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RecorderGone(f"recorder root {root} not readable: {exc.strerror}") from exc
    fd = -1
    try:
        for part in parts[:-1]:
            nfd = os.open(part, dir_flags, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(parts[-1], flags | _O_NOATIME, dir_fd=dfd)
        except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER
            fd = os.open(parts[-1], flags, dir_fd=dfd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HostileName(f"{where} is not a regular file (mode {oct(st.st_mode)})")
        os.set_blocking(fd, True)
        return fd, st
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise HostileName(f"{where}: symbolic link or non-folder in path") from exc
        if exc.errno in GONE_ERRNOS:
            raise RecorderGone(f"{where}: {exc.strerror}") from exc
        raise CopyError(f"cannot open {where} on recorder: {exc.strerror}") from exc
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    finally:
        os.close(dfd)


_BUFFERS = BufferBudget(READ_BUFFERS + VERIFY_BUFFERS, ALIGN)


def _check_complete(done: int, extra: int, st_before: os.stat_result, st_after: os.stat_result,
                    what: str) -> None:
    if st_after.st_nlink == 0:
        raise RecorderGone(f"{what}: source was deleted during copy")
    if done < st_before.st_size:
        raise SourceChanged(f"{what}: source ended after {done} of {st_before.st_size} bytes")
    if extra or st_after.st_size != st_before.st_size:
        raise SourceChanged(f"{what}: source changed size during copy "
                            f"({st_before.st_size} -> {st_after.st_size})")


def _hash_source(root: Path, entry: ClipEntry, chunk_size: int, what: str,
                 should_stop: ShouldStop | None) -> tuple[int, str]:
    fd, st = _open_source(root, entry.rel_path)
    reader = _Reader(fd, st.st_size, chunk_size)
    reader.start()
    try:
        done, extra, st_after = _pump(reader, None, None, what, None, should_stop)
    finally:
        reader.cancel()
    _check_complete(done, extra, st, st_after, what)
    return done, reader.hasher.hexdigest()


def _try_resume(root: Path, entry: ClipEntry, final: Path, src_size: int, chunk_size: int,
                what: str, should_stop: ShouldStop | None) -> str | None:
    """SHA-256 when ``final`` already holds an identical copy, else None."""
    try:
        st = final.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size != src_size:
        log.warning("%s: staged file exists but differs in size or type; replacing", what)
        return None
    staged_size, staged_hash = hash_file(final, chunk_size)
    src_len, src_hash = _hash_source(root, entry, chunk_size, what, should_stop)
    if (staged_size, staged_hash) == (src_len, src_hash):
        log.info("%s: already staged with the same SHA-256, not copied again", what)
        return src_hash
    log.warning("%s: staged file differs from the recorder's; copying again", what)
    return None


def _check_free(staging: Path, need: int, what: str) -> None:
    sv = os.statvfs(staging)
    free = sv.f_bavail * sv.f_frsize
    if free < need:
        raise StagingFull(f"{what}: staging has {free} bytes free, {need} needed")


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def copy_clip(root: Path, entry: ClipEntry, staging_dir: Path, *, chunk_size: int = CHUNK_SIZE,
              verify: bool = True, min_free: int = 0, progress: Progress | None = None,
              should_stop: ShouldStop | None = None, direct_io: bool = True,
              keep_cached: bool = False) -> CopyResult:
    """Copy ``entry`` from the recorder mounted at ``root`` into ``staging_dir``.

    ``progress`` gets the number of bytes of this clip copied so far, after each chunk.
    With ``verify`` the staged bytes are read back from the disk after they were synced and
    hashed again. ``direct_io`` uses O_DIRECT for staging writes and read-back where the
    filesystem allows it; without it (or where refused) writes are buffered and the pages
    are dropped from the page cache (``POSIX_FADV_DONTNEED``) before the read-back.
    ``keep_cached`` reads back through the page cache (each range dropped first, so the
    bytes still come from the disk) and leaves the verified pages there, so a delivery
    that follows at once reads them from memory instead of reading the staging disk a
    second time; it costs ~1 CPU-second per GiB more on the reference box (page-cache
    fills), so it is off by default and the read-back uses ``O_DIRECT`` where
    ``direct_io`` allows (bench/RESULTS.md, #13).

    Raises RecorderGone (source vanished, I/O error, changed under us), StagingFull (not
    enough room, ENOSPC), HostileName (not a regular file, unsafe name), CopyError (stopped,
    staged bytes differ). The ``.partial`` is removed whatever goes wrong.
    """
    t0 = time.monotonic()
    what = entry.safe_name
    chunk_size = -(-max(int(chunk_size), 64 * 1024) // ALIGN) * ALIGN
    staging, final, partial = _staged_paths(staging_dir, entry.safe_name)
    fd, st = _open_source(root, entry.rel_path)
    if entry.size != st.st_size:
        log.warning("%s: size on recorder is now %d bytes, %d when scanned", what,
                    st.st_size, entry.size)
    try:
        resumed = _try_resume(root, entry, final, st.st_size, chunk_size, what, should_stop)
    except BaseException:
        os.close(fd)
        raise
    if resumed is not None:
        os.close(fd)
        return CopyResult(size=st.st_size, sha256=resumed, staged_path=final,
                          seconds=time.monotonic() - t0)
    if st.st_size <= SMALL_FILE and not keep_cached:
        return _copy_small(fd, st, entry, staging, final, partial, chunk_size=chunk_size,
                           verify=verify, min_free=min_free, progress=progress, should_stop=should_stop,
                           t0=t0)
    chunk_size = _BUFFERS.take(chunk_size)
    try:
        return _copy_fresh(fd, st, entry, staging, final, partial, chunk_size=chunk_size,
                           verify=verify, min_free=min_free, progress=progress,
                           should_stop=should_stop, direct_io=direct_io,
                           keep_cached=keep_cached, t0=t0)
    finally:
        _BUFFERS.give(chunk_size)


def _copy_small(fd: int, st: os.stat_result, entry: ClipEntry, staging: Path, final: Path,
                partial: Path, *, chunk_size: int, verify: bool, min_free: int,
                progress: Progress | None, should_stop: ShouldStop | None, t0: float
                ) -> CopyResult:
    """A clip of at most :data:`SMALL_FILE` bytes: the same contract as :func:`_copy_fresh`
    (read once through SHA-256, durable, read back from the disk and compared, renamed,
    folder synced) with one thread instead of three. The reader thread stays, so a source
    that stalls still ends in ``RecorderGone`` after ``STALL_SECONDS``; the write is
    buffered, synced, its pages dropped and read back in this thread (a recorder of 20 000
    small clips spent more CPU starting threads and mapping buffers than copying)."""
    what = entry.safe_name
    reader = _Reader(fd, st.st_size, min(chunk_size, -(-max(st.st_size, 1) // ALIGN) * ALIGN))
    out: _StagedFile | None = None
    try:
        out = _open_partial(staging, partial, st.st_size + min_free, False, what)
        reader.start()
        done, extra, st_after = _pump(reader, out, None, what, progress, should_stop)
        _check_complete(done, extra, st, st_after, what)
        os.fsync(out.fd)
        sha = reader.hasher.hexdigest()
        if verify:
            back_size, back_sha = _read_back_small(partial, done)
            if (back_size, back_sha) != (done, sha):
                raise _mismatch(what, back_size, back_sha, sha)
        _publish(out, partial, final, staging)
        out = None
    except BaseException as exc:
        _abandon(fd, reader, None, out, partial)
        if isinstance(exc, OSError):
            raise _staging_error(exc, what) from exc
        raise
    return _staged(reader, what, done, sha, final, t0)


def _copy_fresh(fd: int, st: os.stat_result, entry: ClipEntry, staging: Path, final: Path,
                partial: Path, *, chunk_size: int, verify: bool, min_free: int,
                progress: Progress | None, should_stop: ShouldStop | None, direct_io: bool,
                keep_cached: bool, t0: float) -> CopyResult:
    """The copy proper (``fd``: the opened source, owned from here on)."""
    what = entry.safe_name
    reader = _Reader(fd, st.st_size, chunk_size)
    syncer: _Syncer | None = None
    out: _StagedFile | None = None
    try:
        out = _open_partial(staging, partial, st.st_size + min_free, direct_io, what)
        syncer = _Syncer(out.fd, partial, chunk_size, verify, direct_io and not keep_cached)
        syncer.start()
        reader.start()
        done, extra, st_after = _pump(reader, out, syncer, what, progress, should_stop)
        _check_complete(done, extra, st, st_after, what)
        syncer.advance(done, final=True)
        syncer.join()
        if syncer.error is not None:
            raise _staging_error(syncer.error, what)
        sha = reader.hasher.hexdigest()
        if verify and (syncer.verified != done or syncer.hasher.hexdigest() != sha):
            raise _mismatch(what, syncer.verified, syncer.hasher.hexdigest(), sha)
        _publish(out, partial, final, staging)
        out = None
    except BaseException as exc:
        _abandon(fd, reader, syncer, out, partial)
        if isinstance(exc, OSError):
            raise _staging_error(exc, what) from exc
        raise
    return _staged(reader, what, done, sha, final, t0)


def _open_partial(staging: Path, partial: Path, need: int, direct: bool, what: str
                  ) -> _StagedFile:
    """The ``.partial`` to write, once staging has ``need`` bytes free (a stale one goes)."""
    _check_free(staging, need, what)
    partial.unlink(missing_ok=True)
    try:
        return _StagedFile(partial, direct)
    except OSError as exc:
        raise _staging_error(exc, what) from exc


def _mismatch(what: str, back_size: int, back_sha: str, sha: str) -> CopyError:
    return CopyError(f"{what}: staged bytes do not match the recorder's (read back "
                     f"{back_size} bytes, sha256 {back_sha[:16]}.., source {sha[:16]}..)")


def _publish(out: _StagedFile, partial: Path, final: Path, staging: Path) -> None:
    """The verified partial becomes the staged copy, durably (the folder synced)."""
    os.close(out.fd)
    os.rename(partial, final)
    _fsync_dir(staging)


def _abandon(fd: int, reader: _Reader, syncer: _Syncer | None, out: _StagedFile | None,
             partial: Path) -> None:
    """A copy failed: stop its threads, close what is open, remove the partial."""
    if reader.ident is None:
        os.close(fd)
    else:
        reader.cancel()
    if syncer is not None and syncer.is_alive():
        syncer.abort()
    if out is not None:
        os.close(out.fd)
    partial.unlink(missing_ok=True)


def _staged(reader: _Reader, what: str, done: int, sha: str, final: Path, t0: float
            ) -> CopyResult:
    reader.join()
    seconds = time.monotonic() - t0
    log.debug("%s: staged %d bytes in %.2f s, sha256 %s", what, done, seconds, sha)
    return CopyResult(size=done, sha256=sha, staged_path=final, seconds=seconds)
