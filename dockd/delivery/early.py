"""Making room in staging: deliver a docking's clips before its manifest exists.

A recorder can hold more footage than the staging disk has room for. Staging frees up only
when clips are delivered, and normal delivery starts only once the whole docking is
signed — so without this the docking would wait forever. When a copy hits ``StagingFull``
the offload asks ``make_room``: the clips already copied are probed and checked, sent to
every target (each one verified by the target, as always), recorded as delivered there,
and removed from staging. The docking is signed later as usual; its manifest is still the
commit marker and is delivered last, after every clip it lists (``deliver_pending`` waits
for that), so a docking directory with a manifest is still complete by construction.

``promote_delivered`` runs after signing: a signed clip whose copies all landed early is
moved on to ``delivered`` in the same way the upload queue would have done.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from datetime import tzinfo
from pathlib import Path
from typing import Any

from ..errors import DeliveryError
from ..integrity import checks
from ..store import State, parse_iso
from .base import StorageTarget
from .layout import clip_key, docking_prefix, recording_date
from .targets import retention_for

log = logging.getLogger(__name__)


def used_prefix(state: State, docking_id: int) -> str | None:
    """The folder this docking's clips already went to (delivered ahead of signing), if any:
    every later clip and the manifest must land in the same one."""
    row = state.query_one("SELECT d.key FROM deliveries d JOIN clips c ON c.id = d.clip_id "
                          "WHERE c.docking_id = ? AND d.key IS NOT NULL AND d.key != '' "
                          "ORDER BY d.rowid LIMIT 1", (docking_id,))
    return str(row["key"]).rsplit("/", 1)[0] if row else None


def docking_prefix_of(state: State, docking_id: int, dock_id: str, tz: tzinfo) -> str:
    """The docking's folder on the targets, exactly as signing will name it: the one its
    clips already went to, or the recording's local date of the clips checked so far."""
    used = used_prefix(state, docking_id)
    if used:
        return used
    d = state.docking(docking_id)
    snap = checks.snapshot_from_doc(json.loads(d["snapshot"] or "{}"))
    docked_at = parse_iso(d["docked_at"])
    assert docked_at is not None
    local_date = recording_date((parse_iso(c["start_utc"]) for c in state.query(
        "SELECT start_utc FROM clips WHERE docking_id = ? AND state = 'checked'",
        (docking_id,))), docked_at, tz)
    return docking_prefix(snap.identity, docked_at, dock_id, d["port"], docking_id,
                          local_date=local_date)


def make_room(pipe: Any, docking_id: int, should_stop: Callable[[], bool]) -> int:
    """Deliver the docking's copied clips to every target and drop them from staging.
    Returns the bytes freed."""
    pipe.process(docking_id)  # copied -> probed -> checked: what the manifest will say
    state: State = pipe.state
    targets: list[StorageTarget] = list(pipe.targets)
    prefix = docking_prefix_of(state, docking_id, pipe.cfg.dock.id, pipe.cfg.tz)
    d = state.docking(docking_id)
    freed = 0
    for c in state.query("SELECT c.*, k.docked_at FROM clips c JOIN dockings k ON "
                         "k.id = c.first_docking_id WHERE c.docking_id = ? AND "
                         "c.state = 'checked' ORDER BY c.deadline_at, c.id", (docking_id,)):
        staged = Path(c["staged_path"]) if c["staged_path"] else None
        if staged is None or not staged.is_file() or should_stop():
            continue
        key = clip_key(prefix, c["safe_name"])
        done = {r["target"] for r in state.query(
            "SELECT target FROM deliveries WHERE clip_id = ? AND state = 'delivered'",
            (c["id"],))}
        for t in targets:
            if t.name in done:
                continue
            try:
                retention = retention_for(pipe.cfg.retention, c["retention_class"] or
                                          pipe.cfg.retention.default_class,
                                          parse_iso(c["docked_at"]))  # type: ignore[arg-type]
                t.put_file(staged, key, sha256=c["sha256"], size=c["size"],
                           retention=retention)
                if not t.verify(key, sha256=c["sha256"], size=c["size"]):
                    raise DeliveryError(f"{t.name}: {key}: copy does not verify", retry=True)
            except (DeliveryError, OSError) as exc:
                log.warning("port %s serial %s: cannot deliver %s to %s ahead of signing to "
                            "make room in staging: %s", d["port"], d["serial"], c["safe_name"],
                            t.name, exc)
                continue
            with state.tx() as conn:
                conn.execute(
                    "INSERT INTO deliveries (clip_id, target, state, key, verified_at) "
                    "VALUES (?, ?, 'delivered', ?, ?) ON CONFLICT(clip_id, target) DO UPDATE "
                    "SET state = 'delivered', key = excluded.key, "
                    "verified_at = excluded.verified_at, last_error = NULL",
                    (c["id"], t.name, key, state.now()))
                state.audit("delivered_early", f"clip/{c['id']}",
                            {"target": t.name, "key": key, "sha256": c["sha256"]}, conn=conn)
            done.add(t.name)
        if {t.name for t in targets} <= done:
            freed += c["size"]
            staged.unlink(missing_ok=True)
            log.info("port %s serial %s: %s delivered ahead of signing to make room; left "
                     "staging", d["port"], d["serial"], c["safe_name"])
    return freed


def promote_delivered(state: State, docking_id: int, required: Collection[str]) -> int:
    """Signed clips of the docking whose copies are on every required target (delivered
    early) become ``delivered``. Returns how many."""
    moved = 0
    with state.tx() as conn:
        for c in conn.execute("SELECT id FROM clips WHERE docking_id = ? AND state = 'signed'",
                              (docking_id,)).fetchall():
            have = {r["target"] for r in conn.execute(
                "SELECT target FROM deliveries WHERE clip_id = ? AND state = 'delivered'",
                (c["id"],))}
            if required and set(required) <= have:
                state.advance_clip_in(conn, c["id"], "signed", "delivered",
                                    {"delivered_at": state.now()})
                moved += 1
    return moved
