"""The port tiles' rows and the incomplete-copy columns of a docking: what a tile says is
kept true (``dockd.tiles`` decides what to say; this module writes and reads it).

Write functions take the caller's connection and join its transaction."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .status import OPEN_INCOMPLETE_SQL

INCOMPLETE_TILE_SQL = (
    "UPDATE ports SET state = 'incomplete', serial = ?, docking_id = ?, error = NULL, "
    "message = ?, clips_done = ?, clips_total = ?, rate_bps = NULL, updated_at = ? "
    "WHERE port = ? AND (docking_id IS NULL OR docking_id = ? OR state = 'empty')")


def ensure_port(conn: sqlite3.Connection, port: str) -> None:
    """The port's row exists (``empty`` when new)."""
    conn.execute("INSERT OR IGNORE INTO ports (port, state) VALUES (?, 'empty')", (port,))


def incomplete_of(conn: sqlite3.Connection, docking_id: int) -> dict[str, Any] | None:
    """(port, serial, incomplete, clips_total) of a docking."""
    row = conn.execute("SELECT port, serial, incomplete, clips_total FROM dockings "
                       "WHERE id = ?", (docking_id,)).fetchone()
    return dict(row) if row is not None else None


def show_incomplete_tile(conn: sqlite3.Connection, *, port: str, serial: str, docking_id: int,
                         message: str, done: int, total: int, now: str) -> None:
    """The "plug it back in" tile on ``port``, unless it shows another recorder now."""
    ensure_port(conn, port)
    conn.execute(INCOMPLETE_TILE_SQL, (serial, docking_id, message, done, total, now, port,
                                       docking_id))


def empty_tile(conn: sqlite3.Connection, port: str, now: str) -> None:
    """The recorder left ``port``: the tile goes empty, except a "plug it back in" tile."""
    ensure_port(conn, port)
    conn.execute(
        "UPDATE ports SET state = 'empty', serial = NULL, docking_id = NULL, message = NULL, "
        "error = NULL, clips_done = 0, clips_total = 0, bytes_done = 0, bytes_total = 0, "
        "rate_bps = NULL, updated_at = ? WHERE port = ? AND state != 'incomplete'", (now, port))


def resolve_by_redock(conn: sqlite3.Connection, serial: str, docking_id: int) -> None:
    """The recorder's earlier incomplete dockings are resolved by docking ``docking_id``."""
    conn.execute("UPDATE dockings SET resolved_by = ? WHERE serial = ? AND id < ? AND "
                 "incomplete > 0 AND resolved_by IS NULL", (docking_id, serial, docking_id))


def incomplete_docking_on(conn: sqlite3.Connection, port: str) -> int | None:
    """The docking an ``incomplete`` tile on ``port`` shows, if any."""
    row = conn.execute("SELECT docking_id FROM ports WHERE port = ? AND state = 'incomplete'",
                       (port,)).fetchone()
    return int(row["docking_id"]) if row is not None and row["docking_id"] is not None else None


def acknowledge_docking(conn: sqlite3.Connection, docking_id: int, actor: str,
                        now: str) -> bool:
    """Mark an open incomplete docking acknowledged and clear its tile; whether it was open."""
    cur = conn.execute(f"UPDATE dockings SET acked_at = ?, acked_by = ? WHERE id = ? AND "
                       f"{OPEN_INCOMPLETE_SQL}", (now, actor, docking_id))
    conn.execute(
        "UPDATE ports SET state = 'empty', serial = NULL, docking_id = NULL, message = NULL, "
        "clips_done = 0, clips_total = 0, updated_at = ? WHERE state = 'incomplete' AND "
        "docking_id = ?", (now, docking_id))
    return cur.rowcount > 0


def docking_state_and_earlier(conn: sqlite3.Connection,
                              docking_id: int) -> tuple[str, Any] | None:
    """(state, earlier_pending) of a docking."""
    row = conn.execute("SELECT state, earlier_pending FROM dockings WHERE id = ?",
                       (docking_id,)).fetchone()
    return (row["state"], row["earlier_pending"]) if row is not None else None


def undelivered_among(conn: sqlite3.Connection, clip_ids: list[int]) -> int:
    """How many of ``clip_ids`` are not delivered (nor cleared)."""
    if not clip_ids:
        return 0
    row = conn.execute("SELECT count(*) FROM clips WHERE id IN (SELECT value FROM "
                       "json_each(?)) AND state NOT IN ('delivered', 'cleared')",
                       (json.dumps(sorted(set(clip_ids))),)).fetchone()
    return int(row[0])


def set_done_message(conn: sqlite3.Connection, docking_id: int, message: str,
                     now: str) -> None:
    """The message of a ``done`` tile showing ``docking_id``."""
    conn.execute("UPDATE ports SET message = ?, updated_at = ? WHERE docking_id = ? AND "
                 "state = 'done'", (message, now, docking_id))


def dockings_waiting_in(conn: sqlite3.Connection, serial: str, clip_id: int) -> list[int]:
    """Dockings that found ``clip_id`` (copied at an earlier docking) and wait for it, inside
    the caller's transaction, read through the recorder's
    dockings (index ``dockings_serial``): only a docking of the clip's own recorder lists it
    in ``earlier_pending``, so this reads a handful of rows however large the database."""
    return [int(row[0]) for row in conn.execute(
        "SELECT d.id FROM dockings d, json_each(d.earlier_pending) j WHERE d.serial = ? AND "
        "d.earlier_pending IS NOT NULL AND json_valid(d.earlier_pending) AND j.value = ?",
        (serial, clip_id))]
