"""A recorder that never left its port is the same docking (issue #12: a restart must not
rewrite history).

When dockd restarts with recorders still docked, the device source announces each one
again. A docking whose copy was finished and whose recorder has not been seen leaving
(``undocked_at`` unset) goes on: the port tile shows it again with its findings, nothing
is copied or signed again, and no empty manifest is written. Another recorder in that port,
or new clips on the same one, make a new docking as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import tiles
from .ingest.scan import scan_recorder

if TYPE_CHECKING:
    from .pipeline import Pipeline

log = logging.getLogger(__name__)


def reattach(pipe: Pipeline, port: str, root: Path,
             hints: Mapping[str, str] | None = None) -> int | None:
    """The id of the docking that goes on in ``port``, or None when this is a new one."""
    state = pipe.state
    d = state.query_one(
        "SELECT * FROM dockings WHERE port = ? AND undocked_at IS NULL AND "
        "state != 'offloading' ORDER BY id DESC LIMIT 1", (port,))
    if d is None:
        return None
    hints = dict(hints or {})
    snap = pipe.registry.select(root, hints).snapshot(root, hints, now=state.clock())
    if snap.identity.serial == d["serial"]:
        scan = scan_recorder(root, pipe.profile(d["profile"]))
        seen = {(r["rel_path"], r["size"]) for r in state.query(
            "SELECT rel_path, size FROM clips WHERE serial = ?", (d["serial"],))}
        if all((e.rel_path, e.size) in seen for e in scan.entries):
            restore_tile(pipe, port, d)
            log.info("port %s serial %s: resuming docking %d (recorder still docked, nothing "
                     "new on it)", port, d["serial"], d["id"])
            if d["state"] in ("offloaded", "interrupted"):
                pipe.finish(d["id"])
            return int(d["id"])
    pipe.undocked(port)  # another recorder, or new clips: a new docking
    return None


def restore_tile(pipe: Pipeline, port: str, d: dict[str, Any]) -> None:
    """The port tile as it was: this docking, its counts, its findings (read by docking id)."""
    n = pipe.state.query_one("SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM clips "
                             "WHERE docking_id = ? AND state != 'discovered'", (d["id"],))
    assert n is not None
    pipe.state.set_port(port, state="done", serial=d["serial"], docking_id=d["id"], error=None,
                        message="delivering", clips_done=n["n"], clips_total=d["clips_total"],
                        bytes_done=n["b"], bytes_total=d["bytes_total"], rate_bps=None)
    if d["state"] == "delivered":
        tiles.refresh_delivered_message(pipe.state, d["id"])
