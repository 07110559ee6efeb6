"""Deliveries: the SQL of the delivery stage (clip copies and manifests per target).

Read functions take the :class:`State`; write functions take the caller's connection and
join its transaction (``with state.tx() as conn:``), so a landed copy, its audit entry and
the clip's state change commit together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Literal, cast

from .db import State
from .rows import DueClipRow, DueManifestRow, LandedClipRow, ReadyClipRow, WhoRow

Table = Literal["deliveries", "manifest_deliveries"]
_ID_COLUMN: dict[str, str] = {"deliveries": "clip_id", "manifest_deliveries": "manifest_id"}


# --------------------------------------------------------------------------- selection

def due_clips(state: State, target: str, now: str, *, ignore_backoff: bool = False
              ) -> list[DueClipRow]:
    """Copies of ready clips (``checked`` or ``signed``) still to send to ``target``,
    earliest deadline first; without ``ignore_backoff`` only those whose backoff is over."""
    due = "" if ignore_backoff else "AND (d.next_try_at IS NULL OR d.next_try_at <= :now)"
    rows = state.query(
        "SELECT d.clip_id, d.target, d.key, c.staged_path, c.sha256, c.size, c.docking_id, "
        "c.safe_name, c.retention_class, k.docked_at FROM deliveries d "
        "JOIN clips c ON c.id = d.clip_id JOIN dockings k ON k.id = c.first_docking_id "
        "WHERE d.target = :target AND d.state = 'pending' AND c.state IN ('checked', 'signed') "
        f"{due} ORDER BY c.deadline_at, c.id", {"now": now, "target": target})
    return cast(list[DueClipRow], rows)


def due_manifests(state: State, target: str, now: str, *, ignore_backoff: bool = False
                  ) -> list[DueManifestRow]:
    """Signed manifests still to send to ``target`` whose clips are all on it (the manifest
    is the docking's commit marker: it goes last), oldest first."""
    due = "" if ignore_backoff else "AND (md.next_try_at IS NULL OR md.next_try_at <= :now)"
    rows = state.query(
        "SELECT m.id, m.docking_id, m.prefix, m.manifest, m.signature, m.key_id, md.target "
        "FROM manifest_deliveries md JOIN manifests m ON m.id = md.manifest_id "
        f"WHERE md.target = :target AND md.state = 'pending' {due} AND NOT EXISTS ("
        "SELECT 1 FROM deliveries dl JOIN clips c ON c.id = dl.clip_id WHERE "
        "c.docking_id = m.docking_id AND dl.target = md.target AND dl.state != 'delivered') "
        "ORDER BY m.id", {"now": now, "target": target})
    return cast(list[DueManifestRow], rows)


def ready_without_delivery(state: State, targets: Collection[str]) -> list[ReadyClipRow]:
    """Checked clips (hash, probe and date known) that lack a delivery row for one of
    ``targets``: the delivery stage adds those rows as it first sees the clip ready."""
    names = sorted(targets)
    if not names:
        return []
    marks = ", ".join("?" for _ in names)
    rows = state.query(
        "SELECT c.id, c.docking_id, c.safe_name FROM clips c WHERE c.state = 'checked' AND "
        "c.sha256 IS NOT NULL AND c.staged_path IS NOT NULL AND "
        f"(SELECT count(*) FROM deliveries d WHERE d.clip_id = c.id AND d.target IN ({marks}))"
        f" < ? ORDER BY c.docking_id, c.id", (*names, len(names)))
    return cast(list[ReadyClipRow], rows)


def add_pending(conn: sqlite3.Connection, clip_id: int, target: str, key: str) -> bool:
    """A pending delivery of ``clip_id`` to ``target`` under ``key`` (kept when one exists).
    True if it was new."""
    cur = conn.execute("INSERT OR IGNORE INTO deliveries (clip_id, target, state, key) "
                       "VALUES (?, ?, 'pending', ?)", (clip_id, target, key))
    return cur.rowcount > 0


def used_key(state: State, docking_id: int) -> str | None:
    """The key of the first copy of this docking given a place on the targets, if any."""
    row = state.query_one("SELECT d.key FROM deliveries d JOIN clips c ON c.id = d.clip_id "
                          "WHERE c.docking_id = ? AND d.key IS NOT NULL AND d.key != '' "
                          "ORDER BY d.rowid LIMIT 1", (docking_id,))
    return str(row["key"]) if row else None


def checked_starts(state: State, docking_id: int) -> list[str | None]:
    """Recording starts (UTC ISO) of the docking's checked clips."""
    return [r["start_utc"] for r in state.query(
        "SELECT start_utc FROM clips WHERE docking_id = ? AND state = 'checked'",
        (docking_id,))]


# --------------------------------------------------------------------------- landed

def delivered_targets(conn: sqlite3.Connection, clip_id: int) -> set[str]:
    return {r["target"] for r in conn.execute(
        "SELECT target FROM deliveries WHERE clip_id = ? AND state = 'delivered'", (clip_id,))}


def mark_delivered(conn: sqlite3.Connection, clip_id: int, target: str, now: str) -> None:
    conn.execute("UPDATE deliveries SET state = 'delivered', verified_at = ?, "
                 "last_error = NULL WHERE clip_id = ? AND target = ?", (now, clip_id, target))


def mark_delivered_early(conn: sqlite3.Connection, clip_id: int, target: str, key: str,
                         now: str) -> None:
    """A copy sent outside the queue (to make room in staging) is on ``target``."""
    conn.execute(
        "INSERT INTO deliveries (clip_id, target, state, key, verified_at) "
        "VALUES (?, ?, 'delivered', ?, ?) ON CONFLICT(clip_id, target) DO UPDATE "
        "SET state = 'delivered', key = excluded.key, verified_at = excluded.verified_at, "
        "last_error = NULL", (clip_id, target, key, now))


def record_transfer(conn: sqlite3.Connection, now: str, target: str, size: int,
                    seconds: float) -> None:
    conn.execute("INSERT INTO transfers (ts, target, bytes, seconds) VALUES (?, ?, ?, ?)",
                 (now, target, size, seconds))


def landed_clip(conn: sqlite3.Connection, clip_id: int) -> LandedClipRow | None:
    """The clip, its docking and the targets holding a verified copy, in one indexed read
    inside the caller's transaction (a landed copy's record); None when the clip is gone."""
    row = conn.execute(
        "SELECT c.state AS clip_state, c.docking_id, c.serial, c.staged_path, c.safe_name, "
        "k.state AS docking_state, k.port, (SELECT json_group_array(d.target) FROM "
        "deliveries d WHERE d.clip_id = c.id AND d.state = 'delivered') AS delivered_to "
        "FROM clips c JOIN dockings k ON k.id = c.docking_id WHERE c.id = ?",
        (clip_id,)).fetchone()
    return cast(LandedClipRow, dict(row)) if row is not None else None


def clip_docking(conn: sqlite3.Connection, clip_id: int) -> tuple[int, str] | None:
    """(docking id, clip state) of a clip; None when it is gone."""
    row = conn.execute("SELECT docking_id, state FROM clips WHERE id = ?", (clip_id,)).fetchone()
    return (int(row["docking_id"]), str(row["state"])) if row else None


def mark_manifest_delivered(conn: sqlite3.Connection, manifest_id: int, target: str,
                            now: str) -> None:
    conn.execute("UPDATE manifest_deliveries SET state = 'delivered', verified_at = ?, "
                 "last_error = NULL WHERE manifest_id = ? AND target = ?",
                 (now, manifest_id, target))


def manifest_targets(conn: sqlite3.Connection, manifest_id: int) -> set[str]:
    return {r["target"] for r in conn.execute(
        "SELECT target FROM manifest_deliveries WHERE manifest_id = ? AND state = 'delivered'",
        (manifest_id,))}


def docking_manifest_targets(conn: sqlite3.Connection, docking_id: int) -> set[str]:
    return {r["target"] for r in conn.execute(
        "SELECT md.target FROM manifest_deliveries md JOIN manifests m ON "
        "m.id = md.manifest_id WHERE m.docking_id = ? AND md.state = 'delivered'",
        (docking_id,))}


def count_clips(conn: sqlite3.Connection, docking_id: int, clip_state: str) -> int:
    return int(conn.execute("SELECT count(*) FROM clips WHERE docking_id = ? AND state = ?",
                            (docking_id, clip_state)).fetchone()[0])


def docking_who(conn: sqlite3.Connection, docking_id: int) -> WhoRow | None:
    row = conn.execute("SELECT state, port, serial FROM dockings WHERE id = ?",
                       (docking_id,)).fetchone()
    return cast(WhoRow, dict(row)) if row else None


def clips_with_state(conn: sqlite3.Connection, docking_id: int, clip_state: str) -> list[int]:
    return [int(r["id"]) for r in conn.execute(
        "SELECT id FROM clips WHERE docking_id = ? AND state = ? ORDER BY id",
        (docking_id, clip_state)).fetchall()]


# --------------------------------------------------------------------------- failed

def attempts_of(state: State, table: Table, ident: int, target: str) -> int:
    row = state.query_one(f"SELECT attempts FROM {table} WHERE {_ID_COLUMN[table]} = ? AND "
                          "target = ?", (ident, target))
    return int(row["attempts"]) if row else 0


def record_failure(conn: sqlite3.Connection, table: Table, ident: int, target: str, *,
                   attempts: int, error: str, next_try: str | None, retry: bool) -> None:
    conn.execute(f"UPDATE {table} SET attempts = ?, last_error = ?, next_try_at = ?, state = ? "
                 f"WHERE {_ID_COLUMN[table]} = ? AND target = ?",
                 (attempts, error, next_try, "pending" if retry else "failed", ident, target))


def who_clip(state: State, clip_id: int) -> WhoRow:
    """Port, serial and name of a clip, for log lines."""
    row = state.query_one(
        "SELECT d.port, d.serial, c.safe_name FROM clips c JOIN dockings d "
        "ON d.id = c.docking_id WHERE c.id = ?", (clip_id,))
    return cast(WhoRow, row or {"port": "?", "serial": "?", "safe_name": f"clip {clip_id}"})


def who_manifest(state: State, manifest_id: int) -> WhoRow:
    row = state.query_one(
        "SELECT d.port, d.serial, 'manifest' AS safe_name FROM manifests m JOIN "
        "dockings d ON d.id = m.docking_id WHERE m.id = ?", (manifest_id,))
    return cast(WhoRow, row or {"port": "?", "serial": "?", "safe_name": "manifest"})


# --------------------------------------------------------------------------- early / repair

def checked_clips_for_room(state: State, docking_id: int) -> list[DueClipRow]:
    """The docking's checked clips (staged), earliest deadline first, with what a put needs."""
    rows = state.query(
        "SELECT c.id AS clip_id, '' AS target, NULL AS key, c.staged_path, c.sha256, c.size, "
        "c.docking_id, c.safe_name, c.retention_class, k.docked_at FROM clips c JOIN "
        "dockings k ON k.id = c.first_docking_id WHERE c.docking_id = ? AND "
        "c.state = 'checked' ORDER BY c.deadline_at, c.id", (docking_id,))
    return cast(list[DueClipRow], rows)


def keys_of(state: State, clip_id: int) -> dict[str, str]:
    """{target: key} of a clip's deliveries."""
    return {r["target"]: r["key"] for r in state.query(
        "SELECT target, key FROM deliveries WHERE clip_id = ?", (clip_id,))}


def reset_for_repair(conn: sqlite3.Connection, clip_id: int, target: str, *, resend: bool,
                     error: str) -> None:
    """A delivered copy did not verify when re-checked: pending again (resend) or failed."""
    conn.execute(
        "UPDATE deliveries SET state = ?, verified_at = NULL, next_try_at = NULL, "
        "last_error = ? WHERE clip_id = ? AND target = ?",
        ("pending" if resend else "failed", error, clip_id, target))


def retry_failed(conn: sqlite3.Connection, target: str | None) -> int:
    """Failed deliveries (clips and manifests) of ``target`` (all when None) back to pending
    and due now; pending ones waiting out a backoff are due now too. How many were failed."""
    where, params = ("", ()) if target is None else (" AND target = ?", (target,))
    n = 0
    for table in ("deliveries", "manifest_deliveries"):
        n += conn.execute(f"UPDATE {table} SET state = 'pending', next_try_at = NULL "
                          f"WHERE state = 'failed'{where}", params).rowcount
        conn.execute(f"UPDATE {table} SET next_try_at = NULL WHERE state = 'pending'{where}",
                     params)
    return n


FAILED_COUNT_SQL = (
    "SELECT (SELECT count(*) FROM deliveries WHERE target = :t AND state = 'failed') + "
    "(SELECT count(*) FROM manifest_deliveries WHERE target = :t AND state = 'failed') AS n")
"""How many deliveries (clips and manifests) to a target failed for good: read through the
partial indexes ``deliveries_failed`` / ``manifest_deliveries_failed`` (failed rows only)."""


def failed_count_in(conn: sqlite3.Connection, target: str) -> int:
    """``failed_count`` inside the caller's transaction."""
    return int(conn.execute(FAILED_COUNT_SQL, {"t": target}).fetchone()[0])


# --------------------------------------------------------------------------- ingest check

def undelivered_of(state: State, docking_id: int) -> list[dict[str, str | None]]:
    """The docking's copies not (yet) delivered: target, last error, clip name."""
    return state.query(
        "SELECT dl.target, dl.last_error, c.safe_name FROM deliveries dl "
        "JOIN clips c ON c.id = dl.clip_id WHERE c.docking_id = ? AND "
        "dl.state != 'delivered'", (docking_id,))


def unverified_of(state: State, docking_id: int) -> list[dict[str, str | None]]:
    """Delivered copies and manifests of the docking without a verification time."""
    rows = state.query(
        "SELECT dl.target, c.safe_name FROM deliveries dl JOIN clips c ON c.id = dl.clip_id "
        "WHERE c.docking_id = ? AND dl.state = 'delivered' AND dl.verified_at IS NULL "
        "UNION ALL SELECT md.target, 'manifest' FROM manifest_deliveries md JOIN manifests m "
        "ON m.id = md.manifest_id WHERE m.docking_id = ? AND "
        "(md.state != 'delivered' OR md.verified_at IS NULL)", (docking_id, docking_id))
    return rows


def manifest_of(state: State, docking_id: int) -> dict[str, str] | None:
    row = state.query_one("SELECT sha256, prefix FROM manifests WHERE docking_id = ?",
                          (docking_id,))
    return {"sha256": row["sha256"], "prefix": row["prefix"]} if row else None
