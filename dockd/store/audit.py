"""The audit trail's reads and its signed segments (R8).

Entries are appended by :meth:`dockd.store.db.State.audit` (hash-chained, inside the
caller's transaction); this module reads them back for checking and export, and keeps
the segments: runs of entries signed together and delivered to the targets.
"""

from __future__ import annotations

import sqlite3
from typing import Any, cast

from .readonly import Reader
from .rows import AuditRow, AuditSegmentRow


def entries_after(r: Reader, after_id: int = 0, limit: int = -1) -> list[AuditRow]:
    """Entries with an id above ``after_id``, in id order, at most ``limit`` (-1: all)."""
    return cast(list[AuditRow], r.query("SELECT * FROM audit WHERE id > ? ORDER BY id LIMIT ?",
                                        (after_id, limit)))


def entries_as_stored(r: Reader) -> list[AuditRow]:
    """Every entry in the order the database stores them (rowid): renumbering shows."""
    return cast(list[AuditRow], r.query("SELECT * FROM audit ORDER BY rowid"))


def newest_entry(r: Reader) -> dict[str, Any] | None:
    """``{"id", "hash"}`` of the newest entry, or None for an empty trail."""
    return r.query_one("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")


def has_entry(r: Reader, action: str, subject: str) -> bool:
    """Whether an entry with this action and subject exists."""
    return r.query_one("SELECT 1 AS x FROM audit WHERE action = ? AND subject = ? LIMIT 1",
                       (action, subject)) is not None


# --------------------------------------------------------------------------- segments


def segment_heads(r: Reader) -> list[AuditSegmentRow]:
    """Every segment (id, first_id, last_id, body), oldest last entry first."""
    return cast(list[AuditSegmentRow], r.query(
        "SELECT id, first_id, last_id, body FROM audit_segments ORDER BY last_id"))


def last_segment_at(r: Reader) -> str | None:
    """When the newest segment was cut (ISO text), None before the first."""
    row = r.query_one("SELECT max(created_at) AS t FROM audit_segments")
    return row["t"] if row else None


def last_segmented_id(conn: sqlite3.Connection) -> int:
    """The id of the newest entry already in a segment (0: none), inside ``conn``."""
    row = conn.execute("SELECT max(last_id) FROM audit_segments").fetchone()
    return int(row[0] or 0)


def insert_segment(conn: sqlite3.Connection, *, dock_id: str, first_id: int, last_id: int,
                   sha256: str, created_at: str, body: bytes, signature: bytes,
                   targets: list[str]) -> int:
    """Store a signed segment, pending on each target, in the caller's transaction; its id."""
    cur = conn.execute(
        "INSERT INTO audit_segments (dock_id, first_id, last_id, sha256, created_at, body, "
        "signature) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (dock_id, first_id, last_id, sha256, created_at, body, signature))
    seg_id = int(cur.lastrowid or 0)
    for t in targets:
        conn.execute("INSERT OR IGNORE INTO audit_segment_deliveries (segment_id, target, "
                     "state) VALUES (?, ?, 'pending')", (seg_id, t))
    return seg_id
