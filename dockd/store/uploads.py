"""The S3 target's upload journal: multipart uploads that must survive a killed daemon.

A multipart upload of a large clip takes minutes; the dock may lose power half-way. The
journal remembers, per ``(bucket, key, sha256)``, the upload id, the part size and every
part the server acknowledged (number, size, ETag, SHA-256), committed to SQLite after each
part, so a restarted daemon asks the server (``ListParts``) what it still holds and sends
only what is missing. After ``CompleteMultipartUpload`` the journal keeps the object's
*composite* checksum (SHA-256 of the parts' digests, what S3 reports for multipart
objects), which ``S3Target.verify`` compares in ``checksum`` mode: the whole-file SHA-256
cannot be compared with a composite without re-reading the file.

One small SQLite file per target under the state directory (``s3-uploads/<target>.db``,
WAL, one connection guarded by a lock: upload workers share the target).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    part_size INTEGER NOT NULL,
    started_at REAL NOT NULL,
    PRIMARY KEY (bucket, key, sha256)
);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
CREATE TABLE IF NOT EXISTS completed (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    composite TEXT NOT NULL,
    parts INTEGER NOT NULL,
    completed_at REAL NOT NULL,
    PRIMARY KEY (bucket, key, sha256)
);
"""


@dataclass(frozen=True)
class PendingUpload:
    bucket: str
    key: str
    sha256: str
    upload_id: str
    size: int
    part_size: int


@dataclass(frozen=True)
class JournalPart:
    part_number: int
    size: int
    etag: str
    sha256: str
    """Hex SHA-256 of the part's bytes, as computed by dockd from the source."""


class UploadJournal:
    """Durable record of in-flight and completed multipart uploads (thread-safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ in-flight uploads

    def pending(self, bucket: str, key: str) -> list[PendingUpload]:
        """Every unfinished upload journalled for ``key`` (any source content)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT bucket, key, sha256, upload_id, size, part_size FROM uploads "
                "WHERE bucket = ? AND key = ? ORDER BY started_at", (bucket, key)).fetchall()
        return [PendingUpload(*row) for row in rows]

    def all_pending(self) -> list[PendingUpload]:
        with self._lock:
            rows = self._db.execute(
                "SELECT bucket, key, sha256, upload_id, size, part_size FROM uploads "
                "ORDER BY started_at").fetchall()
        return [PendingUpload(*row) for row in rows]

    def start(self, up: PendingUpload) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)",
                (up.bucket, up.key, up.sha256, up.upload_id, up.size, up.part_size, time.time()))

    def parts(self, upload_id: str) -> dict[int, JournalPart]:
        with self._lock:
            rows = self._db.execute(
                "SELECT part_number, size, etag, sha256 FROM parts WHERE upload_id = ?",
                (upload_id,)).fetchall()
        return {row[0]: JournalPart(*row) for row in rows}

    def add_part(self, upload_id: str, part: JournalPart) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
                             (upload_id, part.part_number, part.size, part.etag, part.sha256))

    def forget(self, upload_id: str) -> None:
        """Drop an upload (aborted, vanished on the server, or completed)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
            self._db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))

    # ------------------------------------------------------------------ completed objects

    def complete(self, up: PendingUpload, composite: str, parts: int) -> None:
        """Record the finished object's composite checksum and forget the upload."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO completed VALUES (?, ?, ?, ?, ?, ?)",
                (up.bucket, up.key, up.sha256, composite, parts, time.time()))
            self._db.execute("DELETE FROM parts WHERE upload_id = ?", (up.upload_id,))
            self._db.execute("DELETE FROM uploads WHERE upload_id = ?", (up.upload_id,))

    def composite(self, bucket: str, key: str, sha256: str) -> tuple[str, int] | None:
        """(base64 composite SHA-256, number of parts) of a completed upload, if known."""
        with self._lock:
            row = self._db.execute(
                "SELECT composite, parts FROM completed WHERE bucket = ? AND key = ? "
                "AND sha256 = ?", (bucket, key, sha256)).fetchone()
        return (row[0], row[1]) if row else None
