"""Clearing recorders (R6): erase a clip from the recorder only after every required target
has a verified identical copy, and only after re-checking that the file still on the
recorder is the one that was delivered (same size, same SHA-256).

The database saying "delivered" is not enough: a copy can rot or be altered on the target
after it was verified (a slow delivery pass can take hours). So right before each erase,
inside the writable window, the recorder's file is hashed again *and* every required
target's copy is verified again (``verify_copy``: the target's own ``verify`` — a read-back
hash, or the store's checksum where the store proved it checks them). A copy that does not
verify stops the erase and is handed to ``on_mismatch`` (quarantine, send again, alarm); a
target that cannot be asked right now also stops the erase, without blame.

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
from typing import Any

from ..errors import DockdError
from ..ingest.offload import hash_file
from ..store import State, clips
from .base import StorageTarget

log = logging.getLogger(__name__)

POLICIES = ("never", "after_delivery")

VerifyCopy = Callable[[dict[str, object], str, str], bool]
"""(clip row, target name, key on the target) -> True when the target's copy verifies,
False when it provably does not; raises when the target cannot answer now."""
OnMismatch = Callable[[dict[str, object], list[str]], None]
"""(clip row, names of the targets whose copy did not verify) -> None."""


def verify_with(targets: Mapping[str, StorageTarget]) -> VerifyCopy:
    """A ``verify_copy`` asking each target itself (its ``verify``: read-back or proven
    store checksum). An unknown target name cannot vouch for anything."""

    def verify_copy(clip: dict[str, object], target: str, key: str) -> bool:
        t = targets.get(target)
        if t is None:
            raise DockdError(f"target {target} is not configured; cannot re-verify")
        return bool(t.verify(key, sha256=str(clip["sha256"]), size=int(clip["size"])))  # type: ignore[call-overload]

    return verify_copy


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
                   verify_copy: VerifyCopy,
                   writable: Callable[[], AbstractContextManager[object]] | None = None,
                   on_mismatch: OnMismatch | None = None) -> ClearOutcome:
    """Delete from the recorder at ``root`` every clip of ``serial`` that may be cleared.

    ``writable`` opens the window in which the recorder is writable (remount read-write for
    a real recorder; nothing for a directory tree) and closes it again afterwards.
    ``verify_copy`` re-verifies each required target's copy right before the erase.
    """
    out = ClearOutcome()
    candidates = []
    for row in clips.delivered_of_serial(state, serial):
        c: dict[str, Any] = dict(row)
        rows_t = clips.copies_of(state, c["id"])
        states = {r["target"]: r["state"] or "" for r in rows_t}
        c["_keys"] = {r["target"]: r["key"] for r in rows_t}
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
            try:
                size, digest = hash_file(path, chunk_size)
            except OSError as exc:  # a failing card or a recorder pulled out: erase nothing
                log.warning("port %s serial %s: cannot re-read %s on the recorder: %s; not "
                            "erased", port, serial, c["safe_name"], exc)
                out.kept.append((c["safe_name"], f"cannot re-read it on the recorder: "
                                                 f"{exc.strerror or exc}"))
                continue
            if size != c["size"] or digest != c["sha256"]:
                log.warning("port %s serial %s: %s on the recorder differs from the delivered "
                            "copy (sha256 %s vs %s): not erased", port, serial, c["safe_name"],
                            digest, c["sha256"])
                out.kept.append((c["safe_name"], "content on recorder differs from the "
                                                 "delivered copy"))
                continue
            why = _reverify_targets(c, required_targets, verify_copy, on_mismatch, port, serial)
            if why:
                out.kept.append((c["safe_name"], why))
                continue
            try:
                os.unlink(path)
            except OSError as exc:
                log.error("port %s serial %s: cannot erase %s: %s", port, serial,
                          c["safe_name"], exc)
                out.kept.append((c["safe_name"], f"erase failed: {exc.strerror or exc}"))
                continue
            with state.tx() as conn:
                clips.advance_in(conn, c["id"], "delivered", "cleared", state.now())
                state.audit("cleared", f"clip/{c['id']}",
                            {"serial": serial, "port": port, "name": c["safe_name"],
                             "sha256": digest, "size": size,
                             "targets": sorted(required_targets)}, conn=conn)
            out.cleared.append(c["safe_name"])
            log.info("port %s serial %s: erased %s from the recorder (verified on %s)", port,
                     serial, c["safe_name"], ", ".join(sorted(required_targets)))
    return out


def _reverify_targets(c: dict[str, object], required: Collection[str], verify_copy: VerifyCopy,
                      on_mismatch: OnMismatch | None, port: str, serial: str) -> str | None:
    """None when every required target's copy verifies now; else why the clip is kept."""
    keys: dict[str, str] = c["_keys"]  # type: ignore[assignment]
    bad: list[str] = []
    for t in sorted(required):
        try:
            ok = verify_copy(c, t, keys[t])
        except (DockdError, OSError) as exc:
            log.warning("port %s serial %s: %s: cannot re-verify the copy on %s before "
                        "erasing: %s; not erased", port, serial, c["safe_name"], t, exc)
            return f"copy on {t} could not be re-verified: {exc}"
        if not ok:
            bad.append(t)
    if not bad:
        return None
    log.error("port %s serial %s: %s: the copy on %s does not match SHA-256 %s any more; "
              "not erased from the recorder", port, serial, c["safe_name"], ", ".join(bad),
              c["sha256"])
    if on_mismatch is not None:
        on_mismatch(c, bad)
    return f"copy on {', '.join(bad)} does not verify (SHA-256 mismatch or missing)"
