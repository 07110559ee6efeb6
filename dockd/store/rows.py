"""Typed rows: what the store hands out, one ``TypedDict`` per table.

Rows stay plain dicts at run time (``row["sha256"]``), so callers and JSON views need no
conversion; the types let ``mypy --strict`` check every column name and its kind. Columns
a migration added later are ``NotRequired`` only where an old row can lack them, which
none can after migration: every column is present, many may be ``None``.
"""

from __future__ import annotations

from typing import TypedDict


class PortRow(TypedDict):
    port: str
    dock_id: str | None
    state: str
    serial: str | None
    docking_id: int | None
    clips_done: int
    clips_total: int
    bytes_done: int
    bytes_total: int
    rate_bps: float | None
    message: str | None
    error: str | None
    updated_at: str | None


class DockingRow(TypedDict):
    id: int
    serial: str
    port: str
    dock_id: str | None
    root: str | None
    state: str
    docked_at: str
    undocked_at: str | None
    deadline_at: str | None
    driver: str | None
    profile: str | None
    snapshot: str | None
    findings: str | None
    clock_offset_s: float | None
    clips_total: int | None
    bytes_total: int | None
    skipped_known: int | None
    prefix: str | None
    error: str | None
    signed_at: str | None
    delivered_at: str | None
    continuity: str | None
    dock_clock: str | None
    incomplete: int | None
    resolved_by: int | None
    acked_at: str | None
    acked_by: str | None
    earlier_pending: str | None


class ClipRow(TypedDict):
    id: int
    docking_id: int
    first_docking_id: int | None
    serial: str
    rel_path: str  # decoded with os.fsdecode (surrogates keep odd bytes)
    safe_name: str
    size: int | None
    mtime: float | None
    state: str
    sha256: str | None
    staged_path: str | None
    probe: str | None
    findings: str | None
    start_recorded: str | None
    start_utc: str | None
    duration_s: float | None
    deadline_at: str | None
    error: str | None
    attempts: int
    created_at: str | None
    updated_at: str | None
    copied_at: str | None
    delivered_at: str | None
    retention_class: str | None


class DeliveryRow(TypedDict):
    clip_id: int
    target: str
    state: str | None
    key: str | None
    attempts: int
    last_error: str | None
    next_try_at: str | None
    verified_at: str | None


class ManifestRow(TypedDict):
    id: int
    docking_id: int
    dock_id: str | None
    sha256: str
    prev_sha256: str | None
    key_id: str | None
    prefix: str | None
    created_at: str | None
    manifest: bytes
    signature: bytes
    seq: int | None


class GapRow(TypedDict):
    id: int
    docking_id: int
    kind: str
    before_clip: int | None
    after_clip: int | None
    start: str | None
    end: str | None
    length_s: float | None
    verdict: str | None
    speech_start_s: float | None
    speech_end_s: float | None
    transcript: str | None
    reason: str | None
    confidence: float | None
    language: str | None
    needs_review: int | None
    error: str | None
    analyzed_at: str | None


# --- rows of the docking stages (dockd.store.dockings / dockd.store.clips) --------------


class SameNameClip(ClipRow):
    """A clip row with the state of the docking it belongs to (registration's look-up)."""

    docking_state: str


class CountBytes(TypedDict):
    n: int
    b: int


class IdSha(TypedDict):
    id: int
    sha256: str | None


class IdPort(TypedDict):
    id: int
    port: str


class IdRoot(TypedDict):
    id: int
    root: str | None


class OpenDocking(TypedDict):
    id: int
    port: str
    state: str
    serial: str


class PathSize(TypedDict):
    rel_path: str
    size: int | None


class NameDocking(TypedDict):
    safe_name: str
    docking_id: int


class LastManifest(TypedDict):
    sha256: str
    seq: int | None


class TargetCopy(TypedDict):
    target: str
    state: str | None
    key: str | None


