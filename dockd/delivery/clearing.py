"""Clearing recorders (R6): erase a clip from the recorder only after every required target
has a verified identical copy, and only after re-checking that the file still on the
recorder is the one that was delivered (same size, same SHA-256).

``may_clear`` is the pure rule; ``clear_recorder`` applies it to a docked recorder. Every
deletion is one transaction (``delivered → cleared``) with its audit entry; a failure to
delete leaves the clip ``delivered`` and is reported, never retried blindly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..ingest.offload import hash_file
from ..state import State

log = logging.getLogger(__name__)

POLICIES = ("never", "after_delivery")


def may_clear(required: Collection[str], delivery_states: Mapping[str, str], *,
              clip_state: str) -> bool:
    """True only when the clip is ``delivered`` and every required target has verified it."""
    if clip_state != "delivered" or not required:
        return False
    return all(delivery_states.get(t) == "delivered" for t in required)


@dataclass
class ClearOutcome:
    cleared: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def as_dict(self) -> dict[str, object]:
        return {"cleared": self.cleared, "kept": [{"name": n, "why": w} for n, w in self.kept]}


def clear_recorder(state: State, *, serial: str, root: Path, port: str,
                   required_targets: Collection[str], chunk_size: int = 4 * 1024 * 1024,
                   writable: Callable[[], AbstractContextManager[object]] | None = None
                   ) -> ClearOutcome:
    """Delete from the recorder at ``root`` every clip of ``serial`` that may be cleared.

    ``writable`` opens the window in which the recorder is writable (remount read-write for
    a real recorder; nothing for a directory tree) and closes it again afterwards.
    """
    out = ClearOutcome()
    rows = state.query("SELECT * FROM clips WHERE serial = ? AND state = 'delivered' "
                       "ORDER BY id", (serial,))
    candidates = []
    for c in rows:
        states = {r["target"]: r["state"] for r in state.query(
            "SELECT target, state FROM deliveries WHERE clip_id = ?", (c["id"],))}
        if not may_clear(required_targets, states, clip_state=c["state"]):
            out.kept.append((c["safe_name"], "not verified on every required target"))
            continue
        path = root / c["rel_path"]
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # not on this recorder (any more)
        if not os.path.isfile(path) or os.path.islink(path):
            out.kept.append((c["safe_name"], "not a regular file on the recorder"))
            continue
        if st.st_size != c["size"]:
            out.kept.append((c["safe_name"], f"size on recorder {st.st_size} != delivered "
                                             f"{c['size']}"))
            continue
        candidates.append((c, path))
    if not candidates:
        return out
    with (writable or nullcontext)():
        for c, path in candidates:
            size, digest = hash_file(path, chunk_size)
            if size != c["size"] or digest != c["sha256"]:
                log.warning("port %s serial %s: %s on the recorder differs from the delivered "
                            "copy (sha256 %s vs %s): not erased", port, serial, c["safe_name"],
                            digest, c["sha256"])
                out.kept.append((c["safe_name"], "content on recorder differs from the "
                                                 "delivered copy"))
                continue
            try:
                os.unlink(path)
            except OSError as exc:
                log.error("port %s serial %s: cannot erase %s: %s", port, serial,
                          c["safe_name"], exc)
                out.kept.append((c["safe_name"], f"erase failed: {exc.strerror or exc}"))
                continue
            with state.tx() as conn:
                state._advance_clip(conn, c["id"], "delivered", "cleared", {})
                state.audit("cleared", f"clip/{c['id']}",
                            {"serial": serial, "port": port, "name": c["safe_name"],
                             "sha256": digest, "size": size,
                             "targets": sorted(required_targets)}, conn=conn)
            out.cleared.append(c["safe_name"])
            log.info("port %s serial %s: erased %s from the recorder (verified on %s)", port,
                     serial, c["safe_name"], ", ".join(sorted(required_targets)))
    return out
