"""Chain of custody (R4, R7, R8): signed manifest revisions (labels, retention) and the
delivery bookkeeping of revisions and audit segments on each target.

Write functions take the caller's connection and join its transaction; reads take any
:class:`~dockd.store.readonly.Reader`."""

from __future__ import annotations

import sqlite3
from typing import Any, cast

from .readonly import Reader
from .rows import RevisionRow

# the custody documents' delivery tables: kind -> (table, id column)
DELIVERY_TABLES = {
    "revision": ("revision_deliveries", "revision_id"),
    "segment": ("audit_segment_deliveries", "segment_id"),
}

# --------------------------------------------------------------------------- dockings, clips


def signed_docking(r: Reader, docking_id: int) -> dict[str, Any] | None:
    """(id, state, sha256, prefix) of a docking with its manifest's hash (None: unsigned)."""
    return r.query_one("SELECT k.id, k.state, m.sha256, m.prefix FROM dockings k LEFT JOIN "
                       "manifests m ON m.docking_id = k.id WHERE k.id = ?", (docking_id,))


def docking_with_manifest(r: Reader, docking_id: int) -> dict[str, Any] | None:
    """A signed docking's row with its manifest (manifest_sha256, mprefix, manifest,
    signature, key_id); None when unknown or unsigned."""
    return r.query_one("SELECT k.*, m.sha256 AS manifest_sha256, m.prefix AS mprefix, "
                       "m.manifest, m.signature, m.key_id FROM dockings k JOIN manifests m "
                       "ON m.docking_id = k.id WHERE k.id = ?", (docking_id,))


_CLIP_RETENTION_SQL = (
    "SELECT c.id, c.safe_name, c.retention_class, k.docked_at FROM clips c JOIN dockings k "
    "ON k.id = c.first_docking_id WHERE c.docking_id = ? ORDER BY c.safe_name")


def clips_with_retention(r: Reader, docking_id: int) -> list[dict[str, Any]]:
    """A docking's clips (id, safe_name, retention_class, and the docked_at of the docking
    that first copied each: retention counts from then), by name."""
    return r.query(_CLIP_RETENTION_SQL, (docking_id,))


def clips_with_retention_in(conn: sqlite3.Connection, docking_id: int) -> list[dict[str, Any]]:
    """:func:`clips_with_retention` inside the caller's transaction."""
    return [dict(row) for row in conn.execute(_CLIP_RETENTION_SQL, (docking_id,)).fetchall()]


def set_retention_class(conn: sqlite3.Connection, clip_id: int, retention_class: str) -> None:
    conn.execute("UPDATE clips SET retention_class = ? WHERE id = ?", (retention_class, clip_id))


def delivered_clip_keys(r: Reader, docking_id: int, target: str) -> list[dict[str, Any]]:
    """(key, retention_class, docked_at) of the docking's clips verified on ``target``."""
    return r.query(
        "SELECT dl.key, c.retention_class, k.docked_at FROM deliveries dl "
        "JOIN clips c ON c.id = dl.clip_id JOIN dockings k ON k.id = c.first_docking_id "
        "WHERE c.docking_id = ? AND dl.target = ? AND dl.state = 'delivered'",
        (docking_id, target))


def delivered_manifest_prefix(r: Reader, docking_id: int, target: str) -> str | None:
    """Where the docking's manifest lies on ``target`` (None: not delivered there)."""
    row = r.query_one("SELECT m.prefix FROM manifests m JOIN manifest_deliveries md ON "
                      "md.manifest_id = m.id WHERE m.docking_id = ? AND md.target = ? AND "
                      "md.state = 'delivered'", (docking_id, target))
    return row["prefix"] if row is not None else None


# --------------------------------------------------------------------------- revisions


def newest_revision_in(conn: sqlite3.Connection, docking_id: int) -> dict[str, Any] | None:
    """(seq, sha256) of the docking's newest revision, inside the caller's transaction."""
    row = conn.execute("SELECT seq, sha256 FROM revisions WHERE docking_id = ? ORDER BY seq "
                       "DESC LIMIT 1", (docking_id,)).fetchone()
    return dict(row) if row is not None else None


