"""Clip rows for the docking stages: registration, copy, probe/check and signing.

Reads take the :class:`State` (one short read each); writes that a stage needs together
with others take the caller's transaction ``conn`` (``with state.tx() as conn:``), so one
state transition stays one transaction. The edge check of every transition is
:func:`dockd.lifecycle.check_clip_edge`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, cast

from ..lifecycle import check_clip_edge
from ..model import ClipEntry
from .db import State, decode_row, encode_path
from .rows import ClipRow, CountBytes, IdSha, NameDocking, PathSize, SameNameClip, TargetCopy


def _rows(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    return [decode_row(r) for r in cur.fetchall()]


# --------------------------------------------------------------------------- reads


def get(state: State, clip_id: int) -> ClipRow:
    return cast(ClipRow, state.clip(clip_id))


def of_docking(state: State, docking_id: int, clip_state: str | None = None) -> list[ClipRow]:
    """The docking's clips (in one state, or all), by path."""
    return cast(list[ClipRow], state.clips_of(docking_id, clip_state))


def all_in(conn: sqlite3.Connection, docking_id: int) -> list[ClipRow]:
    """The docking's clips by path, read inside the caller's transaction."""
    return cast(list[ClipRow], _rows(conn.execute(
        "SELECT * FROM clips WHERE docking_id = ? ORDER BY rel_path", (docking_id,))))


def copied_so_far(state: State, docking_id: int) -> CountBytes:
    """How many of the docking's clips (and bytes) are copied or further along."""
    row = state.query_one("SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM clips "
                          "WHERE docking_id = ? AND state != 'discovered'", (docking_id,))
    return cast(CountBytes, row or {"n": 0, "b": 0})


def count_in(conn: sqlite3.Connection, docking_id: int, states: Sequence[str]) -> int:
    marks = ", ".join("?" * len(states))
    row = conn.execute(f"SELECT count(*) FROM clips WHERE docking_id = ? AND state IN ({marks})",
                       (docking_id, *states)).fetchone()
    return int(row[0])


def count(state: State, docking_id: int, states: Sequence[str]) -> int:
    with state.tx() as conn:
        return count_in(conn, docking_id, states)


def same_name(conn: sqlite3.Connection, serial: str, rel_path: str) -> list[SameNameClip]:
    """Every clip of ``serial`` under ``rel_path`` (newest first), with its docking's state."""
    return cast(list[SameNameClip], _rows(conn.execute(
        "SELECT c.*, d.state AS docking_state FROM clips c JOIN dockings d ON "
        "d.id = c.docking_id WHERE c.serial = ? AND c.rel_path = ? ORDER BY c.id DESC",
        (serial, encode_path(rel_path)))))


def exists_in(conn: sqlite3.Connection, docking_id: int, rel_path: str) -> bool:
    return conn.execute("SELECT 1 FROM clips WHERE docking_id = ? AND rel_path = ?",
                        (docking_id, encode_path(rel_path))).fetchone() is not None


def copies_elsewhere(state: State, clip_id: int, rel_path: str, size: int | None
                     ) -> list[IdSha]:
    """Other rows of the same serial, path and size that were already copied."""
    return cast(list[IdSha], state.query(
        "SELECT id, sha256 FROM clips WHERE serial = (SELECT serial FROM clips WHERE "
        "id = ?) AND rel_path = ? AND size = ? AND state != 'discovered' AND id != ?",
        (clip_id, encode_path(rel_path), size, clip_id)))


def copied_paths_of_serial(state: State, serial: str) -> set[tuple[str, int | None]]:
    """(path, size) of every clip of ``serial`` already copied: the candidates for
    :func:`copies_elsewhere` (one query for a whole offload instead of one per clip)."""
    rows = cast(list[PathSize], state.query(
        "SELECT rel_path, size FROM clips WHERE serial = ? AND state != 'discovered'",
        (serial,)))
    return {(r["rel_path"], r["size"]) for r in rows}


def names_of(conn: sqlite3.Connection, ids_json: str | None) -> list[NameDocking]:
    """Name and docking of the clips whose ids are the JSON list ``ids_json``."""
    return cast(list[NameDocking], _rows(conn.execute(
        "SELECT safe_name, docking_id FROM clips WHERE id IN (SELECT value FROM json_each(?)) "
        "ORDER BY id", (ids_json or "[]",))))


def paths_of_serial(state: State, serial: str) -> set[tuple[str, int | None]]:
    """(path, size) of every clip ever registered for ``serial``."""
    rows = cast(list[PathSize], state.query("SELECT rel_path, size FROM clips WHERE serial = ?",
                                            (serial,)))
    return {(r["rel_path"], r["size"]) for r in rows}


