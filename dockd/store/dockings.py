"""Docking rows (and what a docking writes with them: the recorder's last-seen record, its
health samples, its timeline gaps, its signed manifest) for the docking stages.

Reads take the :class:`State`; writes take the caller's transaction ``conn`` so that a
stage's several writes stay one transaction. Docking transitions are checked against
:func:`dockd.lifecycle.check_docking_edge`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any, cast

from ..errors import StateError, TransitionError
from ..lifecycle import check_docking_edge
from ..model import RecorderHealth, RecorderIdentity
from .db import State, decode_row, dumps
from .rows import DockingRow, IdPort, IdRoot, LastManifest, OpenDocking

# --------------------------------------------------------------------------- reads


def get(state: State, docking_id: int) -> DockingRow:
    return cast(DockingRow, state.docking(docking_id))


def get_in(conn: sqlite3.Connection, docking_id: int) -> DockingRow:
    row = conn.execute("SELECT * FROM dockings WHERE id = ?", (docking_id,)).fetchone()
    if row is None:
        raise StateError(f"no docking {docking_id}")
    return cast(DockingRow, decode_row(row))


def latest_on_port(state: State, port: str) -> DockingRow | None:
    """The newest docking of ``port`` (whatever its state)."""
    return cast(DockingRow | None, state.query_one(
        "SELECT * FROM dockings WHERE port = ? ORDER BY id DESC LIMIT 1", (port,)))


def offloading_on_port(state: State, port: str) -> int | None:
    """The docking still copying in ``port``, if any."""
    row = state.query_one("SELECT id FROM dockings WHERE port = ? AND state = 'offloading' "
                          "ORDER BY id DESC LIMIT 1", (port,))
    return int(row["id"]) if row else None


def still_on_port(state: State, port: str) -> DockingRow | None:
    """The finished docking whose recorder was never seen leaving ``port`` (a restart)."""
    return cast(DockingRow | None, state.query_one(
        "SELECT * FROM dockings WHERE port = ? AND undocked_at IS NULL AND "
        "state != 'offloading' ORDER BY id DESC LIMIT 1", (port,)))


def offloading_elsewhere(state: State, serial: str, port: str) -> list[IdRoot]:
    """Dockings of ``serial`` still copying in another port."""
    return cast(list[IdRoot], state.query(
        "SELECT id, root FROM dockings WHERE serial = ? AND state = 'offloading' AND "
        "port != ?", (serial, port)))


def offloading_of(state: State, serial: str) -> list[IdPort]:
    return cast(list[IdPort], state.query(
        "SELECT id, port FROM dockings WHERE serial = ? AND state = 'offloading' ORDER BY id",
        (serial,)))


def offloading_of_in(conn: sqlite3.Connection, serial: str) -> list[IdPort]:
    return cast(list[IdPort], [dict(r) for r in conn.execute(
        "SELECT id, port FROM dockings WHERE serial = ? AND state = 'offloading' ORDER BY id",
        (serial,))])


def open_dockings(state: State) -> list[OpenDocking]:
    """Dockings not seen leaving, or still copying (a restart decides what they are)."""
    return cast(list[OpenDocking], state.query(
        "SELECT id, port, state, serial FROM dockings WHERE undocked_at IS NULL OR "
        "state = 'offloading' ORDER BY id"))


def unfinished(state: State) -> list[OpenDocking]:
    """Dockings copied (or cut short) but not signed yet: the finisher's backlog."""
    return cast(list[OpenDocking], state.query(
        "SELECT id, port, state, serial FROM dockings WHERE state IN "
        "('offloaded', 'interrupted') ORDER BY id"))


def offloading(state: State) -> list[OpenDocking]:
    return cast(list[OpenDocking], state.query(
        "SELECT id, port, state, serial FROM dockings WHERE state = 'offloading' ORDER BY id"))


def usb_serials_before(state: State, serial: str, docking_id: int) -> list[str]:
    """USB serials the recorder ``serial`` showed in its other dockings."""
    return [r["u"] for r in state.query(
        "SELECT DISTINCT json_extract(snapshot, '$.usb_serial') AS u FROM dockings "
        "WHERE serial = ? AND id != ? AND json_valid(snapshot)", (serial, docking_id))
        if r["u"]]


def info_serials_before(state: State, usb_serial: str, docking_id: int) -> list[str]:
    """Device-info serials seen before behind the USB serial ``usb_serial``."""
    return [r["serial"] for r in state.query(
        "SELECT DISTINCT serial FROM dockings WHERE id != ? AND json_valid(snapshot) AND "
        "json_extract(snapshot, '$.usb_serial') = ?", (docking_id, usb_serial))]