class RecorderRow(TypedDict):
    serial: str
    officer_no: str | None
    officer_name: str | None
    unit_no: str | None
    unit_name: str | None
    vendor: str | None
    model: str | None
    firmware: str | None
    first_seen: str | None
    last_seen: str | None
    last_port: str | None
    last_battery: int | None
    last_clock_offset_s: float | None
    last_storage_total: int | None
    last_storage_free: int | None


class HealthRow(TypedDict):
    id: int
    ts: str
    serial: str
    docking_id: int | None
    source: str | None
    battery: int | None
    storage_total: int | None
    storage_free: int | None
    clip_count: int | None
    oldest_clip_age_s: float | None
    fs_check: str | None
    fs_detail: str | None
    firmware: str | None
    clock_offset_s: float | None


class AlertRow(TypedDict):
    id: int
    ts: str | None
    level: str
    kind: str
    subject: str
    message: str | None
    resolved_at: str | None
    hook_status: str | None


class AlertBriefRow(TypedDict):
    ts: str | None
    level: str
    kind: str
    subject: str
    message: str | None


class AuditRow(TypedDict):
    id: int
    ts: str
    actor: str
    action: str
    subject: str
    detail: str
    prev_hash: str
    hash: str


class RevisionRow(TypedDict):
    id: int
    docking_id: int
    seq: int
    sha256: str
    prev_sha256: str | None
    manifest_sha256: str | None
    key_id: str | None
    prefix: str | None
    kind: str | None
    actor: str | None
    created_at: str | None
    document: bytes
    signature: bytes


class AuditSegmentRow(TypedDict):
    id: int
    dock_id: str | None
    first_id: int
    last_id: int
    sha256: str | None
    created_at: str | None
    body: bytes
    signature: bytes


class CheckpointRow(TypedDict):
    id: int
    target: str
    dock_id: str
    seq: int
    head: str | None
    key: str | None
    created_at: str
    body: bytes | None
    token: bytes | None
    published_at: str | None
    error: str | None


# -- the status views' joins and aggregates ----------------------------------------------


class PortViewRow(PortRow):
    """A port with the recorder on it (``LEFT JOIN recorders``)."""

    officer_no: str | None
    officer_name: str | None
    unit_name: str | None
    last_battery: int | None


class BacklogRow(TypedDict):
    docking_id: int
    serial: str
    port: str
    docked_at: str
    deadline_at: str | None
    clips: int
    bytes: int | None
    states: str | None  # comma-separated, distinct


class DeliveryErrorRow(TypedDict):
    clip_id: int
    target: str
    attempts: int
    last_error: str | None
    state: str | None
    next_try_at: str | None


class IncompleteRow(TypedDict):
    id: int
    serial: str
    port: str
    docked_at: str
    undocked_at: str | None
    incomplete: int
    clips_total: int | None
    error: str | None
    officer_no: str | None
    officer_name: str | None


class PendingRow(TypedDict):
    """One docking's clips not yet verified on one target."""

    id: int
    serial: str
    port: str
    docked_at: str
    deadline: str | None
    n: int
    b: int
    failed: int | None

class DueClipRow(TypedDict):
    """A clip copy the delivery stage is to send (deliveries joined with clip and docking)."""

    clip_id: int
    target: str
    key: str | None
    staged_path: str | None
    sha256: str
    size: int
    docking_id: int
    safe_name: str
    retention_class: str | None
    docked_at: str


class DueManifestRow(TypedDict):
    id: int
    docking_id: int
    prefix: str
    manifest: bytes
    signature: bytes
    key_id: str | None
    target: str


class ReadyClipRow(TypedDict):
    id: int
    docking_id: int
    safe_name: str


class WhoRow(TypedDict, total=False):
    """Port, serial and name for a log line (``state`` where a docking's is read too)."""

    port: str
    serial: str
    safe_name: str
    state: str


class LandedClipRow(TypedDict):
    """What recording a landed copy needs of its clip and docking, read in one query inside
    the landing transaction (``deliveries.landed_clip``)."""

    clip_state: str
    docking_id: int
    serial: str
    staged_path: str | None
    safe_name: str
    docking_state: str
    port: str
    delivered_to: str
    """The targets holding a verified copy, a JSON list (this one included)."""
