"""The copy engine's read-back can leave the verified staged copy in the page cache
(``keep_cached``: a delivery reads it from memory, not from the staging disk a second
time), copies share one buffer budget, and the engine's source
pacer (``pace_sources``, the simulated USB bus of ``bench/dock.py``) neither changes the
bytes nor keeps a stopped copy waiting."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockd.errors import CopyError
from dockd.ingest import offload, pacing
from dockd.ingest.offload import copy_clip, pace_sources
from dockd.model import ClipEntry

NAME = "ZFY001_100234_20240301083000_0001.MP4"
MIB = 1024 * 1024


def make_clip(root: Path, size: int) -> tuple[ClipEntry, bytes]:
    data = os.urandom(size)
    path = root / "DCIM" / NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    st = path.stat()
    return ClipEntry(rel_path=f"DCIM/{NAME}", safe_name=NAME, size=st.st_size,
                     mtime=st.st_mtime), data


def resident_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True, timeout=30)
    return int(out.stdout.split()[0])


def direct_io_works(where: Path) -> bool:
    try:
        fd = os.open(where / ".probe", os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0))
    except OSError:
        return False
    os.close(fd)
    os.unlink(where / ".probe")
    return hasattr(os, "O_DIRECT")


@pytest.fixture()
def unpaced() -> Iterator[None]:
    yield
    pace_sources(None)


@pytest.mark.skipif(shutil.which("fincore") is None, reason="fincore (util-linux) missing")
def test_verified_copy_stays_cached_and_o_direct_read_back_does_not(tmp_path: Path) -> None:
    if not direct_io_works(tmp_path):
        pytest.skip("no O_DIRECT here (tmpfs?): every read-back is cached anyway")
    entry, data = make_clip(tmp_path / "rec", 4 * MIB + 123)
    res = copy_clip(tmp_path / "rec", entry, tmp_path / "staging", chunk_size=256 * 1024,
                    keep_cached=True)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    # the read-back went through the page cache: a delivery reads memory, not the disk
    assert resident_bytes(res.staged_path) >= len(data) - 4096
    other = copy_clip(tmp_path / "rec", entry, tmp_path / "staging2", chunk_size=256 * 1024)
    assert other.sha256 == res.sha256
    assert resident_bytes(other.staged_path) < MIB  # default: O_DIRECT write and read-back


def test_cached_read_back_still_catches_a_bad_write(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeping the pages does not mean trusting them: the read-back drops each range first
    and re-reads it, so a write the disk did not keep is found."""
    entry, _ = make_clip(tmp_path / "rec", 2 * MIB)
    real_preadv = os.preadv

    def corrupting_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        n = real_preadv(fd, buffers, offset)
        if offset == 0 and n:
            buffers[0][0] ^= 0xFF
        return n

    monkeypatch.setattr(offload.os, "preadv", corrupting_preadv)
    with pytest.raises(CopyError, match="do not match"):
        copy_clip(tmp_path / "rec", entry, tmp_path / "staging", chunk_size=256 * 1024,
                  keep_cached=True)
    assert not any((tmp_path / "staging").iterdir())


def test_paced_copy_is_byte_identical(tmp_path: Path, unpaced: None) -> None:
    entry, data = make_clip(tmp_path / "rec", MIB + 77)
    pace_sources(64 * MIB)  # fast enough for a test; the bytes must not change
    seen: list[int] = []
    res = copy_clip(tmp_path / "rec", entry, tmp_path / "staging", chunk_size=128 * 1024,
                    progress=seen.append)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.staged_path.read_bytes() == data
    assert seen[-1] == len(data) and seen == sorted(seen)


def test_paced_copy_stops_at_once_when_asked(tmp_path: Path, unpaced: None) -> None:
    """A slow bus must not hold a stopped copy: at 1 byte/s the reader waits on its cancel
    event, not in a sleep, so the stop returns and the partial is removed."""
    entry, _ = make_clip(tmp_path / "rec", MIB)
    pace_sources(1)
    progressed: list[int] = []
    with pytest.raises(CopyError, match="stopped"):
        copy_clip(tmp_path / "rec", entry, tmp_path / "staging", chunk_size=64 * 1024,
                  progress=progressed.append, should_stop=lambda: True)
    assert not any((tmp_path / "staging").iterdir())
    assert not [t for t in threading.enumerate() if t.name == "dockd-offload-read"]


def test_pace_sources_refuses_a_negative_rate(unpaced: None) -> None:
    with pytest.raises(ValueError, match="negative"):
        pace_sources(-1)
    pace_sources(0)
    assert pacing.source_rate() == 0.0


def test_buffer_budget_shrinks_chunks_as_copies_pile_up() -> None:
    """25 ports copying at once share one budget: later copies get smaller chunks (never
    below MIN_CHUNK, never blocked), so buffer memory stays flat in the number of ports."""
    nbuf = offload.READ_BUFFERS + offload.VERIFY_BUFFERS
    budget = pacing.BufferBudget(nbuf, offload.ALIGN)
    chunks = [budget.take(4 * MIB) for _ in range(25)]
    assert chunks[0] == 4 * MIB
    assert chunks == sorted(chunks, reverse=True) and chunks[-1] == pacing.MIN_CHUNK
    assert all(c % offload.ALIGN == 0 for c in chunks)
    assert budget.used == nbuf * sum(chunks)
    assert budget.used <= pacing.BUFFER_BUDGET + 25 * nbuf * pacing.MIN_CHUNK
    assert budget.take(64 * 1024) == 64 * 1024  # a small ask is never raised
    for c in chunks + [64 * 1024]:
        budget.give(c)
    assert budget.used == 0
    assert budget.take(4 * MIB) == 4 * MIB


def test_copies_give_their_buffers_back(tmp_path: Path) -> None:
    entry, _ = make_clip(tmp_path / "rec", MIB)
    before = offload._BUFFERS.used
    copy_clip(tmp_path / "rec", entry, tmp_path / "staging", chunk_size=256 * 1024)
    with pytest.raises(CopyError, match="stopped"):
        copy_clip(tmp_path / "rec", entry, tmp_path / "staging2", chunk_size=256 * 1024,
                  should_stop=lambda: True)
    assert offload._BUFFERS.used == before
