"""Reads behind ``dockd devices``, ``dockd report`` and the web's fleet, kiosk and findings
views: recorders, their dockings and health readings, gaps, labels.

The fleet view asks the same questions of every recorder; the ``*_by_serial`` functions
answer them for all recorders in one query each (no query per recorder), served by the
indexes of the fleet-status migration.
"""

from __future__ import annotations

import json
from typing import Any, cast

from .readonly import Reader
from .rows import ClipRow, DockingRow, GapRow, HealthRow, RecorderRow
from .status import PENDING_SQL

# --------------------------------------------------------------------------- recorders


def recorders(r: Reader, serial: str | None = None) -> list[RecorderRow]:
    """Every recorder (by serial), or the one with ``serial``."""
    if serial is None:
        return cast(list[RecorderRow], r.query("SELECT * FROM recorders ORDER BY serial"))
    return cast(list[RecorderRow], r.query("SELECT * FROM recorders WHERE serial = ?",
                                           (serial,)))


def recorder(r: Reader, serial: str) -> RecorderRow | None:
    return cast(RecorderRow | None, r.query_one("SELECT * FROM recorders WHERE serial = ?",
                                                (serial,)))


def recent_recorders(r: Reader, limit: int) -> list[RecorderRow]:
    """The ``limit`` recorders seen last."""
    return cast(list[RecorderRow], r.query(
        "SELECT * FROM recorders ORDER BY last_seen DESC LIMIT ?", (limit,)))


def dockings_of(r: Reader, serial: str) -> list[DockingRow]:
    """A recorder's dockings, oldest first."""
    return cast(list[DockingRow], r.query("SELECT * FROM dockings WHERE serial = ? ORDER BY id",
                                          (serial,)))


def last_dockings_by_serial(r: Reader) -> dict[str, tuple[DockingRow, int]]:
    """Per recorder: its newest docking and how many it has."""
    rows = r.query("SELECT d.*, m.n AS n_dockings FROM dockings d JOIN (SELECT serial, "
                   "max(id) AS last_id, count(*) AS n FROM dockings GROUP BY serial) m "
                   "ON d.id = m.last_id")
    out: dict[str, tuple[DockingRow, int]] = {}
    for row in rows:
        n = int(row.pop("n_dockings"))
        out[row["serial"]] = (cast(DockingRow, row), n)
    return out


def docked_ports_by_serial(r: Reader) -> dict[str, str]:
    """Recorders on a port now: serial -> port (the most recently updated, if several)."""
    out: dict[str, str] = {}
    for row in r.query("SELECT serial, port FROM ports WHERE state != 'empty' AND serial IS "
                       "NOT NULL ORDER BY updated_at"):
        out[row["serial"]] = row["port"]
    return out


def pending_by_serial(r: Reader) -> dict[str, int]:
    """Per recorder: its clips not delivered yet."""
    return {row["serial"]: row["n"] for row in r.query(
        f"SELECT serial, count(*) AS n FROM clips WHERE state IN {PENDING_SQL} "
        "GROUP BY serial")}


def health_of(r: Reader, serial: str) -> list[HealthRow]:
    """A recorder's health readings, oldest first."""
    return cast(list[HealthRow], r.query(
        "SELECT * FROM recorder_health WHERE serial = ? ORDER BY ts, id", (serial,)))


def current_health_by_serial(r: Reader) -> dict[str, list[HealthRow]]:
    """Per recorder: its newest health reading and the other readings of the same docking
    (what the fitness verdict weighs), oldest first, the newest last. Two queries for the
    whole fleet, each an index seek per recorder."""
    rows = r.query(
        "WITH latest AS (SELECT (SELECT h.id FROM recorder_health h WHERE h.serial = r.serial "
        "ORDER BY h.ts DESC, h.id DESC LIMIT 1) AS id FROM recorders r) "
        "SELECT * FROM recorder_health WHERE id IN (SELECT id FROM latest) OR docking_id IN "
        "(SELECT docking_id FROM recorder_health WHERE id IN (SELECT id FROM latest)) "
        "ORDER BY serial, ts, id")
    by_serial: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_serial.setdefault(row["serial"], []).append(row)
    out: dict[str, list[HealthRow]] = {}
    for serial, group in by_serial.items():
        newest = group[-1]
        keep = [h for h in group if h is newest or (newest["docking_id"] is not None and
                                                    h["docking_id"] == newest["docking_id"])]
        out[serial] = cast(list[HealthRow], keep)
    return out


def clock_sets_by_serial(r: Reader) -> dict[str, dict[str, Any]]:
    """Per recorder: the newest ``clock_set`` audit entry (ts, subject, detail)."""
    out: dict[str, dict[str, Any]] = {}
    for row in r.query("SELECT ts, subject, detail, json_extract(detail, '$.serial') AS serial "
                       "FROM audit WHERE action = 'clock_set' AND json_valid(detail) "
                       "ORDER BY id"):
        if isinstance(row["serial"], str):
            out[row["serial"]] = {"ts": row["ts"], "subject": row["subject"],
                                  "detail": row["detail"]}
    return out


