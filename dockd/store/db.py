"""Durable state: SQLite (WAL) through sqlite-utils, schema migrations, atomic transitions.

One ``State`` object per process owns one connection; every write goes through
:meth:`State.tx`, which holds a lock and an ``BEGIN IMMEDIATE`` transaction, so each
state transition is exactly one transaction. A process killed at any moment leaves every
clip in its last committed state; the daemon resumes from there.

Read-only views (``dockd status`` in another process) open the same file with
:func:`dockd.store.readonly.open_readonly`, which never migrates.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from ..errors import StateError, TransitionError
from ..lifecycle import check_clip_edge, check_docking_edge

if TYPE_CHECKING:  # imported by the writer only: sqlite-utils pulls in numpy (~0.5 s)
    import sqlite_utils

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        raise ValueError("naive datetime given to state layer")
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


Params = Sequence[Any] | Mapping[str, Any]
"""Query parameters: positional (``?``) or named (``:name``)."""


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


# --------------------------------------------------------------------------- schema


def _m1_initial(db: sqlite_utils.Database) -> None:
    db.table("ports").create({
        "port": str, "dock_id": str, "state": str, "serial": str, "docking_id": int,
        "clips_done": int, "clips_total": int, "bytes_done": int, "bytes_total": int,
        "rate_bps": float, "message": str, "error": str, "updated_at": str,
    }, pk="port", not_null={"state"}, defaults={"state": "empty", "clips_done": 0,
                                                  "clips_total": 0, "bytes_done": 0,
                                                  "bytes_total": 0})
    db.table("recorders").create({
        "serial": str, "officer_no": str, "officer_name": str, "unit_no": str,
        "unit_name": str, "vendor": str, "model": str, "firmware": str,
        "first_seen": str, "last_seen": str, "last_port": str, "last_battery": int,
        "last_clock_offset_s": float, "last_storage_total": int, "last_storage_free": int,
    }, pk="serial")
    db.table("dockings").create({
        "id": int, "serial": str, "port": str, "dock_id": str, "root": str,
        "state": str, "docked_at": str, "undocked_at": str, "deadline_at": str,
        "driver": str, "profile": str, "snapshot": str, "findings": str,
        "clock_offset_s": float, "clips_total": int, "bytes_total": int,
        "skipped_known": int, "prefix": str, "error": str,
        "signed_at": str, "delivered_at": str,
    }, pk="id", not_null={"serial", "port", "state", "docked_at"},
        foreign_keys=[("serial", "recorders", "serial")])
    db.table("clips").create({
        "id": int, "docking_id": int, "first_docking_id": int, "serial": str,
        "rel_path": bytes, "safe_name": str, "size": int, "mtime": float,
        "state": str, "sha256": str, "staged_path": str, "probe": str, "findings": str,
        "start_recorded": str, "start_utc": str, "duration_s": float,
        "deadline_at": str, "error": str, "attempts": int,
        "created_at": str, "updated_at": str, "copied_at": str, "delivered_at": str,
    }, pk="id", not_null={"docking_id", "serial", "rel_path", "safe_name", "state"},
        defaults={"attempts": 0},
        foreign_keys=[("docking_id", "dockings", "id")])
    db.table("clips").create_index(["docking_id", "safe_name"], unique=True)
    db.table("clips").create_index(["serial", "rel_path"])
    db.table("clips").create_index(["state", "deadline_at"])
    db.table("deliveries").create({
        "clip_id": int, "target": str, "state": str, "key": str, "attempts": int,
        "last_error": str, "next_try_at": str, "verified_at": str,
    }, pk=("clip_id", "target"), defaults={"attempts": 0},
        foreign_keys=[("clip_id", "clips", "id")])
    db.table("manifests").create({
        "id": int, "docking_id": int, "dock_id": str, "sha256": str, "prev_sha256": str,
        "key_id": str, "prefix": str, "created_at": str, "manifest": bytes,
        "signature": bytes,
    }, pk="id", not_null={"docking_id", "sha256", "manifest", "signature"})
    db.table("manifests").create_index(["docking_id"], unique=True)
    db.table("manifests").create_index(["sha256"], unique=True)
    db.table("manifest_deliveries").create({
        "manifest_id": int, "target": str, "state": str, "attempts": int,
        "last_error": str, "next_try_at": str, "verified_at": str,
    }, pk=("manifest_id", "target"), defaults={"attempts": 0})
    db.table("audit").create({
        "id": int, "ts": str, "actor": str, "action": str, "subject": str,
        "detail": str, "prev_hash": str, "hash": str,
    }, pk="id")


def _m2_continuity(db: sqlite_utils.Database) -> None:
    db.table("dockings").add_column("continuity", str)
    db.table("gaps").create({
        "id": int, "docking_id": int, "kind": str, "before_clip": int, "after_clip": int,
        "start": str, "end": str, "length_s": float, "verdict": str,
        "speech_start_s": float, "speech_end_s": float, "transcript": str, "reason": str,
        "confidence": float, "language": str, "needs_review": int, "error": str,
        "analyzed_at": str,
    }, pk="id", not_null={"docking_id", "kind"},
        foreign_keys=[("docking_id", "dockings", "id")])
    db.table("gaps").create_index(["docking_id"])


def _m3_retention(db: sqlite_utils.Database) -> None:
    db.table("clips").add_column("retention_class", str)
    db.execute("UPDATE clips SET retention_class = 'standard' WHERE retention_class IS NULL")


def _m4_queue(db: sqlite_utils.Database) -> None:
    db.table("transfers").create({
        "id": int, "ts": str, "target": str, "bytes": int, "seconds": float,
    }, pk="id")
    db.table("transfers").create_index(["target", "ts"])
    db.table("alerts").create({
        "id": int, "ts": str, "level": str, "kind": str, "subject": str, "message": str,
        "resolved_at": str, "hook_status": str,
    }, pk="id", not_null={"level", "kind", "subject"})
    db.table("alerts").create_index(["kind", "subject", "resolved_at"])


def _m5_health(db: sqlite_utils.Database) -> None:
    """Recorder health history (R9) and the dock's NTP state per docking (R10); existing
    dockings get one reading each from their stored snapshot."""
    db.table("recorder_health").create({
        "id": int, "ts": str, "serial": str, "docking_id": int, "source": str,
        "battery": int, "storage_total": int, "storage_free": int, "clip_count": int,
        "oldest_clip_age_s": float, "fs_check": str, "fs_detail": str, "firmware": str,
        "clock_offset_s": float,
    }, pk="id", not_null={"ts", "serial"}, defaults={"fs_check": "not_run"},
        foreign_keys=[("serial", "recorders", "serial"), ("docking_id", "dockings", "id")])
    db.table("recorder_health").create_index(["serial", "ts"])
    db.table("dockings").add_column("dock_clock", str)
    db.execute(
        "INSERT INTO recorder_health (ts, serial, docking_id, source, battery, storage_total, "
        "storage_free, fs_check, firmware, clock_offset_s) "
        "SELECT docked_at, serial, id, 'docking', "
        "json_extract(snapshot, '$.health.battery_percent'), "
        "json_extract(snapshot, '$.health.storage_total'), "
        "json_extract(snapshot, '$.health.storage_free'), 'not_run', "
        "coalesce(json_extract(snapshot, '$.health.firmware'), ''), clock_offset_s "
        "FROM dockings WHERE json_valid(snapshot) ORDER BY id")


def _m6_custody(db: sqlite_utils.Database) -> None:
    """Signed manifest revisions (labels R4, retention R7) and delivered audit segments (R8),
    each with its per-target delivery state."""
    db.table("revisions").create({
        "id": int, "docking_id": int, "seq": int, "sha256": str, "prev_sha256": str,
        "manifest_sha256": str, "key_id": str, "prefix": str, "kind": str, "actor": str,
        "created_at": str, "document": bytes, "signature": bytes,
    }, pk="id", not_null={"docking_id", "seq", "sha256", "document", "signature"},
        foreign_keys=[("docking_id", "dockings", "id")])
    db.table("revisions").create_index(["docking_id", "seq"], unique=True)
    db.table("revision_deliveries").create({
        "revision_id": int, "target": str, "state": str, "attempts": int,
        "last_error": str, "next_try_at": str, "verified_at": str,
    }, pk=("revision_id", "target"), defaults={"attempts": 0})
    db.table("audit_segments").create({
        "id": int, "dock_id": str, "first_id": int, "last_id": int, "sha256": str,
        "created_at": str, "body": bytes, "signature": bytes,
    }, pk="id", not_null={"first_id", "last_id", "body", "signature"})
    db.table("audit_segment_deliveries").create({
        "segment_id": int, "target": str, "state": str, "attempts": int,
        "last_error": str, "next_try_at": str, "verified_at": str,
    }, pk=("segment_id", "target"), defaults={"attempts": 0})


def _m_trust(db: sqlite_utils.Database) -> None:
    """Deletion detection and trusted time (issue 9): each manifest's sequence number in its
    dock's chain (old manifests numbered in order), RFC 3161 tokens, published checkpoints
    and the target audit's re-read bookkeeping."""
    db.table("manifests").add_column("seq", int)
    db.execute(
        "UPDATE manifests SET seq = (SELECT count(*) FROM manifests m2 "
        "WHERE m2.dock_id = manifests.dock_id AND m2.id <= manifests.id)")
    db.table("timestamps").create({
        "subject": str, "sha256": str, "token": bytes, "created_at": str,
    }, pk="subject")
    db.table("checkpoints").create({
        "id": int, "target": str, "dock_id": str, "seq": int, "head": str, "key": str,
        "created_at": str, "body": bytes, "token": bytes, "published_at": str,
        "error": str,
    }, pk="id", not_null={"target", "dock_id", "seq", "created_at"})
    db.table("checkpoints").create_index(["target", "created_at"])
    db.table("target_audit").create({
        "target": str, "key": str, "rehashed_at": str, "problem": str,
    }, pk=("target", "key"))


