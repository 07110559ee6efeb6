"""A delivered copy found corrupt or missing on a target after it was verified.

Clearing re-verifies every required target's copy right before it erases a clip from the
recorder (:mod:`dockd.delivery.clearing`). When a copy no longer matches, the clip is *not*
delivered any more, whatever the database said: ``repair_copies`` makes the state tell the
truth again and starts the cure.

* The copy is moved aside where the target can do that (``quarantine``: a local target),
  and the clip is sent again: the staged file is re-created from the recorder when staging
  no longer holds it (the recorder's file was just re-hashed and matches the clip's
  SHA-256), the delivery goes back to ``pending`` and the clip back to ``signed``.
* A target that cannot replace a stored object (S3 with object lock, an SFTP server) keeps
  the bad copy for investigation; the delivery is marked ``failed`` (operator action), the
  clip goes back to ``signed`` and so is never erased from the recorder.
* Either way an alarm is raised and the finding is in the audit trail.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ..alerts import raise_alert
from ..errors import DeliveryError, DockdError
from ..ingest.offload import copy_clip, hash_file
from ..model import ClipEntry
from ..store import State, deliveries
from .base import StorageTarget

log = logging.getLogger(__name__)


def repair_copies(state: State, clip: Mapping[str, Any], bad: Collection[str], *,
                  targets: Mapping[str, StorageTarget], staging_dir: Path,
                  root: Path | None, chunk_size: int = 4 * 1024 * 1024,
                  alert_command: str = "") -> dict[str, str]:
    """Handle the copies of ``clip`` on the targets named in ``bad`` that did not verify.
    Returns {target: "resend" | "operator"}."""
    clip_id = int(clip["id"])
    keys: Mapping[str, str] = clip.get("_keys") or deliveries.keys_of(state, clip_id)
    outcome: dict[str, str] = {}
    for name in sorted(bad):
        target = targets.get(name)
        quarantine = getattr(target, "quarantine", None)
        moved = None
        if quarantine is not None:
            try:
                moved = quarantine(keys[name])
            except DeliveryError as exc:
                if target is not None and target.stat(keys[name]) is None:
                    moved = "(missing: nothing to move)"  # gone altogether: just send again
                else:
                    log.error("%s: %s: cannot quarantine the bad copy: %s", name, keys[name], exc)
        outcome[name] = "resend" if moved else "operator"
        state.audit("corrupt_copy", f"clip/{clip_id}",
                    {"target": name, "key": keys[name], "expected_sha256": clip["sha256"],
                     "moved_to": moved, "action": outcome[name]})
    staged = _restage(clip, staging_dir, root, chunk_size) if "resend" in outcome.values() \
        else None
    if "resend" in outcome.values() and staged is None:
        outcome = {n: "operator" for n in outcome}  # nothing to send from
    with state.tx() as conn:
        for name, action in outcome.items():
            deliveries.reset_for_repair(
                conn, clip_id, name, resend=action == "resend",
                error="copy on the target did not verify when re-checked before clearing"
                + ("; sending again" if action == "resend" else
                   "; target cannot replace it: operator action needed"))
        found = deliveries.clip_docking(conn, clip_id)
        if found is not None and found[1] == "delivered":
            state.advance_clip_in(conn, clip_id, "delivered", "signed",
                                  {"staged_path": str(staged) if staged else clip["staged_path"]})
        who = deliveries.docking_who(conn, found[0]) if found is not None else None
        if found is not None and who is not None and who.get("state") == "delivered":
            state.advance_docking_in(conn, found[0], "delivered", "signed", {})
    raise_alert(state, level="alarm", kind="corrupt_copy", subject=f"clip/{clip_id}",
                message=f"{clip['safe_name']}: the copy on {', '.join(sorted(bad))} does not "
                        f"match SHA-256 {clip['sha256']}; not erased from the recorder; "
                        + ", ".join(f"{n}: {'sent again' if a == 'resend' else 'operator action'}"
                                    for n, a in sorted(outcome.items())),
                command=alert_command)
    return outcome


def _restage(clip: Mapping[str, Any], staging_dir: Path, root: Path | None,
             chunk_size: int) -> Path | None:
    """A staged file holding the clip's exact bytes: the one still in staging, or a fresh
    copy from the recorder (checked against the clip's SHA-256). None when neither exists."""
    staged = Path(clip["staged_path"]) if clip.get("staged_path") else None
    if staged is not None and staged.is_file():
        try:
            if hash_file(staged, chunk_size) == (clip["size"], clip["sha256"]):
                return staged
        except OSError:
            pass
    if root is None:
        return None
    entry = ClipEntry(clip["rel_path"], clip["safe_name"], int(clip["size"]),
                      float(clip["mtime"] or 0))
    try:
        staging_dir.mkdir(parents=True, exist_ok=True)
        res = copy_clip(root, entry, staging_dir, chunk_size=chunk_size)
    except (DockdError, OSError) as exc:
        log.error("%s: cannot stage it again from the recorder: %s", clip["safe_name"], exc)
        return None
    if (res.size, res.sha256) != (clip["size"], clip["sha256"]):
        log.error("%s: the recorder's file changed while staging it again", clip["safe_name"])
        res.staged_path.unlink(missing_ok=True)
        return None
    return res.staged_path


def docking_complete_in(state: State, conn: sqlite3.Connection, docking_id: int,
                        required: Collection[str]) -> bool:
    """After a re-sent clip landed, inside the caller's transaction: move a docking the
    caller read as ``signed``, whose manifest is already on every required target and whose
    clips are all delivered, back to ``delivered``. The manifest is looked at first (two
    primary-key reads): it lands on a target only after all the docking's clips are on it,
    so while clips are still landing it is not on every required target and the docking's
    clips are never counted; only a re-sent copy (repair) gets as far as the count."""
    have = deliveries.docking_manifest_targets(conn, docking_id)
    if not set(required) <= have or deliveries.count_clips(conn, docking_id, "signed"):
        return False
    state.advance_docking_in(conn, docking_id, "signed", "delivered",
                             {"delivered_at": state.now()})
    state.audit("delivered", f"docking/{docking_id}", {"targets": sorted(have),
                                                       "after": "re-sent copy"}, conn=conn)
    return True
