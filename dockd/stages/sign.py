"""Stage 4: sign — the docking's manifest, its commit marker on every target.

Signing needs the whole docking: its offload ended (``offloaded`` or ``interrupted``) and
no clip is still being checked. One transaction builds and stores the signed manifest,
chains it to the dock's previous one, moves the checked clips to ``signed`` and makes
every clip and the manifest due on every target.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from ..delivery.early import used_prefix
from ..delivery.layout import clip_key, docking_prefix, recording_date
from ..errors import TransitionError
from ..integrity import checks
from ..integrity.manifest import build_manifest, canonical_bytes, manifest_sha256, sign_manifest
from ..store import clips, dockings, iso, parse_iso

if TYPE_CHECKING:
    from ..pipeline import Pipeline

log = logging.getLogger(__name__)

BUSY = ("copied", "probed")
"""Clip states that mean "still being checked"."""


def _json(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def ready_to_sign(pipe: Pipeline, docking_id: int) -> bool:
    """The offload ended and every copied clip is checked."""
    d = dockings.get(pipe.state, docking_id)
    if d["state"] not in ("offloaded", "interrupted"):
        return False
    return clips.count(pipe.state, docking_id, BUSY) == 0


def sign(pipe: Pipeline, docking_id: int) -> str:
    """Build, sign and store the docking's manifest; all its checked clips become signed.
    Returns the manifest's SHA-256 (the stored one when signed already)."""
    state, cfg, signer = pipe.state, pipe.cfg, pipe.signer
    with pipe.sign_lock, state.tx() as conn:
        d = dockings.get_in(conn, docking_id)
        if d["state"] in ("signed", "delivered"):
            return dockings.manifest_sha256(conn, docking_id)
        every = clips.all_in(conn, docking_id)
        if any(c["state"] in BUSY for c in every):
            raise TransitionError(f"docking {docking_id}: clips still being checked")
        checked = [c for c in every if c["state"] == "checked"]
        not_copied = [c for c in every if c["state"] == "discovered"]
        prev = dockings.last_manifest(conn, cfg.dock.id)
        seq = (prev["seq"] or 0) + 1 if prev else 1
        now = state.clock()
        snapshot = _json(d["snapshot"], {})
        snap = checks.snapshot_from_doc(snapshot)
        docked_at = parse_iso(d["docked_at"])
        assert docked_at is not None
        local_date = recording_date((parse_iso(c["start_utc"]) for c in checked), docked_at,
                                    cfg.tz)
        prefix = used_prefix(state, docking_id) or docking_prefix(
            snap.identity, docked_at, cfg.dock.id, d["port"], docking_id,
            local_date=local_date)  # clips delivered ahead of signing fixed it already
        continuity = _json(d["continuity"], {}) or {}
        extra: dict[str, Any] = {
            "continuity": continuity,
            "interrupted": d["state"] == "interrupted",
            "not_copied": [c["safe_name"] for c in not_copied],
            "skipped_already_delivered": d["skipped_known"] or 0,
            "copied_earlier_not_delivered": [
                {"clip": r["safe_name"], "docking_id": r["docking_id"]}
                for r in clips.names_of(conn, d["earlier_pending"])],
            "deadline_at": d["deadline_at"],
            "profile": d["profile"], "driver": d["driver"],
            "dock_clock": _json(d["dock_clock"], None) or None,
            "date_folder": local_date.isoformat(),
            "timezone": cfg.dock.timezone,
            "recorder_clock_set": dockings.clock_set_detail(conn, docking_id),
        }
        manifest = build_manifest(
            dock_id=cfg.dock.id, port=d["port"], docking_id=docking_id,
            docked_at=docked_at, recorder=snap.identity, health=snap.health,
            clips=[checks.manifest_clip(dict(c)) for c in checked],
            findings=[checks.finding_from_dict(f) for f in
                      [*_json(d["findings"], []), *continuity.get("findings", [])]],
            prev_manifest_sha256=prev["sha256"] if prev else None,
            key_id=signer.key_id, created_at=now, extra=extra, seq=seq,
            usb_serial=snapshot.get("usb_serial"))
        body = canonical_bytes(manifest)
        digest = manifest_sha256(body)
        signature = sign_manifest(body, signer.private_key)
        manifest_id = dockings.insert_manifest(
            conn, docking_id=docking_id, dock_id=cfg.dock.id, sha256=digest,
            prev_sha256=prev["sha256"] if prev else None, key_id=signer.key_id, prefix=prefix,
            created_at=iso(now) or "", body=body, signature=signature, seq=seq)
        stamp = state.now()
        for c in checked:
            clips.advance_in(conn, c["id"], "checked", "signed", stamp)
        dockings.queue_signed(conn, manifest_id,
                              [(c["id"], clip_key(prefix, c["safe_name"])) for c in checked],
                              [t.name for t in pipe.targets])
        dockings.advance_in(conn, docking_id, d["state"], "signed",
                            {"prefix": prefix, "signed_at": iso(now)})
        state.audit("signed", f"docking/{docking_id}",
                    {"manifest_sha256": digest, "clips": len(checked),
                     "key_id": signer.key_id}, conn=conn)
    log.info("port %s serial %s: docking %d signed (%d clips, manifest %s)", d["port"],
             d["serial"], docking_id, len(checked), digest)
    with state.tx() as conn:
        dockings.tile(conn, d["port"], docking_id, {"state": "done", "message": "delivering",
                                                    "updated_at": state.now()})
    return digest