def clock_set_detail(conn: sqlite3.Connection, docking_id: int) -> Any:
    """The audit detail of the recorder clock being set after this docking, if it was."""
    row = conn.execute("SELECT detail FROM audit WHERE action = 'clock_set' AND subject = ?",
                       (f"docking/{docking_id}",)).fetchone()
    return json.loads(row["detail"]) if row else None


# --------------------------------------------------------------------------- writes


def advance_in(conn: sqlite3.Connection, docking_id: int, old: str, new: str,
               fields: Mapping[str, Any] | None = None) -> None:
    """The docking edge ``old`` -> ``new`` with its columns, inside the caller's transaction."""
    check_docking_edge(old, new)
    cols = {**(fields or {}), "state": new}
    sets = ", ".join(f"{k} = ?" for k in cols)
    cur = conn.execute(f"UPDATE dockings SET {sets} WHERE id = ? AND state = ?",
                       (*cols.values(), docking_id, old))
    if cur.rowcount != 1:
        row = conn.execute("SELECT state FROM dockings WHERE id = ?", (docking_id,)).fetchone()
        raise TransitionError(f"docking {docking_id}: expected state {old!r}, found "
                              f"{row['state'] if row else 'missing'!r}")


def seen_recorder(conn: sqlite3.Connection, ident: RecorderIdentity, health: RecorderHealth, *,
                  port: str, now: str) -> None:
    """The recorder's row: who it is and how it was when last docked."""
    conn.execute("INSERT INTO recorders (serial, first_seen) VALUES (?, ?) "
                 "ON CONFLICT(serial) DO NOTHING", (ident.serial, now))
    conn.execute(
        "UPDATE recorders SET officer_no=?, officer_name=?, unit_no=?, unit_name=?, "
        "vendor=?, model=?, firmware=?, last_seen=?, last_port=?, last_battery=?, "
        "last_clock_offset_s=?, last_storage_total=?, last_storage_free=? WHERE serial=?",
        (ident.officer_no, ident.officer_name, ident.unit_no, ident.unit_name,
         ident.vendor, ident.model, health.firmware, now, port, health.battery_percent,
         health.clock_offset_s, health.storage_total, health.storage_free, ident.serial))


def recorder_health(conn: sqlite3.Connection, serial: str, health: RecorderHealth) -> None:
    """A health re-read while docked: the recorder's last battery and storage."""
    conn.execute("UPDATE recorders SET last_battery = ?, last_storage_free = ?, "
                 "last_storage_total = ? WHERE serial = ?",
                 (health.battery_percent, health.storage_free, health.storage_total, serial))


def health_sample(conn: sqlite3.Connection, row: Mapping[str, Any]) -> None:
    """One ``recorder_health`` row (:func:`dockd.devices.health.health_row`)."""
    from ..devices.health import HEALTH_INSERT_SQL

    conn.execute(HEALTH_INSERT_SQL, dict(row))


def insert(conn: sqlite3.Connection, *, serial: str, port: str, dock_id: str, root: str,
           docked_at: str, deadline_at: str | None, driver: str, profile: str,
           snapshot: Mapping[str, Any], clock_offset_s: float | None,
           dock_clock: Mapping[str, Any]) -> int:
    """A new docking, ``offloading``."""
    cur = conn.execute(
        "INSERT INTO dockings (serial, port, dock_id, root, state, docked_at, deadline_at, "
        "driver, profile, snapshot, findings, clock_offset_s, skipped_known, dock_clock) "
        "VALUES (?, ?, ?, ?, 'offloading', ?, ?, ?, ?, ?, '[]', ?, 0, ?)",
        (serial, port, dock_id, root, docked_at, deadline_at, driver, profile, dumps(snapshot),
         clock_offset_s, dumps(dock_clock)))
    return int(cur.lastrowid or 0)


def set_root(conn: sqlite3.Connection, docking_id: int, root: str) -> None:
    conn.execute("UPDATE dockings SET root = ? WHERE id = ?", (root, docking_id))


def close_earlier(conn: sqlite3.Connection, serial: str, docking_id: int, now: str) -> None:
    """The recorder docked again: its earlier dockings are over."""
    conn.execute("UPDATE dockings SET undocked_at = ? WHERE serial = ? AND id != ? AND "
                 "undocked_at IS NULL", (now, serial, docking_id))


