"""Deliver what custody adds after signing: manifest revisions and audit-trail segments.

Both are small signed documents, recorded in the state database with one delivery row per
target, so a target that is down gets them later (the daemon's delivery round calls
:func:`deliver_custody`; ``dockd label``/``retain``/``export`` call it at once):

* a **revision** (``_revisions/<prefix>/NNNNNN.json`` + ``.sig``) lands after the
  retention it raises was applied to every clip object that target already holds (S3
  object lock: ``extend_retention``, legal hold for ``permanent``) — so a revision on a
  target means its retention is in force there;
* an **audit segment** (``_audit/<dock>/<first>-<last>.jsonl`` + ``.sig``) holds every
  entry since the previous segment; :func:`cut_segment` makes one whenever there are new
  entries. Segments are append-only: never rewritten, only followed.

Each delivered revision is itself an audit entry (``revision_delivered``, per target).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..config import Config
from ..delivery.base import Retention, StorageTarget
from ..delivery.layout import MANIFEST_NAME, SIGNATURE_NAME, key_path, sanitize_component
from ..delivery.targets import retention_for
from ..errors import DeliveryError
from ..integrity.audit import AUDIT_DIR, SIG_SUFFIX, build_segment, db_entries, segment_name
from ..integrity.manifest import sign_manifest
from ..integrity.revisions import rank, revision_key
from ..lifecycle import retry_delay
from ..store import State, iso, parse_iso
from ..store import audit as store_audit
from ..store import custody as store

log = logging.getLogger(__name__)


SEGMENT_MAX_ENTRIES = 5000
"""A segment holds at most this many entries (a long backlog becomes several)."""


SEGMENT_INTERVAL_S = 60.0
"""The daemon cuts a new audit segment at most this often (commands run by a person, and
``dockd ingest``, cut one at once)."""


def _segment_due(state: State) -> bool:
    last = parse_iso(store_audit.last_segment_at(state))
    return last is None or (state.clock() - last).total_seconds() >= SEGMENT_INTERVAL_S


def segment_key(dock_id: str, first: int, last: int) -> str:
    return f"{AUDIT_DIR}/{sanitize_component(dock_id)}/{segment_name(first, last)}"


def cut_segment(state: State, dock_id: str, signer: Any,
                targets: Sequence[StorageTarget]) -> int | None:
    """Sign every audit entry not yet in a segment as a new segment; its id, or None."""
    with state.tx() as conn:
        last = store_audit.last_segmented_id(conn)
        entries = db_entries(state, after_id=last, limit=SEGMENT_MAX_ENTRIES)
        if not entries:
            return None
        body = build_segment(dock_id, entries)
        sig = sign_manifest(body, signer.private_key)
        seg_id = store_audit.insert_segment(
            conn, dock_id=dock_id, first_id=entries[0]["id"], last_id=entries[-1]["id"],
            sha256=hashlib.sha256(body).hexdigest(), created_at=state.now(), body=body,
            signature=sig, targets=[t.name for t in targets])
    log.info("audit entries %d..%d signed as segment %d", entries[0]["id"], entries[-1]["id"],
             seg_id)
    return seg_id


def _docking_retention(state: State, cfg: Config, docking_id: int) -> Retention:
    """The longest retention of any clip of a docking (for the docking's documents)."""
    rows = store.clips_with_retention(state, docking_id)
    if not rows:
        d = state.docking(docking_id)
        rows = [{"retention_class": cfg.retention.default_class, "docked_at": d["docked_at"]}]
    best = max(rows, key=lambda r: (rank(r["retention_class"] or cfg.retention.default_class),
                                    r["docked_at"]))
    return retention_for(cfg.retention, best["retention_class"] or cfg.retention.default_class,
                         parse_iso(best["docked_at"]))  # type: ignore[arg-type]


def clip_retention(cfg: Config, retention_class: str, docked_at: str) -> Retention:
    when = parse_iso(docked_at)
    assert isinstance(when, datetime)
    return retention_for(cfg.retention, retention_class, when)


def _extend_clips(state: State, cfg: Config, target: StorageTarget, docking_id: int) -> int:
    """Apply each delivered clip's current retention on ``target`` (only ever longer)."""
    extend = getattr(target, "extend_retention", None)
    if extend is None:
        return 0
    rows = store.delivered_clip_keys(state, docking_id, target.name)
    for r in rows:
        extend(r["key"], clip_retention(cfg, r["retention_class"], r["docked_at"]))
    prefix = store.delivered_manifest_prefix(state, docking_id, target.name)
    if prefix is not None:  # the manifest and its signature are kept as long as the clips
        ret = _docking_retention(state, cfg, docking_id)
        extend(f"{prefix}/{MANIFEST_NAME}", ret)
        extend(f"{prefix}/{SIGNATURE_NAME}", ret)
    return len(rows)


def deliver_custody(state: State, cfg: Config, targets: Sequence[StorageTarget],
                    signer: Any, *, ignore_backoff: bool = False) -> int:
    """Deliver pending revisions and audit segments to every target; how many landed.
    Failures stay pending (retried with backoff) unless they can never succeed."""
    landed = 0
    by_name = {t.name: t for t in targets}
    now = state.now()
    for r in store.pending_revisions(state, now, ignore_backoff=ignore_backoff):
        target = by_name.get(r["target"])
        if target is None:
            continue
        key = revision_key(r["prefix"], r["seq"])
        try:
            extended = _extend_clips(state, cfg, target, r["docking_id"])
            retention = _docking_retention(state, cfg, r["docking_id"])
            target.put_bytes(signer.public_pem, key_path(signer.key_id))
            target.put_bytes(bytes(r["document"]), key, retention=retention)
            target.put_bytes(bytes(r["signature"]), key + SIG_SUFFIX, retention=retention)
        except (DeliveryError, OSError) as exc:
            _failed(state, cfg, "revision", r["id"], target, exc)
            continue
        with state.tx() as conn:
            store.mark_delivered(conn, "revision", r["id"], target.name, state.now())
            state.audit("revision_delivered", f"docking/{r['docking_id']}",
                        {"target": target.name, "revision": r["seq"], "kind": r["kind"],
                         "key": key, "retention_applied_to": extended}, conn=conn)
        landed += 1
    if ignore_backoff or _segment_due(state):
        while cut_segment(state, cfg.dock.id, signer, targets) is not None:
            pass
    for s in store.pending_segments(state, now, ignore_backoff=ignore_backoff):
        target = by_name.get(s["target"])
        if target is None:
            continue
        key = segment_key(s["dock_id"], s["first_id"], s["last_id"])
        retention = retention_for(cfg.retention, "evidence", state.clock())
        try:
            target.put_bytes(signer.public_pem, key_path(signer.key_id))
            target.put_bytes(bytes(s["body"]), key, retention=retention)
            target.put_bytes(bytes(s["signature"]), key + SIG_SUFFIX, retention=retention)
        except (DeliveryError, OSError) as exc:
            _failed(state, cfg, "segment", s["id"], target, exc)
            continue
        with state.tx() as conn:
            store.mark_delivered(conn, "segment", s["id"], target.name, state.now())
        landed += 1
    return landed


def _failed(state: State, cfg: Config, kind: str, ident: int, target: StorageTarget,
            exc: BaseException) -> None:
    table = store.DELIVERY_TABLES[kind][0]
    retry = getattr(exc, "retry", True)
    log.warning("%s: custody document %s %d not delivered%s: %s", target.name, table, ident,
                "" if retry else " (permanent)", exc)
    with state.tx() as conn:
        attempts = store.attempts_of(conn, kind, ident, target.name) + 1
        delay = retry_delay(attempts, cfg.delivery.retry_seconds)
        next_try = datetime.fromtimestamp(state.clock().timestamp() + delay, tz=UTC)
        store.record_failure(conn, kind, ident, target.name, attempts=attempts, error=str(exc),
                             retry=retry, next_try_at=iso(next_try))
        if not retry:
            state.audit("delivery_failed", f"{table}/{ident}",
                        {"target": target.name, "error": str(exc)}, conn=conn)
    if not retry:
        from ..alerts import raise_alert

        raise_alert(state, level="alarm", kind="delivery_failed", subject=f"target/{target.name}",
                    message=f"{target.describe()}: custody document ({table} {ident}) "
                            f"cannot be delivered, not retrying: {exc}",
                    command=cfg.delivery.alert_command)