# --------------------------------------------------------------------------- writes


def insert(conn: sqlite3.Connection, *, docking_id: int, serial: str, entry: ClipEntry,
           findings_json: str, deadline: str | None, now: str, retention_class: str) -> int:
    """A newly seen clip, ``discovered`` in ``docking_id``."""
    cur = conn.execute(
        "INSERT INTO clips (docking_id, first_docking_id, serial, rel_path, safe_name, size, "
        "mtime, state, findings, deadline_at, created_at, updated_at, retention_class) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'discovered', ?, ?, ?, ?, ?)",
        (docking_id, docking_id, serial, encode_path(entry.rel_path), entry.safe_name,
         entry.size, entry.mtime, findings_json, deadline, now, now, retention_class))
    return int(cur.lastrowid or 0)


def regrown(conn: sqlite3.Connection, clip_id: int, size: int, mtime: float, now: str) -> None:
    """A clip still being written when first seen: copy what is there now."""
    conn.execute("UPDATE clips SET size = ?, mtime = ?, updated_at = ? WHERE id = ?",
                 (size, mtime, now, clip_id))


def take_over(conn: sqlite3.Connection, clip_id: int, docking_id: int, entry: ClipEntry,
              now: str) -> None:
    """A clip left uncopied by an ended docking continues in ``docking_id`` (it keeps its
    first docking and so its deadline)."""
    conn.execute("UPDATE clips SET docking_id = ?, safe_name = ?, mtime = ?, size = ?, "
                 "updated_at = ? WHERE id = ?",
                 (docking_id, entry.safe_name, entry.mtime, entry.size, now, clip_id))


def drop_discovered(conn: sqlite3.Connection, clip_id: int) -> bool:
    """Remove a never-copied row (its content is another row's). True if it went."""
    return conn.execute("DELETE FROM clips WHERE id = ? AND state = 'discovered'",
                        (clip_id,)).rowcount == 1


def advance_in(conn: sqlite3.Connection, clip_id: int, old: str, new: str, now: str,
               fields: dict[str, Any] | None = None) -> None:
    """The clip edge ``old`` -> ``new`` with its columns, inside the caller's transaction."""
    check_clip_edge(old, new)
    cols = {**(fields or {}), "state": new, "updated_at": now, "error": None}
    sets = ", ".join(f"{k} = ?" for k in cols)
    cur = conn.execute(f"UPDATE clips SET {sets} WHERE id = ? AND state = ?",
                       (*cols.values(), clip_id, old))
    if cur.rowcount != 1:
        from ..errors import TransitionError

        row = conn.execute("SELECT state FROM clips WHERE id = ?", (clip_id,)).fetchone()
        raise TransitionError(f"clip {clip_id}: expected state {old!r}, found "
                              f"{row['state'] if row else 'missing'!r}")


def advance(state: State, clip_id: int, old: str, new: str,
            fields: dict[str, Any] | None = None) -> None:
    """One clip along one edge, in a transaction of its own."""
    with state.tx() as conn:
        advance_in(conn, clip_id, old, new, state.now(), fields)


def advance_many(state: State, moves: Iterable[tuple[int, dict[str, Any]]], old: str,
                 new: str) -> int:
    """Many clips along the same edge in one transaction (a probed batch). Returns how many."""
    n = 0
    with state.tx() as conn:
        now = state.now()
        for clip_id, fields in moves:
            advance_in(conn, clip_id, old, new, now, fields)
            n += 1
    return n


def failed(state: State, clip_id: int, message: str) -> None:
    """A step failed for this clip (kept in its state, retried later)."""
    state.clip_error(clip_id, message)


def staged_elsewhere(state: State, docking_id: int) -> list[str]:
    """Staged paths of other dockings' clips on their way to the targets (copied, being
    checked, checked or signed): delivered, they leave staging."""
    return [str(r["staged_path"]) for r in state.query(
        "SELECT staged_path FROM clips WHERE docking_id != ? AND staged_path IS NOT NULL AND "
        "state IN ('copied', 'probed', 'checked', 'signed')", (docking_id,))]


def delivered_of_serial(state: State, serial: str) -> list[ClipRow]:
    """The recorder's clips verified on every required target (clearing's candidates)."""
    return cast(list[ClipRow], state.query(
        "SELECT * FROM clips WHERE serial = ? AND state = 'delivered' ORDER BY id", (serial,)))


def copies_of(state: State, clip_id: int) -> list[TargetCopy]:
    """Where the clip went: target, delivery state and key, one row per target."""
    return cast(list[TargetCopy], state.query(
        "SELECT target, state, key FROM deliveries WHERE clip_id = ?", (clip_id,)))