def port_emptied(state: State, port: str) -> None:
    """The recorder left ``port``: its finished dockings are over."""
    with state.tx() as conn:
        conn.execute("UPDATE dockings SET undocked_at = ? WHERE port = ? AND "
                     "undocked_at IS NULL AND state != 'offloading'", (state.now(), port))


def set_findings(conn: sqlite3.Connection, docking_id: int,
                 findings: Iterable[Mapping[str, Any]]) -> None:
    conn.execute("UPDATE dockings SET findings = ? WHERE id = ?",
                 (dumps(list(findings)), docking_id))


def recount(conn: sqlite3.Connection, docking_id: int) -> None:
    """The docking's clip and byte totals from its clip rows."""
    conn.execute("UPDATE dockings SET clips_total = (SELECT count(*) FROM clips WHERE "
                 "docking_id = :d), bytes_total = (SELECT coalesce(sum(size), 0) FROM clips "
                 "WHERE docking_id = :d) WHERE id = :d", {"d": docking_id})


def known_outcome(conn: sqlite3.Connection, docking_id: int, skipped: int,
                  earlier: list[int]) -> None:
    """Clips found already delivered (skipped) or copied earlier but not delivered yet."""
    conn.execute("UPDATE dockings SET skipped_known = max(coalesce(skipped_known, 0), ?), "
                 "earlier_pending = coalesce(?, earlier_pending) WHERE id = ?",
                 (skipped, dumps(sorted(earlier)) if earlier else None, docking_id))
    recount(conn, docking_id)


def tile(conn: sqlite3.Connection, port: str, docking_id: int, fields: Mapping[str, Any]
         ) -> None:
    """Update the port tile only while it shows this docking at work (not once the
    recorder left, nor when it says "plug it back in")."""
    sets = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE ports SET {sets} WHERE port = ? AND docking_id = ? AND "
                 "state NOT IN ('empty', 'incomplete')", (*fields.values(), port, docking_id))


def continuity(conn: sqlite3.Connection, docking_id: int, gaps: Iterable[Mapping[str, Any]],
               doc: Mapping[str, Any]) -> None:
    """The docking's timeline: its gap rows (replaced) and the continuity document."""
    conn.execute("DELETE FROM gaps WHERE docking_id = ?", (docking_id,))
    for r in gaps:
        cols = ", ".join(r)
        conn.execute(f"INSERT INTO gaps ({cols}) VALUES ({', '.join('?' * len(r))})",
                     tuple(r.values()))
    conn.execute("UPDATE dockings SET continuity = ? WHERE id = ?", (dumps(doc), docking_id))


# --------------------------------------------------------------------------- manifests


def manifest_sha256(conn: sqlite3.Connection, docking_id: int) -> str:
    row = conn.execute("SELECT sha256 FROM manifests WHERE docking_id = ?",
                       (docking_id,)).fetchone()
    if row is None:
        raise StateError(f"docking {docking_id} has no manifest")
    return str(row["sha256"])


def last_manifest(conn: sqlite3.Connection, dock_id: str) -> LastManifest | None:
    """The head of this dock's manifest chain."""
    row = conn.execute("SELECT sha256, seq FROM manifests WHERE dock_id = ? ORDER BY id DESC "
                       "LIMIT 1", (dock_id,)).fetchone()
    return cast(LastManifest, dict(row)) if row else None


def insert_manifest(conn: sqlite3.Connection, *, docking_id: int, dock_id: str, sha256: str,
                    prev_sha256: str | None, key_id: str, prefix: str, created_at: str,
                    body: bytes, signature: bytes, seq: int) -> int:
    cur = conn.execute(
        "INSERT INTO manifests (docking_id, dock_id, sha256, prev_sha256, key_id, prefix, "
        "created_at, manifest, signature, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (docking_id, dock_id, sha256, prev_sha256, key_id, prefix, created_at, body,
         signature, seq))
    return int(cur.lastrowid or 0)


def queue_signed(conn: sqlite3.Connection, manifest_id: int,
                 clip_keys: Iterable[tuple[int, str]], targets: Iterable[str]) -> None:
    """At signing: every signed clip and the manifest are due on every target (rows that
    exist already, e.g. clips delivered ahead of signing, are kept)."""
    names = list(targets)
    for clip_id, key in clip_keys:
        for t in names:
            conn.execute("INSERT OR IGNORE INTO deliveries (clip_id, target, state, key) "
                         "VALUES (?, ?, 'pending', ?)", (clip_id, t, key))
    for t in names:
        conn.execute("INSERT OR IGNORE INTO manifest_deliveries (manifest_id, target, state) "
                     "VALUES (?, ?, 'pending')", (manifest_id, t))
