"""What a port tile and the read-outs say about a docking, kept true: a docking closed with
clips left on the recorder ("copy incomplete — plug it back in") until the recorder is
re-docked or someone acknowledges it, and "delivered and verified" only when every clip the
docking stands for (its own and those an earlier docking copied) is verified on the targets.

Writers only (the daemon, ``dockd ack``); the views read the same columns.
"""

from __future__ import annotations

import logging
from typing import Any

from .store import State, ports
from .store.status import OPEN_INCOMPLETE_SQL as OPEN_INCOMPLETE_SQL
from .store.status import earlier_pending as earlier_pending

log = logging.getLogger(__name__)

INCOMPLETE_MESSAGE = "copy incomplete - plug it back in"



def show_incomplete(state: State, docking_id: int) -> None:
    """Put the "plug it back in" state on the docking's port, unless the port already shows
    another recorder (re-docked meanwhile, or a different one plugged in)."""
    with state.tx() as conn:
        d = ports.incomplete_of(conn, docking_id)
        if d is None or not d["incomplete"]:
            return
        total = d["clips_total"] or 0
        ports.show_incomplete_tile(conn, port=d["port"], serial=d["serial"],
                                   docking_id=docking_id, message=INCOMPLETE_MESSAGE,
                                   done=total - d["incomplete"], total=total, now=state.now())


def port_emptied(state: State, port: str) -> None:
    """The recorder left ``port``: the tile goes empty, except a "plug it back in" tile."""
    with state.tx() as conn:
        ports.empty_tile(conn, port, state.now())


def resolve_by_redock(conn: Any, serial: str, docking_id: int) -> None:
    """The recorder is back (docking ``docking_id``): its earlier incomplete dockings are
    no longer waiting for it."""
    ports.resolve_by_redock(conn, serial, docking_id)


def acknowledge(state: State, *, port: str | None = None, docking_id: int | None = None,
                actor: str = "operator") -> list[int]:
    """Acknowledge the incomplete docking shown on ``port`` (or ``docking_id``): the officer
    was told, the clips stay on the recorder. Returns the dockings acknowledged."""
    with state.tx() as conn:
        if docking_id is None:
            docking_id = ports.incomplete_docking_on(conn, port or "")
            if docking_id is None:
                return []
        done = [docking_id] if ports.acknowledge_docking(conn, docking_id, actor,
                                                         state.now()) else []
        if done:
            state.audit("acknowledged", f"docking/{docking_id}", {"by": actor}, conn=conn)
    if done:
        log.info("docking %d: incomplete copy acknowledged by %s", docking_id, actor)
    return done


def all_verified(conn: Any, docking_id: int) -> tuple[bool, int]:
    """(every clip of the docking and every earlier clip it found is delivered, how many of
    the earlier ones are still waiting)."""
    d = ports.docking_state_and_earlier(conn, docking_id)
    if d is None:
        return False, 0
    waiting = ports.undelivered_among(conn, earlier_pending(d[1]))
    return d[0] == "delivered" and waiting == 0, waiting


def refresh_delivered_message(state: State, docking_id: int) -> bool:
    """Say "delivered and verified" on the docking's port tile only when it is true."""
    with state.tx() as conn:
        return refresh_delivered_message_in(state, conn, docking_id)


def refresh_delivered_message_in(state: State, conn: Any, docking_id: int) -> bool:
    """``refresh_delivered_message`` inside the caller's transaction."""
    done, waiting = all_verified(conn, docking_id)
    if done:
        message = "delivered and verified"
    elif waiting:
        message = f"delivering: {waiting} clip(s) copied at an earlier docking not yet verified"
    else:
        return False
    ports.set_done_message(conn, docking_id, message, state.now())
    return done


def clip_verified_in(state: State, conn: Any, serial: str, clip_id: int) -> list[int]:
    """A clip of recorder ``serial`` became delivered: refresh the tiles of the dockings that
    found it copied earlier and wait for it (an indexed read of that recorder's dockings),
    inside the caller's transaction. Returns those dockings."""
    waiting = ports.dockings_waiting_in(conn, serial, clip_id)
    for docking_id in waiting:
        refresh_delivered_message_in(state, conn, docking_id)
    return waiting