def docking_clips(r: Reader, docking_id: int, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` clips of a docking (by path): name, state, starts, duration."""
    return r.query("SELECT safe_name, state, start_recorded, start_utc, duration_s FROM clips "
                   "WHERE docking_id = ? ORDER BY rel_path LIMIT ?", (docking_id, limit))


# --------------------------------------------------------------------------- report


def report_dockings(r: Reader, *, docking_id: int | None = None, serial: str | None = None,
                    limit: int = 20) -> list[dict[str, Any]]:
    """The newest dockings (or one, or one recorder's) with their officer."""
    where: list[str] = []
    params: list[Any] = []
    if docking_id is not None:
        where.append("d.id = ?")
        params.append(docking_id)
    if serial:
        where.append("d.serial = ?")
        params.append(serial)
    sql = ("SELECT d.*, r.officer_no, r.officer_name, r.unit_name FROM dockings d "
           "LEFT JOIN recorders r ON r.serial = d.serial "
           + (f"WHERE {' AND '.join(where)} " if where else "")
           + "ORDER BY d.id DESC LIMIT ?")
    return r.query(sql, (*params, limit))


def clips_by_id(r: Reader, serial: str, ids: set[int]) -> dict[int, ClipRow]:
    """Those of ``ids`` that are clips of recorder ``serial`` (any of its dockings)."""
    if not ids:
        return {}
    rows = r.query("SELECT * FROM clips WHERE id IN (SELECT value FROM json_each(?)) "
                   "AND serial = ?", (json.dumps(sorted(ids)), serial))
    return {row["id"]: cast(ClipRow, row) for row in rows}


def judged_clips_elsewhere(r: Reader, serial: str, docking_id: int,
                           states: tuple[str, ...]) -> list[ClipRow]:
    """Clips of recorder ``serial`` in ``states`` from its dockings other than
    ``docking_id`` whose timeline is judged (continuity stored), by id."""
    marks = ", ".join("?" * len(states))
    return cast(list[ClipRow], r.query(
        "SELECT c.* FROM clips c JOIN dockings d ON d.id = c.docking_id WHERE c.serial = ? "
        f"AND c.docking_id != ? AND d.continuity IS NOT NULL AND c.state IN ({marks}) "
        "ORDER BY c.id", (serial, docking_id, *states)))


def gaps_of(r: Reader, docking_id: int) -> list[GapRow]:
    return cast(list[GapRow], r.query("SELECT * FROM gaps WHERE docking_id = ? ORDER BY start",
                                      (docking_id,)))


def docking_findings(r: Reader, docking_id: int) -> str | None:
    """The ``findings`` column of a docking (JSON text)."""
    row = r.query_one("SELECT findings FROM dockings WHERE id = ?", (docking_id,))
    return row["findings"] if row else None


def newest_revision_document(r: Reader, docking_id: int) -> bytes | None:
    """The document of a docking's newest signed revision (labels, retention)."""
    row = r.query_one("SELECT document FROM revisions WHERE docking_id = ? "
                      "ORDER BY seq DESC LIMIT 1", (docking_id,))
    return bytes(row["document"]) if row else None


def labelled_revisions(r: Reader, limit: int) -> list[dict[str, Any]]:
    """The newest dockings' newest revisions, with recorder and officer."""
    return r.query(
        "SELECT r.docking_id, r.document, d.serial, d.docked_at, c.officer_no, "
        "c.officer_name FROM revisions r JOIN dockings d ON d.id = r.docking_id "
        "LEFT JOIN recorders c ON c.serial = d.serial WHERE r.seq = (SELECT max(seq) FROM "
        "revisions WHERE docking_id = r.docking_id) ORDER BY r.docking_id DESC LIMIT ?",
        (limit,))


# --------------------------------------------------------------------------- demo


def serials_in_state(r: Reader, state: str) -> set[str]:
    """Recorders with a docking in ``state`` (e.g. ``delivered``)."""
    return {row["serial"] for row in r.query(
        "SELECT DISTINCT serial FROM dockings WHERE state = ?", (state,))}


def signed_dockings_summary(r: Reader) -> list[dict[str, Any]]:
    """Per signed docking: serial, clip count (n) and manifest hash, by serial."""
    return r.query("SELECT d.serial, count(c.id) AS n, m.sha256 FROM dockings d "
                   "JOIN clips c ON c.docking_id = d.id JOIN manifests m ON "
                   "m.docking_id = d.id GROUP BY d.id ORDER BY d.serial")
