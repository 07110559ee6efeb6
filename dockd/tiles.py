"""What a port tile and the read-outs say about a docking, kept true: a docking closed with
clips left on the recorder ("copy incomplete — plug it back in") until the recorder is
re-docked or someone acknowledges it, and "delivered and verified" only when every clip the
docking stands for (its own and those an earlier docking copied) is verified on the targets.

Writers only (the daemon, ``dockd ack``); the views read the same columns.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .store import State

log = logging.getLogger(__name__)

INCOMPLETE_MESSAGE = "copy incomplete - plug it back in"

# a docking listed as incomplete: closed with clips left, not re-docked, not acknowledged
OPEN_INCOMPLETE_SQL = ("incomplete > 0 AND resolved_by IS NULL AND acked_at IS NULL AND "
                       "state != 'offloading'")


def show_incomplete(state: State, docking_id: int) -> None:
    """Put the "plug it back in" state on the docking's port, unless the port already shows
    another recorder (re-docked meanwhile, or a different one plugged in)."""
    with state.tx() as conn:
        d = conn.execute("SELECT port, serial, incomplete, clips_total FROM dockings "
                         "WHERE id = ?", (docking_id,)).fetchone()
        if d is None or not d["incomplete"]:
            return
        conn.execute("INSERT OR IGNORE INTO ports (port, state) VALUES (?, 'empty')",
                     (d["port"],))
        total = d["clips_total"] or 0
        conn.execute(
            "UPDATE ports SET state = 'incomplete', serial = ?, docking_id = ?, error = NULL, "
            "message = ?, clips_done = ?, clips_total = ?, rate_bps = NULL, updated_at = ? "
            "WHERE port = ? AND (docking_id IS NULL OR docking_id = ? OR state = 'empty')",
            (d["serial"], docking_id, INCOMPLETE_MESSAGE, total - d["incomplete"], total,
             state.now(), d["port"], docking_id))


def port_emptied(state: State, port: str) -> None:
    """The recorder left ``port``: the tile goes empty, except a "plug it back in" tile."""
    with state.tx() as conn:
        conn.execute("INSERT OR IGNORE INTO ports (port, state) VALUES (?, 'empty')", (port,))
        conn.execute(
            "UPDATE ports SET state = 'empty', serial = NULL, docking_id = NULL, message = NULL, "
            "error = NULL, clips_done = 0, clips_total = 0, bytes_done = 0, bytes_total = 0, "
            "rate_bps = NULL, updated_at = ? WHERE port = ? AND state != 'incomplete'",
            (state.now(), port))


def resolve_by_redock(conn: Any, serial: str, docking_id: int) -> None:
    """The recorder is back (docking ``docking_id``): its earlier incomplete dockings are
    no longer waiting for it."""
    conn.execute("UPDATE dockings SET resolved_by = ? WHERE serial = ? AND id < ? AND "
                 "incomplete > 0 AND resolved_by IS NULL", (docking_id, serial, docking_id))


def acknowledge(state: State, *, port: str | None = None, docking_id: int | None = None,
                actor: str = "operator") -> list[int]:
    """Acknowledge the incomplete docking shown on ``port`` (or ``docking_id``): the officer
    was told, the clips stay on the recorder. Returns the dockings acknowledged."""
    with state.tx() as conn:
        if docking_id is None:
            row = conn.execute("SELECT docking_id FROM ports WHERE port = ? AND "
                               "state = 'incomplete'", (port,)).fetchone()
            if row is None or row["docking_id"] is None:
                return []
            docking_id = int(row["docking_id"])
        cur = conn.execute(f"UPDATE dockings SET acked_at = ?, acked_by = ? WHERE id = ? AND "
                           f"{OPEN_INCOMPLETE_SQL}", (state.now(), actor, docking_id))
        done = [docking_id] if cur.rowcount else []
        conn.execute(
            "UPDATE ports SET state = 'empty', serial = NULL, docking_id = NULL, message = NULL, "
            "clips_done = 0, clips_total = 0, updated_at = ? WHERE state = 'incomplete' AND "
            "docking_id = ?", (state.now(), docking_id))
        if done:
            state.audit("acknowledged", f"docking/{docking_id}", {"by": actor}, conn=conn)
    if done:
        log.info("docking %d: incomplete copy acknowledged by %s", docking_id, actor)
    return done


def earlier_pending(value: Any) -> list[int]:
    try:
        ids = json.loads(value) if value else []
    except ValueError:
        return []
    return [int(i) for i in ids if isinstance(i, int)] if isinstance(ids, list) else []


def all_verified(conn: Any, docking_id: int) -> tuple[bool, int]:
    """(every clip of the docking and every earlier clip it found is delivered, how many of
    the earlier ones are still waiting)."""
    d = conn.execute("SELECT state, earlier_pending FROM dockings WHERE id = ?",
                     (docking_id,)).fetchone()
    if d is None:
        return False, 0
    ids = earlier_pending(d["earlier_pending"])
    waiting = 0
    if ids:
        marks = ", ".join("?" * len(ids))
        waiting = conn.execute(f"SELECT count(*) FROM clips WHERE id IN ({marks}) AND state "
                               "NOT IN ('delivered', 'cleared')", ids).fetchone()[0]
    return d["state"] == "delivered" and waiting == 0, waiting


def refresh_delivered_message(state: State, docking_id: int) -> bool:
    """Say "delivered and verified" on the docking's port tile only when it is true."""
    with state.tx() as conn:
        done, waiting = all_verified(conn, docking_id)
        if done:
            message = "delivered and verified"
        elif waiting:
            message = f"delivering: {waiting} clip(s) copied at an earlier docking not yet verified"
        else:
            return False
        conn.execute("UPDATE ports SET message = ?, updated_at = ? WHERE docking_id = ? AND "
                     "state = 'done'", (message, state.now(), docking_id))
    return done


def dockings_waiting_for(state: State, clip_id: int) -> list[int]:
    """Delivered dockings that found ``clip_id`` (copied earlier) and wait for it."""
    rows = state.query("SELECT d.id FROM dockings d, json_each(d.earlier_pending) j WHERE "
                       "json_valid(d.earlier_pending) AND j.value = ?", (clip_id,))
    return [r["id"] for r in rows]