def _m6_incomplete(db: sqlite_utils.Database) -> None:
    """What officers and IT see stays true: a docking closed with clips left on the recorder
    (``incomplete``: how many) until it is re-docked (``resolved_by``) or acknowledged
    (``acked_at``/``acked_by``); clips found again that an earlier docking copied but has not
    delivered yet (``earlier_pending``: JSON list of clip ids)."""
    cols = {c.name for c in db.table("dockings").columns}
    for name, kind in (("incomplete", int), ("resolved_by", int), ("acked_at", str),
                       ("acked_by", str), ("earlier_pending", str)):
        if name not in cols:
            db.table("dockings").add_column(name, kind)
    db.execute("UPDATE dockings SET incomplete = (SELECT count(*) FROM clips c WHERE "
               "c.docking_id = dockings.id AND c.state = 'discovered') "
               "WHERE state = 'interrupted' OR error LIKE 'recorder removed%'")
    db.execute("UPDATE dockings SET incomplete = NULL WHERE incomplete = 0")


FLEET_INDEXES: tuple[tuple[str, str], ...] = (
    # the clips not delivered yet: a small set however long the dock's history (backlog,
    # queue forecast, ports, clip counts); its rows come sorted by docking
    ("clips_pending", "clips (docking_id, state) WHERE state IN "
                      "('discovered', 'copied', 'probed', 'checked', 'signed')"),
    # a recorder's dockings (devices, report --serial, continuity across dockings)
    ("dockings_serial", "dockings (serial, id)"),
    # the open incomplete copies (status, kiosk, fleet)
    ("dockings_incomplete", "dockings (id) WHERE incomplete > 0"),
    # deliveries that failed and are not delivered (status, metrics)
    ("deliveries_errors",
     "deliveries (clip_id, target) WHERE last_error IS NOT NULL AND state != 'delivered'"),
    # the open alerts (queue, metrics, deadline check)
    ("alerts_open", "alerts (ts) WHERE resolved_at IS NULL"),
    # a target's newest transfers (the queue forecast's throughput)
    ("transfers_target_id", "transfers (target, id)"),
    # the health readings taken at one docking (the fleet's fitness verdicts)
    ("recorder_health_docking", "recorder_health (docking_id, ts)"),
    # audit entries of one kind (the last clock setting of each recorder)
    ("audit_action", "audit (action, id)"),
)
"""Indexes of the fleet-status migration: (name, ``table (columns) [WHERE ...]``)."""