def insert_revision(conn: sqlite3.Connection, *, docking_id: int, seq: int, sha256: str,
                    prev_sha256: str | None, manifest_sha256: str, key_id: str, prefix: str,
                    kind: str, actor: str, created_at: str, document: bytes, signature: bytes,
                    targets: list[str]) -> int:
    """Store a signed revision, pending on each target; its id."""
    cur = conn.execute(
        "INSERT INTO revisions (docking_id, seq, sha256, prev_sha256, manifest_sha256, key_id, "
        "prefix, kind, actor, created_at, document, signature) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (docking_id, seq, sha256, prev_sha256, manifest_sha256, key_id, prefix, kind, actor,
         created_at, document, signature))
    rev_id = int(cur.lastrowid or 0)
    for t in targets:
        conn.execute("INSERT OR IGNORE INTO revision_deliveries (revision_id, target, state) "
                     "VALUES (?, ?, 'pending')", (rev_id, t))
    return rev_id


def revisions_of(r: Reader, docking_id: int) -> list[RevisionRow]:
    """A docking's revisions in order."""
    return cast(list[RevisionRow], r.query(
        "SELECT * FROM revisions WHERE docking_id = ? ORDER BY seq", (docking_id,)))


# --------------------------------------------------------------------------- deliveries


def pending_revisions(r: Reader, now: str, *, ignore_backoff: bool) -> list[dict[str, Any]]:
    """Revisions pending on some target (due now unless ``ignore_backoff``), with the
    target, oldest docking and revision first."""
    due = "" if ignore_backoff else "AND (rd.next_try_at IS NULL OR rd.next_try_at <= :now)"
    return r.query(
        "SELECT r.id, r.docking_id, r.prefix, r.seq, r.kind, r.document, r.signature, "
        "r.key_id, rd.target FROM revision_deliveries rd JOIN revisions r "
        f"ON r.id = rd.revision_id WHERE rd.state = 'pending' {due} "
        "ORDER BY r.docking_id, r.seq", {"now": now})


def pending_segments(r: Reader, now: str, *, ignore_backoff: bool) -> list[dict[str, Any]]:
    """Audit segments pending on some target (due now unless ``ignore_backoff``)."""
    due = "" if ignore_backoff else "AND (sd.next_try_at IS NULL OR sd.next_try_at <= :now)"
    return r.query(
        "SELECT s.id, s.dock_id, s.first_id, s.last_id, s.body, s.signature, sd.target "
        "FROM audit_segment_deliveries sd JOIN audit_segments s ON s.id = sd.segment_id "
        f"WHERE sd.state = 'pending' {due} ORDER BY s.id", {"now": now})


def mark_delivered(conn: sqlite3.Connection, kind: str, ident: int, target: str,
                   now: str) -> None:
    """A revision or segment (``kind``) is on ``target``."""
    table, idcol = DELIVERY_TABLES[kind]
    conn.execute(f"UPDATE {table} SET state = 'delivered', verified_at = ?, last_error = NULL "
                 f"WHERE {idcol} = ? AND target = ?", (now, ident, target))


def attempts_of(conn: sqlite3.Connection, kind: str, ident: int, target: str) -> int:
    """How many times a revision or segment was tried on ``target``."""
    table, idcol = DELIVERY_TABLES[kind]
    row = conn.execute(f"SELECT attempts FROM {table} WHERE {idcol} = ? AND target = ?",
                       (ident, target)).fetchone()
    return int(row[0] or 0) if row is not None else 0


def record_failure(conn: sqlite3.Connection, kind: str, ident: int, target: str, *,
                   attempts: int, error: str, retry: bool, next_try_at: str | None) -> None:
    """A failed attempt: pending again from ``next_try_at``, or failed for good."""
    table, idcol = DELIVERY_TABLES[kind]
    conn.execute(f"UPDATE {table} SET attempts = ?, last_error = ?, state = ?, "
                 f"next_try_at = ? WHERE {idcol} = ? AND target = ?",
                 (attempts, error, "pending" if retry else "failed", next_try_at, ident,
                  target))


def undelivered_count(r: Reader) -> int:
    """Revision and segment deliveries not done yet, over all targets."""
    row = r.query_one("SELECT (SELECT count(*) FROM revision_deliveries WHERE state != "
                      "'delivered') + (SELECT count(*) FROM audit_segment_deliveries WHERE "
                      "state != 'delivered') AS n")
    return int(row["n"]) if row else 0
