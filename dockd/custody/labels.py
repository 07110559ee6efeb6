"""``dockd label`` (R4) and ``dockd retain`` (R7): changes after signing, as signed revisions.

Both work on a signed docking (it has a manifest) and on all or some of its clips:

* :func:`label` attaches a case number, party name, case handler and a note to the
  docking or to single clips (fields not given keep their value);
* :func:`retain` raises the retention class of clips (``permanent`` = legal hold). A lower
  class is refused for every clip (nothing changes) and the refusal is audited.

Each change is one transaction: the clips' new retention, the new revision (signed, chained
to the previous one, naming the original manifest), its delivery rows for every target and
the audit entry with the person who ran the command (and the approver, when named). The
revision is then delivered at once where the targets allow (see ``custody.publish``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import Config
from ..delivery.base import StorageTarget
from ..errors import DockdError
from ..integrity.manifest import canonical_bytes, manifest_sha256, sign_manifest
from ..integrity.revisions import (
    LABEL_FIELDS,
    RETENTION_ORDER,
    build_revision,
    check_upgrade,
    parse_revision,
)
from ..store import State, dumps, fleet
from ..store import custody as store
from .publish import clip_retention, deliver_custody

log = logging.getLogger(__name__)

MAX_LABEL = 400


def check_label_fields(fields: Mapping[str, str | None]) -> dict[str, str]:
    """The given label fields, validated (known names, printable, bounded length)."""
    out = {}
    for k, v in fields.items():
        if k not in LABEL_FIELDS:
            raise DockdError(f"unknown label field {k!r} (known: {', '.join(LABEL_FIELDS)})")
        if v is None:
            continue
        v = v.strip()
        if not v.isprintable() or len(v) > MAX_LABEL:
            raise DockdError(f"label {k}: control characters or longer than {MAX_LABEL}")
        out[k] = v
    if not out:
        raise DockdError("nothing to label: give at least one of --case-no, --party, "
                         "--handler, --note")
    return out


def _signed_docking(state: State, docking_id: int) -> dict[str, Any]:
    d = store.signed_docking(state, docking_id)
    if d is None:
        raise DockdError(f"no docking {docking_id}")
    if d["sha256"] is None:
        raise DockdError(f"docking {docking_id} is not signed yet (state {d['state']}); "
                         "labels and retention attach to a signed docking")
    return d


def _select_clips(state: State, docking_id: int, clips: Sequence[str]) -> list[dict[str, Any]]:
    rows = store.clips_with_retention(state, docking_id)
    if not clips:
        return rows
    by = {r["safe_name"]: r for r in rows} | {str(r["id"]): r for r in rows}
    missing = [c for c in clips if c not in by]
    if missing:
        raise DockdError(f"docking {docking_id} has no clip {', '.join(missing)} "
                         f"(its clips: {', '.join(r['safe_name'] for r in rows) or 'none'})")
    seen: dict[int, dict[str, Any]] = {}
    for c in clips:
        seen[by[c]["id"]] = by[c]
    return list(seen.values())


def _new_revision(state: State, cfg: Config, signer: Any, targets: Sequence[StorageTarget],
                  conn: Any, docking: Mapping[str, Any], *, kind: str, actor: str,
                  change: dict[str, Any], labels: dict[str, Any]) -> tuple[int, str]:
    prev = store.newest_revision_in(conn, docking["id"])
    seq = (prev["seq"] if prev else 0) + 1
    rows = store.clips_with_retention_in(conn, docking["id"])
    retention = {}
    for r in rows:
        ret = clip_retention(cfg, r["retention_class"], r["docked_at"])
        retention[r["safe_name"]] = {
            "class": ret.retention_class, "legal_hold": ret.legal_hold,
            "retain_until": ret.retain_until.isoformat() if ret.retain_until else None}
    doc = build_revision(dock_id=cfg.dock.id, docking_id=docking["id"],
                         prefix=docking["prefix"], manifest_sha=docking["sha256"], seq=seq,
                         prev_sha=prev["sha256"] if prev else None, created_at=state.now(),
                         actor=actor, key_id=signer.key_id, change=change, labels=labels,
                         retention=retention)
    body = canonical_bytes(doc)
    sig = sign_manifest(body, signer.private_key)
    digest = manifest_sha256(body)
    store.insert_revision(conn, docking_id=docking["id"], seq=seq, sha256=digest,
                          prev_sha256=prev["sha256"] if prev else None,
                          manifest_sha256=docking["sha256"], key_id=signer.key_id,
                          prefix=docking["prefix"], kind=kind, actor=actor,
                          created_at=state.now(), document=body, signature=sig,
                          targets=[t.name for t in targets])
    return seq, digest


def current_labels(state: State, docking_id: int) -> dict[str, Any]:
    """Labels of a docking as its newest revision states them."""
    doc = fleet.newest_revision_document(state, docking_id)
    if doc is None:
        return {"docking": {}, "clips": {}}
    labels = parse_revision(doc)["labels"]
    return {"docking": dict(labels.get("docking") or {}),
            "clips": dict(labels.get("clips") or {})}


def label(state: State, cfg: Config, signer: Any, targets: Sequence[StorageTarget], *,
          docking_id: int, clips: Sequence[str] = (), fields: Mapping[str, str | None],
          actor: str) -> dict[str, Any]:
    """Attach labels to a docking (no ``clips``) or to the named clips; see module doc."""
    values = check_label_fields(fields)
    docking = _signed_docking(state, docking_id)
    chosen = _select_clips(state, docking_id, clips) if clips else []
    with state.tx() as conn:
        labels = current_labels(state, docking_id)
        if clips:
            for c in chosen:
                labels["clips"][c["safe_name"]] = {**labels["clips"].get(c["safe_name"], {}),
                                                   **values}
        else:
            labels["docking"] = {**labels["docking"], **values}
        change = {"kind": "label", "fields": values,
                  "clips": [c["safe_name"] for c in chosen]}
        seq, digest = _new_revision(state, cfg, signer, targets, conn, docking, kind="label",
                                    actor=actor, change=change, labels=labels)
        state.audit("label", f"docking/{docking_id}",
                    {**change, "revision": seq, "revision_sha256": digest,
                     "prefix": docking["prefix"]}, actor=actor, conn=conn)
    landed = deliver_custody(state, cfg, targets, signer, ignore_backoff=True)
    log.info("docking %d labelled (revision %d, %s)", docking_id, seq, dumps(values))
    return {"docking_id": docking_id, "revision": seq, "revision_sha256": digest,
            "labels": labels, "delivered": landed}


def retain(state: State, cfg: Config, signer: Any, targets: Sequence[StorageTarget], *,
           docking_id: int, clips: Sequence[str] = (), retention_class: str, actor: str,
           reason: str = "") -> dict[str, Any]:
    """Raise the retention class of the docking's clips (all, or the named ones)."""
    if not reason.isprintable() or len(reason) > MAX_LABEL:
        raise DockdError(f"reason: control characters or longer than {MAX_LABEL}")
    if retention_class not in RETENTION_ORDER:
        raise DockdError(f"unknown retention class {retention_class!r} "
                         f"(known: {', '.join(RETENTION_ORDER)})")
    docking = _signed_docking(state, docking_id)
    chosen = _select_clips(state, docking_id, clips)
    raised = []
    try:
        for c in chosen:
            if check_upgrade(c["retention_class"], retention_class, c["safe_name"]):
                raised.append(c)
    except ValueError as exc:
        state.audit("retain_refused", f"docking/{docking_id}",
                    {"class": retention_class, "clips": [c["safe_name"] for c in chosen],
                     "why": str(exc)}, actor=actor)
        raise DockdError(str(exc)) from None
    if not raised:
        return {"docking_id": docking_id, "revision": None, "raised": [],
                "message": f"every clip already has retention {retention_class}"}
    with state.tx() as conn:
        for c in raised:
            store.set_retention_class(conn, c["id"], retention_class)
        change = {"kind": "retain", "class": retention_class, "reason": reason,
                  "clips": [c["safe_name"] for c in raised],
                  "from": {c["safe_name"]: c["retention_class"] for c in raised}}
        seq, digest = _new_revision(state, cfg, signer, targets, conn, docking, kind="retain",
                                    actor=actor, change=change,
                                    labels=current_labels(state, docking_id))
        state.audit("retention_change", f"docking/{docking_id}",
                    {**change, "revision": seq, "revision_sha256": digest,
                     "prefix": docking["prefix"]}, actor=actor, conn=conn)
    landed = deliver_custody(state, cfg, targets, signer, ignore_backoff=True)
    log.info("docking %d: retention of %d clip(s) raised to %s (revision %d)", docking_id,
             len(raised), retention_class, seq)
    return {"docking_id": docking_id, "revision": seq, "revision_sha256": digest,
            "raised": [c["safe_name"] for c in raised], "class": retention_class,
            "delivered": landed}
