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
from typing import TYPE_CHECKING

from . import tiles
from .ingest.scan import scan_recorder
from .store import clips, dockings
from .store.rows import DockingRow

if TYPE_CHECKING:
    from .pipeline import Pipeline

log = logging.getLogger(__name__)


def reattach(pipe: Pipeline, port: str, root: Path,
             hints: Mapping[str, str] | None = None) -> int | None:
    """The id of the docking that goes on in ``port``, or None when this is a new one."""
    state = pipe.state
    d = dockings.still_on_port(state, port)
    if d is None:
        return None
    hints = dict(hints or {})
    snap = pipe.registry.select(root, hints).snapshot(root, hints, now=state.clock())
    if snap.identity.serial == d["serial"]:
        scan = scan_recorder(root, pipe.profile(d["profile"] or ""))
        seen = clips.paths_of_serial(state, d["serial"])
        if all((e.rel_path, e.size) in seen for e in scan.entries):
            restore_tile(pipe, port, d)
            log.info("port %s serial %s: resuming docking %d (recorder still docked, nothing "
                     "new on it)", port, d["serial"], d["id"])
            # its finishing (if still due) is the caller's: the daemon's finisher, or
            # ``run_docking`` in place
            return int(d["id"])
    pipe.undocked(port)  # another recorder, or new clips: a new docking
    return None


def restore_tile(pipe: Pipeline, port: str, d: DockingRow) -> None:
    """The port tile as it was: this docking, its counts, its findings (read by docking id)."""
    n = clips.copied_so_far(pipe.state, d["id"])
    pipe.state.set_port(port, state="done", serial=d["serial"], docking_id=d["id"], error=None,
                        message="delivering", clips_done=n["n"], clips_total=d["clips_total"],
                        bytes_done=n["b"], bytes_total=d["bytes_total"], rate_bps=None)
    if d["state"] == "delivered":
        tiles.refresh_delivered_message(pipe.state, d["id"])