def _m_fleet_status(db: sqlite_utils.Database) -> None:
    """Status at fleet scale (#13): indexes so that ``dockd status`` and the web views read
    only what they show with 100 000 clips and more (no full scan per port or recorder)."""
    for name, spec in FLEET_INDEXES:
        db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {spec}")


def _m_delivery_failed_index(db: sqlite_utils.Database) -> None:
    """A target's failed deliveries counted without a scan (#13: a landed copy asks whether
    its target's failure alarm can close): partial indexes over the failed rows only, so
    they cost nothing while deliveries go well."""
    db.execute("CREATE INDEX IF NOT EXISTS deliveries_failed ON deliveries (target) "
               "WHERE state = 'failed'")
    db.execute("CREATE INDEX IF NOT EXISTS manifest_deliveries_failed ON "
               "manifest_deliveries (target) WHERE state = 'failed'")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m1_initial, _m2_continuity, _m3_retention, _m4_queue, _m5_health, _m6_custody, _m_trust,
    _m6_incomplete, _m_fleet_status, _m_delivery_failed_index,
]
SCHEMA_VERSION = len(MIGRATIONS)


# --------------------------------------------------------------------------- the store


class Connection:
    """One SQLite connection behind one lock: the reading half shared by the writing
    :class:`State` and the read-only store (:mod:`dockd.store.readonly`)."""

    path: Path
    clock: Callable[[], datetime]
    conn: sqlite3.Connection
    _lock: threading.RLock

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [decode_row(r) for r in self.conn.execute(sql, params).fetchall()]

    def query_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def now(self) -> str:
        return iso(self.clock()) or ""

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self.conn.execute("PRAGMA user_version").fetchone()[0])


