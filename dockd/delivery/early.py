"""Clips delivered before their docking is signed, and making room in staging.

A clip is delivered as soon as it is ``checked``: the delivery stage
(:mod:`dockd.stages.deliver`) gives it a pending delivery per target in the docking's
folder (:func:`docking_prefix_of`, exactly as signing will name it) while the rest of the
recorder is still being copied. The manifest is still the commit marker and goes last, per
target, once the docking is signed and every clip it lists is on that target, so a docking
directory with a manifest is complete by construction.

A recorder can hold more footage than the staging disk has room for. When a copy hits
``StagingFull`` the offload asks :func:`make_room`: the clips already copied are probed
and checked, sent to every target now (each one verified by the target, as always), and
removed from staging once they are on every target — earlier than the usual rule (on every
required target and the docking signed, see ``deliver_steps.clip_landed``).

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

from ..integrity import checks
from ..store import State, deliveries, parse_iso
from .base import StorageTarget
from .layout import docking_prefix, recording_date

log = logging.getLogger(__name__)


def used_prefix(state: State, docking_id: int) -> str | None:
    """The folder this docking's clips already went to (delivered ahead of signing), if any:
    every later clip and the manifest must land in the same one."""
    key = deliveries.used_key(state, docking_id)
    return key.rsplit("/", 1)[0] if key else None


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
    local_date = recording_date((parse_iso(s) for s in deliveries.checked_starts(
        state, docking_id)), docked_at, tz)
    return docking_prefix(snap.identity, docked_at, dock_id, d["port"], docking_id,
                          local_date=local_date)


def make_room(pipe: Any, docking_id: int, should_stop: Callable[[], bool]) -> int:
    """Deliver the docking's copied clips to every target now and drop them from staging.
    Returns the bytes freed."""
    pipe.process(docking_id)  # copied -> probed -> checked: what the manifest will say
    state: State = pipe.state
    stage = pipe.delivery
    stage.prepare()  # a pending delivery per target, in the docking's folder
    targets: list[StorageTarget] = list(stage.targets)
    d = state.docking(docking_id)
    freed = 0
    for c in deliveries.checked_clips_for_room(state, docking_id):
        staged = Path(c["staged_path"]) if c["staged_path"] else None
        if staged is None or not staged.is_file() or should_stop():
            continue
        keys = deliveries.keys_of(state, c["clip_id"])
        with state.tx() as conn:
            done = deliveries.delivered_targets(conn, c["clip_id"])
        for t in targets:
            if t.name in done or t.name not in keys:
                continue
            if stage.deliver_now({**c, "target": t.name, "key": keys[t.name]}, t):
                state.audit("delivered_early", f"clip/{c['clip_id']}",
                            {"target": t.name, "key": keys[t.name], "sha256": c["sha256"]})
                done.add(t.name)
            else:
                log.warning("port %s serial %s: cannot deliver %s to %s ahead of signing to "
                            "make room in staging", d["port"], d["serial"], c["safe_name"],
                            t.name)
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
        for clip_id in deliveries.clips_with_state(conn, docking_id, "signed"):
            have = deliveries.delivered_targets(conn, clip_id)
            if required and set(required) <= have:
                state.advance_clip_in(conn, clip_id, "signed", "delivered",
                                      {"delivered_at": state.now()})
                moved += 1
    return moved
