"""Two recorders claiming the same serial at the same time.

A serial is what the recorder *says* it is (device-info file, vendor SDK). A cloned or
misconfigured recorder can say the same as another one, and both can be docked at once.
A clip's identity therefore is never (serial, path, size) alone: while two dockings of one
serial are active, each registers and copies its own clips, and what was already handled
is confirmed by SHA-256 (the pipeline's "known" check). The pipeline asks here:

* ``still_docked`` — is the recorder of an earlier active docking of this serial still
  there (its root still answers with the same serial)? Then the new docking is a second
  recorder, not the same one moved to another port.
* ``note_duplicate_serial`` — record the finding on every docking involved that is not yet
  signed (so it travels in their manifests) and raise an alert for the supervisor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..alerts import raise_alert
from ..errors import DockdError, StateError
from ..model import Finding
from ..store import State
from ..store import dockings as docking_rows

log = logging.getLogger(__name__)

KIND = "duplicate_serial"


def still_docked(registry: Any, root: str | None, serial: str, new_root: Path,
                 now: datetime) -> bool:
    """True when ``root`` (an earlier docking's recorder) still holds a recorder reporting
    ``serial`` and is not the tree now docking (the same tree under another port label is
    the same recorder)."""
    if not root:
        return False
    old = Path(root)
    try:
        if old.resolve() == new_root.resolve() or not old.is_dir():
            return False
        snap = registry.select(old, {}).snapshot(old, {}, now=now)
    except (DockdError, OSError, ValueError) as exc:
        log.debug("earlier recorder root %s no longer readable: %s", root, exc)
        return False
    return bool(snap.identity.serial == serial)


def note_duplicate_serial(state: State, serial: str, dockings: Sequence[tuple[int, str]], *,
                          alert_command: str = "") -> None:
    """``dockings``: (docking id, port) of every active docking of ``serial``."""
    ports = sorted({p for _, p in dockings})
    ids = sorted(d for d, _ in dockings)
    finding = Finding(KIND, "warning",
                      f"recorder serial {serial} was docked in {len(ports)} ports at once "
                      f"({', '.join(ports)}): two recorders report the same serial; each "
                      "one's clips are kept and delivered separately",
                      {"serial": serial, "ports": ports, "dockings": ids}).as_dict()
    with state.tx() as conn:
        for docking_id in ids:
            try:
                row = docking_rows.get_in(conn, docking_id)
            except StateError:
                continue
            if row["state"] not in ("offloading", "offloaded", "interrupted"):
                continue  # signed already: its manifest is written
            findings = json.loads(row["findings"] or "[]")
            docking_rows.set_findings(conn, docking_id,
                                      [f for f in findings if f.get("kind") != KIND] + [finding])
        state.audit(KIND, f"recorder/{serial}", {"ports": ports, "dockings": ids}, conn=conn)
    log.warning("serial %s: docked in ports %s at the same time: two recorders report the "
                "same serial", serial, ", ".join(ports))
    raise_alert(state, level="warning", kind=KIND, subject=f"recorder/{serial}",
                message=f"serial {serial} is docked in {', '.join(ports)} at the same time: "
                        "two recorders report the same serial (check the device info); "
                        "both recorders' clips are delivered separately",
                command=alert_command)