class State(Connection):
    """The daemon's durable state. Thread-safe: one connection, one lock, short transactions."""

    def __init__(self, path: Path | str, *, clock: Callable[[], datetime] = utcnow):
        self.path = Path(path)
        self.clock = clock
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                               timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")
        self.conn = conn
        import sqlite_utils

        self.db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            self.db.enable_wal()
        conn.execute("PRAGMA synchronous = FULL")
        self._migrate()

    # -- plumbing ------------------------------------------------------------------

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction (BEGIN IMMEDIATE ... COMMIT), serialised across threads."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._lock:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path}: database schema version {version} is newer than this dockd "
                    f"understands ({SCHEMA_VERSION}); upgrade dockd")
            for number in range(version, SCHEMA_VERSION):
                log.info("migrating state database %s to schema version %d", self.path, number + 1)
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    MIGRATIONS[number](self.db)
                    self.conn.execute(f"PRAGMA user_version = {number + 1}")
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")

    # -- clip transitions ----------------------------------------------------------

    def advance_clip(self, clip_id: int, old: str, new: str, **fields: Any) -> None:
        """Move one clip along one edge, with the columns that go with it, in one transaction."""
        check_clip_edge(old, new)
        with self.tx() as conn:
            self.advance_clip_in(conn, clip_id, old, new, fields)

    def advance_clip_in(self, conn: sqlite3.Connection, clip_id: int, old: str, new: str,
                      fields: dict[str, Any]) -> None:
        """The clip edge ``old`` -> ``new`` inside the caller's transaction ``conn``."""
        check_clip_edge(old, new)
        cols = {**fields, "state": new, "updated_at": self.now(), "error": None}
        sets = ", ".join(f"{k} = ?" for k in cols)
        cur = conn.execute(f"UPDATE clips SET {sets} WHERE id = ? AND state = ?",
                           (*cols.values(), clip_id, old))
        if cur.rowcount != 1:
            row = conn.execute("SELECT state FROM clips WHERE id = ?", (clip_id,)).fetchone()
            now_state = row["state"] if row else "missing"
            raise TransitionError(f"clip {clip_id}: expected state {old!r}, found {now_state!r}")

    def clip_error(self, clip_id: int, message: str) -> None:
        with self.tx() as conn:
            conn.execute("UPDATE clips SET error = ?, attempts = attempts + 1, updated_at = ? "
                         "WHERE id = ?", (message, self.now(), clip_id))

    def advance_docking(self, docking_id: int, old: str, new: str, **fields: Any) -> None:
        check_docking_edge(old, new)
        with self.tx() as conn:
            self.advance_docking_in(conn, docking_id, old, new, fields)

    def advance_docking_in(self, conn: sqlite3.Connection, docking_id: int, old: str, new: str,
                         fields: dict[str, Any]) -> None:
        """The docking edge ``old`` -> ``new`` inside the caller's transaction ``conn``."""
        check_docking_edge(old, new)
        cols = {**fields, "state": new}
        sets = ", ".join(f"{k} = ?" for k in cols)
        cur = conn.execute(f"UPDATE dockings SET {sets} WHERE id = ? AND state = ?",
                           (*cols.values(), docking_id, old))
        if cur.rowcount != 1:
            row = conn.execute("SELECT state FROM dockings WHERE id = ?", (docking_id,)).fetchone()
            raise TransitionError(f"docking {docking_id}: expected state {old!r}, found "
                                  f"{row['state'] if row else 'missing'!r}")

    # -- reads used by several layers --------------------------------------------------

    def clip(self, clip_id: int) -> dict[str, Any]:
        row = self.query_one("SELECT * FROM clips WHERE id = ?", (clip_id,))
        if row is None:
            raise StateError(f"no clip {clip_id}")
        return row

    def docking(self, docking_id: int) -> dict[str, Any]:
        row = self.query_one("SELECT * FROM dockings WHERE id = ?", (docking_id,))
        if row is None:
            raise StateError(f"no docking {docking_id}")
        return row

    def clips_of(self, docking_id: int, state: str | None = None) -> list[dict[str, Any]]:
        if state is None:
            return self.query("SELECT * FROM clips WHERE docking_id = ? ORDER BY rel_path",
                              (docking_id,))
        return self.query("SELECT * FROM clips WHERE docking_id = ? AND state = ? "
                          "ORDER BY rel_path", (docking_id, state))

    def counts_by_state(self) -> dict[str, int]:
        rows = self.query("SELECT state, count(*) AS n FROM clips GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    # -- ports (live view for status) ----------------------------------------------------

    def set_port(self, port: str, **fields: Any) -> None:
        fields = {**fields, "updated_at": self.now()}
        with self.tx() as conn:
            conn.execute("INSERT OR IGNORE INTO ports (port, state) VALUES (?, 'empty')", (port,))
            sets = ", ".join(f"{k} = ?" for k in fields)
            conn.execute(f"UPDATE ports SET {sets} WHERE port = ?", (*fields.values(), port))

    # -- audit chain ---------------------------------------------------------------------

    def audit(self, action: str, subject: str, detail: dict[str, Any] | None = None,
              *, actor: str = "dockd", conn: sqlite3.Connection | None = None) -> str:
        """Append a hash-chained audit entry; returns its hash. Joins ``conn``'s transaction."""
        if conn is None:
            with self.tx() as c:
                return self.audit(action, subject, detail, actor=actor, conn=c)
        import hashlib

        prev = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev_hash = prev["hash"] if prev else ""
        ts = self.now()
        body = dumps({"ts": ts, "actor": actor, "action": action, "subject": subject,
                      "detail": detail or {}, "prev": prev_hash})
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
        conn.execute("INSERT INTO audit (ts, actor, action, subject, detail, prev_hash, hash) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (ts, actor, action, subject, dumps(detail or {}), prev_hash, digest))
        return digest

    def verify_audit_chain(self) -> list[str]:
        """Recompute the audit chain; returns problems (empty when intact)."""
        import hashlib

        problems = []
        prev_hash = ""
        for row in self.query("SELECT * FROM audit ORDER BY id"):
            body = dumps({"ts": row["ts"], "actor": row["actor"], "action": row["action"],
                          "subject": row["subject"], "detail": json.loads(row["detail"]),
                          "prev": prev_hash})
            digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
            if row["prev_hash"] != prev_hash or row["hash"] != digest:
                problems.append(f"audit entry {row['id']} does not chain (altered or removed)")
            prev_hash = row["hash"]
        return problems


def encode_path(rel_path: str) -> bytes:
    """A recorder path as stored: its exact bytes (names need not be valid UTF-8)."""
    return os.fsencode(rel_path)


def decode_row(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """A row as a dict, with ``rel_path`` back in the str-with-surrogates form of ``os.fsdecode``."""
    d = dict(row)
    if isinstance(d.get("rel_path"), bytes):
        d["rel_path"] = os.fsdecode(d["rel_path"])
    return d
