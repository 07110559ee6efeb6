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

log = logging.getLogger(__name__)


SEGMENT_MAX_ENTRIES = 5000
"""A segment holds at most this many entries (a long backlog becomes several)."""


SEGMENT_INTERVAL_S = 60.0
"""The daemon cuts a new audit segment at most this often (commands run by a person, and
``dockd ingest``, cut one at once)."""


def _segment_due(state: State) -> bool:
    row = state.query_one("SELECT max(created_at) AS t FROM audit_segments")
    last = parse_iso(row["t"]) if row else None
    return last is None or (state.clock() - last).total_seconds() >= SEGMENT_INTERVAL_S


def segment_key(dock_id: str, first: int, last: int) -> str:
    return f"{AUDIT_DIR}/{sanitize_component(dock_id)}/{segment_name(first, last)}"


def cut_segment(state: State, dock_id: str, signer: Any,
                targets: Sequence[StorageTarget]) -> int | None:
    """Sign every audit entry not yet in a segment as a new segment; its id, or None."""
    with state.tx() as conn:
        row = conn.execute("SELECT max(last_id) FROM audit_segments").fetchone()
        last = int(row[0] or 0)
        entries = db_entries(state, after_id=last, limit=SEGMENT_MAX_ENTRIES)
        if not entries:
            return None
        body = build_segment(dock_id, entries)
        sig = sign_manifest(body, signer.private_key)
        cur = conn.execute(
            "INSERT INTO audit_segments (dock_id, first_id, last_id, sha256, created_at, body, "
            "signature) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (dock_id, entries[0]["id"], entries[-1]["id"], hashlib.sha256(body).hexdigest(),
             state.now(), body, sig))
        seg_id = int(cur.lastrowid or 0)
        for t in targets:
            conn.execute("INSERT OR IGNORE INTO audit_segment_deliveries (segment_id, target, "
                         "state) VALUES (?, ?, 'pending')", (seg_id, t.name))
    log.info("audit entries %d..%d signed as segment %d", entries[0]["id"], entries[-1]["id"],
             seg_id)
    return seg_id


def _docking_retention(state: State, cfg: Config, docking_id: int) -> Retention:
    """The longest retention of any clip of a docking (for the docking's documents)."""
    rows = state.query("SELECT c.retention_class, k.docked_at FROM clips c JOIN dockings k "
                       "ON k.id = c.first_docking_id WHERE c.docking_id = ?", (docking_id,))
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
    rows = state.query(
        "SELECT dl.key, c.retention_class, k.docked_at FROM deliveries dl "
        "JOIN clips c ON c.id = dl.clip_id JOIN dockings k ON k.id = c.first_docking_id "
        "WHERE c.docking_id = ? AND dl.target = ? AND dl.state = 'delivered'",
        (docking_id, target.name))
    for r in rows:
        extend(r["key"], clip_retention(cfg, r["retention_class"], r["docked_at"]))
    m = state.query_one("SELECT m.prefix FROM manifests m JOIN manifest_deliveries md ON "
                        "md.manifest_id = m.id WHERE m.docking_id = ? AND md.target = ? AND "
                        "md.state = 'delivered'", (docking_id, target.name))
    if m is not None:  # the manifest and its signature are kept as long as the clips
        ret = _docking_retention(state, cfg, docking_id)
        extend(f"{m['prefix']}/{MANIFEST_NAME}", ret)
        extend(f"{m['prefix']}/{SIGNATURE_NAME}", ret)
    return len(rows)


def deliver_custody(state: State, cfg: Config, targets: Sequence[StorageTarget],
                    signer: Any, *, ignore_backoff: bool = False) -> int:
    """Deliver pending revisions and audit segments to every target; how many landed.
    Failures stay pending (retried with backoff) unless they can never succeed."""
    landed = 0
    by_name = {t.name: t for t in targets}
    due = "" if ignore_backoff else "AND (rd.next_try_at IS NULL OR rd.next_try_at <= :now)"
    now = state.now()
    for r in state.query(
            "SELECT r.id, r.docking_id, r.prefix, r.seq, r.kind, r.document, r.signature, "
            "r.key_id, rd.target FROM revision_deliveries rd JOIN revisions r "
            f"ON r.id = rd.revision_id WHERE rd.state = 'pending' {due} "
            "ORDER BY r.docking_id, r.seq", {"now": now}):
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
            _failed(state, cfg, "revision_deliveries", "revision_id", r["id"], target, exc)
            continue
        with state.tx() as conn:
            conn.execute("UPDATE revision_deliveries SET state = 'delivered', verified_at = ?, "
                         "last_error = NULL WHERE revision_id = ? AND target = ?",
                         (state.now(), r["id"], target.name))
            state.audit("revision_delivered", f"docking/{r['docking_id']}",
                        {"target": target.name, "revision": r["seq"], "kind": r["kind"],
                         "key": key, "retention_applied_to": extended}, conn=conn)
        landed += 1
    if ignore_backoff or _segment_due(state):
        while cut_segment(state, cfg.dock.id, signer, targets) is not None:
            pass
    for s in state.query(
            "SELECT s.id, s.dock_id, s.first_id, s.last_id, s.body, s.signature, sd.target "
            "FROM audit_segment_deliveries sd JOIN audit_segments s ON s.id = sd.segment_id "
            f"WHERE sd.state = 'pending' {due.replace('rd.', 'sd.')} ORDER BY s.id",
            {"now": now}):
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
            _failed(state, cfg, "audit_segment_deliveries", "segment_id", s["id"], target,
                    exc)
            continue
        with state.tx() as conn:
            conn.execute("UPDATE audit_segment_deliveries SET state = 'delivered', "
                         "verified_at = ?, last_error = NULL WHERE segment_id = ? AND "
                         "target = ?", (state.now(), s["id"], target.name))
        landed += 1
    return landed


def _failed(state: State, cfg: Config, table: str, idcol: str, ident: int,
            target: StorageTarget, exc: BaseException) -> None:
    retry = getattr(exc, "retry", True)
    log.warning("%s: custody document %s %d not delivered%s: %s", target.name, table, ident,
                "" if retry else " (permanent)", exc)
    with state.tx() as conn:
        row = conn.execute(f"SELECT attempts FROM {table} WHERE {idcol} = ? AND target = ?",
                           (ident, target.name)).fetchone()
        attempts = (row[0] if row else 0) + 1
        delay = retry_delay(attempts, cfg.delivery.retry_seconds)
        next_try = datetime.fromtimestamp(state.clock().timestamp() + delay, tz=UTC)
        conn.execute(f"UPDATE {table} SET attempts = ?, last_error = ?, state = ?, "
                     f"next_try_at = ? WHERE {idcol} = ? AND target = ?",
                     (attempts, str(exc), "pending" if retry else "failed", iso(next_try),
                      ident, target.name))
        if not retry:
            state.audit("delivery_failed", f"{table}/{ident}",
                        {"target": target.name, "error": str(exc)}, conn=conn)
    if not retry:
        from ..alerts import raise_alert

        raise_alert(state, level="alarm", kind="delivery_failed", subject=f"target/{target.name}",
                    message=f"{target.describe()}: custody document ({table} {ident}) "
                            f"cannot be delivered, not retrying: {exc}",
                    command=cfg.delivery.alert_command)
