"""copy_clip / hash_file / clean_stale_partials on real files in a temporary recorder tree."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from dockd.errors import CopyError, HostileName, RecorderGone, StagingFull
from dockd.ingest import offload
from dockd.ingest.offload import clean_stale_partials, copy_clip, hash_file
from dockd.model import ClipEntry

CHUNK = 64 * 1024
NAME = "ZFY001_100234_20240301083000_0001.MP4"


def make_clip(root: Path, size: int = 1024 * 1024, name: str = NAME) -> tuple[ClipEntry, bytes]:
    data = os.urandom(size)
    path = root / "DCIM" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    st = path.stat()
    return ClipEntry(rel_path=f"DCIM/{name}", safe_name=name, size=st.st_size,
                     mtime=st.st_mtime), data


@pytest.fixture()
def rec(tmp_path: Path) -> Path:
    return tmp_path / "rec"


@pytest.fixture()
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


def staged_files(staging: Path) -> list[str]:
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


@pytest.mark.parametrize("direct_io", [True, False])
def test_copy_hashes_and_stages(rec: Path, staging: Path, direct_io: bool) -> None:
    entry, data = make_clip(rec, 1024 * 1024 + 123)  # unaligned tail
    seen: list[int] = []
    res = copy_clip(rec, entry, staging, chunk_size=CHUNK, progress=seen.append,
                    direct_io=direct_io)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.size == len(data)
    assert res.staged_path == staging.resolve() / NAME
    assert res.staged_path.read_bytes() == data
    assert res.seconds >= 0
    assert seen == sorted(seen) and seen[-1] == len(data) and len(seen) == 17
    assert staged_files(staging) == [NAME]
    assert hash_file(res.staged_path, 4096) == (len(data), res.sha256)
    # the recorder is untouched
    assert (rec / entry.rel_path).read_bytes() == data


def test_empty_clip(rec: Path, staging: Path) -> None:
    entry, _ = make_clip(rec, 0)
    res = copy_clip(rec, entry, staging)
    assert (res.size, res.sha256) == (0, hashlib.sha256(b"").hexdigest())


def test_truncated_mid_copy_is_recorder_gone(rec: Path, staging: Path) -> None:
    entry, _ = make_clip(rec)
    src = rec / entry.rel_path

    def shrink(done: int) -> None:
        if done == CHUNK:
            os.truncate(src, 100)

    with pytest.raises(RecorderGone, match="ended after|changed size"):
        copy_clip(rec, entry, staging, chunk_size=CHUNK, progress=shrink)
    assert staged_files(staging) == []


def test_deleted_and_replaced_mid_copy_is_recorder_gone(rec: Path, staging: Path) -> None:
    entry, _ = make_clip(rec)
    src = rec / entry.rel_path

    def swap(done: int) -> None:
        if done == CHUNK:
            src.unlink()
            src.write_bytes(b"short")

    with pytest.raises(RecorderGone, match="deleted"):
        copy_clip(rec, entry, staging, chunk_size=CHUNK, progress=swap)
    assert staged_files(staging) == []


def test_vanished_before_copy(rec: Path, staging: Path) -> None:
    entry, _ = make_clip(rec)
    (rec / entry.rel_path).unlink()
    with pytest.raises(RecorderGone):
        copy_clip(rec, entry, staging)
    assert staged_files(staging) == []


def test_eio_mid_copy_is_recorder_gone(rec: Path, staging: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    entry, _ = make_clip(rec)
    real_readv = os.readv
    calls = []

    def failing_readv(fd: int, buffers: list) -> int:
        calls.append(fd)
        if len(calls) == 5:
            raise OSError(errno.EIO, "Input/output error")
        return real_readv(fd, buffers)

    monkeypatch.setattr(offload.os, "readv", failing_readv)
    with pytest.raises(RecorderGone, match="Input/output error"):
        copy_clip(rec, entry, staging, chunk_size=CHUNK)
    assert staged_files(staging) == []


def test_enospc_mid_copy_is_staging_full(rec: Path, staging: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    entry, _ = make_clip(rec)
    real_write = os.write
    written = []

    def full_write(fd: int, data) -> int:
        written.append(len(data))
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(offload.os, "write", full_write)
    with pytest.raises(StagingFull):
        copy_clip(rec, entry, staging, chunk_size=CHUNK)
    assert staged_files(staging) == []


def test_min_free_not_met_is_staging_full(rec: Path, staging: Path) -> None:
    entry, _ = make_clip(rec)
    with pytest.raises(StagingFull, match="free"):
        copy_clip(rec, entry, staging, min_free=1 << 60)
    assert staged_files(staging) == []
    assert StagingFull.retry is True


@pytest.mark.parametrize("direct_io", [True, False])
def test_bad_write_detected_by_verify(rec: Path, staging: Path, direct_io: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    entry, _ = make_clip(rec)
    real_preadv = os.preadv

    def corrupting_preadv(fd: int, buffers: list, offset: int) -> int:
        n = real_preadv(fd, buffers, offset)
        if offset == 0 and n:
            buffers[0][0] ^= 0xFF  # the disk gave back something else
        return n

    monkeypatch.setattr(offload.os, "preadv", corrupting_preadv)
    with pytest.raises(CopyError, match="do not match"):
        copy_clip(rec, entry, staging, chunk_size=CHUNK, direct_io=direct_io)
    assert staged_files(staging) == []


def test_should_stop_removes_partial(rec: Path, staging: Path) -> None:
    entry, _ = make_clip(rec)
    seen: list[int] = []
    with pytest.raises(CopyError, match="stopped"):
        copy_clip(rec, entry, staging, chunk_size=CHUNK, progress=seen.append,
                  should_stop=lambda: len(seen) >= 3)
    assert len(seen) == 3
    assert staged_files(staging) == []


def test_resume_with_identical_staged_file(rec: Path, staging: Path) -> None:
    entry, data = make_clip(rec)
    first = copy_clip(rec, entry, staging, chunk_size=CHUNK)
    before = first.staged_path.stat()
    (staging / (NAME + ".partial")).write_bytes(b"left by a crash")
    seen: list[int] = []
    again = copy_clip(rec, entry, staging, chunk_size=CHUNK, progress=seen.append)
    assert again.sha256 == first.sha256 and again.size == len(data)
    assert seen == []  # nothing copied
    after = again.staged_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_differing_staged_file_is_replaced(rec: Path, staging: Path) -> None:
    entry, data = make_clip(rec)
    staging.mkdir()
    (staging / NAME).write_bytes(b"\0" * len(data))  # same size, other bytes
    res = copy_clip(rec, entry, staging, chunk_size=CHUNK)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert (staging / NAME).read_bytes() == data
    (staging / NAME).write_bytes(b"short")
    assert copy_clip(rec, entry, staging).sha256 == res.sha256
    assert staged_files(staging) == [NAME]


def test_symlink_or_fifo_swapped_in_after_scan(rec: Path, staging: Path,
                                               tmp_path: Path) -> None:
    entry, _ = make_clip(rec)
    src = rec / entry.rel_path
    src.unlink()
    (tmp_path / "outside").write_bytes(b"x")
    src.symlink_to(tmp_path / "outside")
    with pytest.raises(HostileName):
        copy_clip(rec, entry, staging)
    src.unlink()
    os.mkfifo(src)
    t = time.monotonic()
    with pytest.raises(HostileName, match="not a regular file"):
        copy_clip(rec, entry, staging)
    assert time.monotonic() - t < 5
    assert staged_files(staging) == []


def test_folder_symlink_in_path_is_refused(rec: Path, staging: Path, tmp_path: Path) -> None:
    entry, _ = make_clip(tmp_path / "elsewhere")
    rec.mkdir()
    (rec / "DCIM").symlink_to(tmp_path / "elsewhere" / "DCIM")
    with pytest.raises(HostileName):
        copy_clip(rec, entry, staging)


@pytest.mark.parametrize("rel,safe", [("../x.MP4", "x.MP4"), ("DCIM/x.MP4", "../x.MP4"),
                                      ("DCIM/x.MP4", ".."), ("/etc/passwd", "p"),
                                      ("DCIM/x.MP4", "x.MP4.partial")])
def test_unsafe_names_refused(rec: Path, staging: Path, rel: str, safe: str) -> None:
    make_clip(rec, 10, "x.MP4")
    with pytest.raises(HostileName):
        copy_clip(rec, ClipEntry(rel_path=rel, safe_name=safe, size=10, mtime=0), staging)


def test_clean_stale_partials(staging: Path) -> None:
    (staging / "a" / "b").mkdir(parents=True)
    keep = [staging / "x.MP4", staging / "a" / "partial.MP4"]
    stale = [staging / "x.MP4.partial", staging / "a" / "b" / "y.partial"]
    for p in keep + stale:
        p.write_bytes(b"1")
    assert clean_stale_partials(staging) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert clean_stale_partials(staging / "missing") == []


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat(rec: Path, staging: Path) -> None:
    size = 200 * 1024 * 1024
    src = rec / "DCIM" / NAME
    src.parent.mkdir(parents=True)
    with open(src, "wb") as f:
        f.truncate(size)  # sparse: cheap to read
    entry = ClipEntry(rel_path=f"DCIM/{NAME}", safe_name=NAME, size=size, mtime=0)
    base = _rss()
    peak = [base]
    lock = threading.Lock()

    def sample(_done: int) -> None:
        with lock:
            peak[0] = max(peak[0], _rss())

    res = copy_clip(rec, entry, staging, progress=sample)
    assert res.size == size
    zeros, h = bytes(1024 * 1024), hashlib.sha256()
    for _ in range(200):
        h.update(zeros)
    assert res.sha256 == h.hexdigest()
    assert peak[0] - base < 48 * 1024 * 1024
