"""One docking's path through dockd: identify → register → offload → probe → check → sign,
and the delivery step that drains signed clips to every storage target.

Each step reads the clips in the state it handles and moves each one along one edge in one
transaction, so a process killed anywhere resumes by simply running the steps again.
Domain decisions (what a clip's times are, which findings apply) live in pure helpers in
:mod:`dockd.integrity.checks`; this module is the thin orchestration around them.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import tiles
from .alerts import raise_alert
from .config import Config, ProfileConfig
from .delivery.base import StorageTarget
from .delivery.clearing import ClearOutcome, clear_recorder, verify_with
from .delivery.early import make_room, promote_delivered, used_prefix
from .delivery.layout import (
    clip_key,
    docking_prefix,
    recording_date,
)
from .delivery.repair import repair_copies
from .devices.clock import dock_clock_doc, set_clock_after_offload
from .devices.drivers import DriverRegistry
from .devices.health import (
    HEALTH_INSERT_SQL,
    SOURCE_REREAD,
    clip_stats,
    fs_check_from_hints,
    health_row,
    sample_from_health,
)
from .errors import (
    CopyError,
    DockdError,
    ProbeError,
    RecorderGone,
    SourceChanged,
    StagingFull,
    TransitionError,
)
from .ingest.duplicates import note_duplicate_serial, still_docked
from .ingest.offload import copy_clip, hash_file
from .ingest.probe import Prober
from .ingest.scan import scan_recorder
from .ingest.settle import copy_settled, recorder_present
from .integrity import checks
from .integrity.continuity import ClipTiming, ContinuityParams, build_timeline
from .integrity.identity import identity_findings, usb_serial_of
from .integrity.manifest import build_manifest, canonical_bytes, manifest_sha256, sign_manifest
from .integrity.notes import NoteAnalyzer, NoteResult, gap_finding
from .integrity.span import attributed, recorder_clips
from .lifecycle import deadline_for
from .model import ClipEntry, Finding, RecorderSnapshot
from .stages.deliver import DeliveryStage
from .store import State, decode_row, dumps, encode_path, iso, parse_iso

log = logging.getLogger(__name__)

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


@dataclass
class Signer:
    """The dock's signing identity. The private key object never leaves this process."""

    private_key: Any
    key_id: str
    public_pem: bytes


@dataclass
class DockingOutcome:
    docking_id: int
    copied: int = 0
    skipped_known: int = 0
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)


def _no_progress(event: str, **info: Any) -> None:
    """The default ``Pipeline.on_progress``: nobody in the foreground is watching."""


class Pipeline:
    def __init__(self, cfg: Config, state: State, *, registry: DriverRegistry, prober: Prober,
                 targets: Sequence[StorageTarget], signer: Signer,
                 notes: NoteAnalyzer | None = None):
        self.cfg = cfg
        self.notes = notes
        self.state = state
        self.registry = registry
        self.prober = prober
        self.targets = list(targets)
        self.signer = signer
        self._sign_lock = threading.Lock()
        self._probe_lock = threading.Lock()  # one exiftool process: one request at a time
        self._finishing: set[int] = set()
        self._finishing_lock = threading.Lock()
        self.writable_for: Callable[[str], Any] | None = None
        # copy progress for a foreground caller (``dockd ingest``'s progress bar):
        # on_progress(event, **info) with event "begin" | "clip" | "advance" | "copied"
        self.on_progress: Callable[..., None] | None = None
        """port -> context manager making that recorder writable (the udev source's
        ``writable``); None: recorders need no remount (the directory source)."""
        self.cancel = threading.Event()
        """Set when dockd stops: uploads in flight end at their next chunk (resumed later)."""
        self.delivery = DeliveryStage(cfg, state, lambda: self.targets, signer,
                                      staging_dir=self.staging_dir, cancel=lambda: self.cancel)
        """One long-lived worker per target (dockd.stages.deliver); ``wake()`` it when clips
        become ready or a docking is signed."""

    # ------------------------------------------------------------------ helpers

    def profile(self, name: str) -> ProfileConfig:
        for p in self.cfg.profiles:
            if p.name == name:
                return p
        return self.cfg.profiles[0]

    def profile_for(self, snap: RecorderSnapshot) -> ProfileConfig:
        model = snap.identity.model
        for p in self.cfg.profiles:
            if p.name == snap.profile:
                return p
        for p in self.cfg.profiles:
            if any(fnmatch.fnmatch(model, g) for g in p.match_models):
                return p
        return self.cfg.profiles[0]

    def staging_dir(self, docking_id: int) -> Path:
        return self.cfg.paths.staging_dir / f"docking-{docking_id:06d}"

    def _port_msg(self, port: str, **fields: Any) -> None:
        self.state.set_port(port, **fields)

    def _docking_msg(self, port: str, docking_id: int, **fields: Any) -> None:
        """Update the port tile only while it shows this docking at work (not once the
        recorder left, nor when it says "plug it back in")."""
        fields = {**fields, "updated_at": self.state.now()}
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.state.tx() as conn:
            conn.execute(f"UPDATE ports SET {sets} WHERE port = ? AND docking_id = ? AND "
                         "state NOT IN ('empty', 'incomplete')",
                         (*fields.values(), port, docking_id))

    # ------------------------------------------------------------------ 1. identify + register

    def begin_docking(self, port: str, root: Path, hints: Mapping[str, str] | None = None
                      ) -> tuple[int, list[tuple[ClipEntry, dict[str, Any]]]]:
        """Identify the recorder at ``root`` and register its clips. Returns the docking id and
        the clips that look already handled (same recorder, path and size) for the offload step
        to confirm by hash."""
        hints = dict(hints or {})
        now = self.state.clock()
        driver = self.registry.select(root, hints)
        snap = driver.snapshot(root, hints, now=now)
        ident, health = snap.identity, snap.health
        profile = self.profile_for(snap)
        log.info("port %s serial %s: recorder docked (officer %s, driver %s, profile %s, "
                 "clock offset %s s)", port, ident.serial, ident.officer_no, snap.driver,
                 profile.name, health.clock_offset_s)
        self._port_msg(port, state="identifying", serial=ident.serial, error=None,
                       message="identifying recorder")
        snapshot_doc = checks.snapshot_doc(snap)
        snapshot_doc["usb_serial"] = usb_serial_of(hints)
        dock_clock = dock_clock_doc(self.cfg.health)
        twins = {r["id"] for r in self.state.query(
            "SELECT id, root FROM dockings WHERE serial = ? AND state = 'offloading' AND "
            "port != ?", (ident.serial, port))
            if still_docked(self.registry, r["root"], ident.serial, root, now)}
        with self.state.tx() as conn:
            conn.execute(
                "INSERT INTO recorders (serial, first_seen) VALUES (?, ?) "
                "ON CONFLICT(serial) DO NOTHING", (ident.serial, iso(now)))
            conn.execute(
                "UPDATE recorders SET officer_no=?, officer_name=?, unit_no=?, unit_name=?, "
                "vendor=?, model=?, firmware=?, last_seen=?, last_port=?, last_battery=?, "
                "last_clock_offset_s=?, last_storage_total=?, last_storage_free=? WHERE serial=?",
                (ident.officer_no, ident.officer_name, ident.unit_no, ident.unit_name,
                 ident.vendor, ident.model, health.firmware, iso(now), port,
                 health.battery_percent, health.clock_offset_s, health.storage_total,
                 health.storage_free, ident.serial))
            active = conn.execute(
                "SELECT id, port FROM dockings WHERE serial = ? AND state = 'offloading' "
                "ORDER BY id", (ident.serial,)).fetchall()
            docking_id = None
            for row in active:
                if row["port"] == port and docking_id is None:
                    docking_id = row["id"]  # same recorder, same port: the daemon restarted
                elif row["id"] in twins:
                    continue  # another recorder with the same serial, still docked
                else:
                    self.state.advance_docking_in(conn, row["id"], "offloading", "interrupted",
                                                {"undocked_at": iso(now)})
            if docking_id is None:
                cur = conn.execute(
                    "INSERT INTO dockings (serial, port, dock_id, root, state, docked_at, "
                    "deadline_at, driver, profile, snapshot, findings, clock_offset_s, "
                    "skipped_known) VALUES (?, ?, ?, ?, 'offloading', ?, ?, ?, ?, ?, '[]', ?, 0)",
                    (ident.serial, port, self.cfg.dock.id, str(root), iso(now),
                     iso(deadline_for(now, self.cfg.delivery.deadline_hours)), snap.driver,
                     profile.name, dumps(snapshot_doc), health.clock_offset_s))
                docking_id = int(cur.lastrowid or 0)
                conn.execute("UPDATE dockings SET dock_clock = ? WHERE id = ?",
                             (dumps(dock_clock), docking_id))
                self.state.audit("docked", f"docking/{docking_id}",
                                 {"port": port, "serial": ident.serial,
                                  "clock_offset_s": health.clock_offset_s}, conn=conn)
                tiles.resolve_by_redock(conn, ident.serial, docking_id)
                conn.execute("UPDATE dockings SET undocked_at = ? WHERE serial = ? AND id != ? "
                             "AND undocked_at IS NULL", (iso(now), ident.serial, docking_id))
            else:
                conn.execute("UPDATE dockings SET root = ? WHERE id = ?", (str(root), docking_id))
                log.info("port %s serial %s: resuming docking %d", port, ident.serial, docking_id)
        scan = scan_recorder(root, profile)
        if hints.get("DOCKD_FILE_TIMES") == "unreliable":  # e.g. fusefat: dates a month off
            scan = replace(scan, entries=[replace(e, mtime=0.0) for e in scan.entries])
        fs_check, fs_detail = fs_check_from_hints(hints)
        count, oldest = clip_stats((e.mtime for e in scan.entries), now, health.clock_offset_s)
        sample = sample_from_health(health, serial=ident.serial, ts=now, docking_id=docking_id,
                                    clip_count=count, oldest_clip_age_s=oldest,
                                    fs_check=fs_check, fs_detail=fs_detail)
        with self.state.tx() as conn:
            conn.execute(HEALTH_INSERT_SQL, health_row(sample))
        id_findings = self._identity_findings(docking_id, ident.serial, hints)
        known = self._register_clips(docking_id, ident.serial, scan.entries,
                                     [*snap.findings, *scan.findings, *id_findings])
        if twins:
            both = [(r["id"], r["port"]) for r in self.state.query(
                "SELECT id, port FROM dockings WHERE serial = ? AND state = 'offloading'",
                (ident.serial,)) if r["id"] in twins or r["id"] == docking_id]
            note_duplicate_serial(self.state, ident.serial, both,
                                  alert_command=self.cfg.delivery.alert_command)
        return docking_id, known

    def _identity_findings(self, docking_id: int, serial: str, hints: Mapping[str, str]
                           ) -> list[Finding]:
        """USB serial vs device-info serial, the recorder's history and the allow-list."""
        usb = usb_serial_of(hints)
        if usb is None:
            return []
        usb_before = [r["u"] for r in self.state.query(
            "SELECT DISTINCT json_extract(snapshot, '$.usb_serial') AS u FROM dockings "
            "WHERE serial = ? AND id != ? AND json_valid(snapshot)", (serial, docking_id))
            if r["u"]]
        info_before = [r["serial"] for r in self.state.query(
            "SELECT DISTINCT serial FROM dockings WHERE id != ? AND json_valid(snapshot) AND "
            "json_extract(snapshot, '$.usb_serial') = ?", (docking_id, usb))]
        found = identity_findings(serial, usb, usb_serials_before=usb_before,
                                  info_serials_before=info_before, hints=hints,
                                  allow=self.cfg.allow)
        for f in found:
            log.warning("serial %s: %s", serial, f.message)
        return found

    def _register_clips(self, docking_id: int, serial: str, entries: Sequence[ClipEntry],
                        scan_findings: Sequence[Finding]
                        ) -> list[tuple[ClipEntry, dict[str, Any]]]:
        known: list[tuple[ClipEntry, dict[str, Any]]] = []
        now = self.state.now()
        with self.state.tx() as conn:
            docking = conn.execute("SELECT * FROM dockings WHERE id = ?", (docking_id,)).fetchone()
            conn.execute("UPDATE dockings SET findings = ? WHERE id = ?",
                         (dumps([f.as_dict() for f in scan_findings]), docking_id))
            for e in entries:
                same_path = conn.execute(
                    "SELECT c.*, d.state AS docking_state FROM clips c JOIN dockings d ON "
                    "d.id = c.docking_id WHERE c.serial = ? AND c.rel_path = ? "
                    "ORDER BY c.id DESC", (serial, encode_path(e.rel_path))).fetchall()
                rows = [r for r in same_path if r["size"] == e.size]
                mine = [r for r in same_path if r["docking_id"] == docking_id
                        and (r["size"] == e.size or r["state"] == "discovered")]
                if mine:
                    if mine[0]["state"] == "discovered" and mine[0]["size"] != e.size:
                        # still being written when first seen: copy what is there now
                        conn.execute("UPDATE clips SET size = ?, mtime = ?, updated_at = ? "
                                     "WHERE id = ?", (e.size, e.mtime, now, mine[0]["id"]))
                    continue  # already registered in this docking (resumed)
                # A clip still waiting in another *active* docking belongs to another
                # recorder reporting the same serial: never take it over (its identity is
                # its content, unknown until copied); only an ended docking hands over —
                # whatever its size now (a file that grew since must not leave an orphan).
                pending = [r for r in same_path if r["state"] == "discovered"
                           and r["docking_state"] != "offloading"]
                handled = [r for r in rows if r["state"] != "discovered"]
                if pending:
                    # Left uncopied by an earlier docking that was interrupted: continue it
                    # here, keeping the deadline of the docking that first saw it (R3).
                    conn.execute("UPDATE clips SET docking_id = ?, safe_name = ?, mtime = ?, "
                                 "size = ?, updated_at = ? WHERE id = ?",
                                 (docking_id, e.safe_name, e.mtime, e.size, now,
                                  pending[0]["id"]))
                    continue
                if handled:
                    prior = decode_row(handled[0])
                    # every copy under this name and size is a candidate: two recorders
                    # reporting one serial each have their own (identity is the content)
                    prior["known_sha256"] = [r["sha256"] for r in handled]
                    # sha256 -> (clip id, state), a delivered copy winning over one that
                    # is not delivered yet
                    prior["known"] = {r["sha256"]: (r["id"], r["state"]) for r in sorted(
                        handled, key=lambda r: r["state"] in ("delivered", "cleared"))}
                    known.append((e, prior))
                    continue
                self._insert_clip(conn, docking_id, serial, e, docking["deadline_at"], now)
            total = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM clips "
                                 "WHERE docking_id = ?", (docking_id,)).fetchone()
            conn.execute("UPDATE dockings SET clips_total = ?, bytes_total = ? WHERE id = ?",
                         (total[0], total[1], docking_id))
        return known

    def _insert_clip(self, conn: Any, docking_id: int, serial: str, e: ClipEntry,
                     deadline: str, now: str, extra_findings: Sequence[Finding] = ()) -> int:
        findings = [f.as_dict() for f in (*e.findings, *extra_findings)]
        cur = conn.execute(
            "INSERT INTO clips (docking_id, first_docking_id, serial, rel_path, safe_name, size, "
            "mtime, state, findings, deadline_at, created_at, updated_at, retention_class) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'discovered', ?, ?, ?, ?, ?)",
            (docking_id, docking_id, serial, encode_path(e.rel_path), e.safe_name, e.size, e.mtime,
             dumps(findings), deadline, now, now, self.cfg.retention.default_class))
        return int(cur.lastrowid or 0)

    # ------------------------------------------------------------------ 2. offload

    def offload(self, docking_id: int, root: Path,
                known: Sequence[tuple[ClipEntry, dict[str, Any]]] = (),
                should_stop: StopFn = _never) -> DockingOutcome:
        d = self.state.docking(docking_id)
        port, serial = d["port"], d["serial"]
        out = DockingOutcome(docking_id)
        chunk = self.cfg.offload.chunk_size
        earlier: list[int] = []
        current: list[ClipEntry] = []  # the clip being read when the recorder failed
        try:
            for entry, prior in known:
                if should_stop():
                    raise CopyError("stopped")
                current[:] = [entry]
                try:
                    size, digest = hash_file(root / entry.rel_path, chunk)
                except OSError as exc:
                    raise RecorderGone(f"{entry.safe_name}: cannot re-read it on the "
                                       f"recorder: {exc.strerror or exc}") from exc
                hit = prior.get("known", {}).get(digest) if size == prior["size"] else None
                if hit is not None:
                    # only a verified delivery counts as delivered: a clip an earlier docking
                    # copied but could not deliver yet is listed as such, not as handled
                    if hit[1] in ("delivered", "cleared"):
                        out.skipped_known += 1
                    else:
                        earlier.append(hit[0])
                    continue
                log.warning("port %s serial %s: %s differs from the copy handled in docking %s "
                            "(sha256 %s vs %s): copying it as a new clip", port, serial,
                            entry.safe_name, prior["docking_id"], digest, prior["sha256"])
                finding = Finding("changed_since_copy", "warning",
                                  "file on the recorder differs from an earlier copy with the "
                                  "same name and size", {"earlier_clip": prior["id"],
                                                         "earlier_sha256": prior["sha256"]})
                with self.state.tx() as conn:
                    exists = conn.execute("SELECT 1 FROM clips WHERE docking_id = ? AND "
                                          "rel_path = ?", (docking_id, encode_path(entry.rel_path))).fetchone()
                    if not exists:
                        self._insert_clip(conn, docking_id, serial, entry, d["deadline_at"],
                                          self.state.now(), (finding,))
            with self.state.tx() as conn:  # changed known clips were added: recount
                conn.execute("UPDATE dockings SET skipped_known = max(coalesce(skipped_known, "
                             "0), ?), earlier_pending = coalesce(?, earlier_pending), "
                             "clips_total = (SELECT count(*) FROM clips WHERE "
                             "docking_id = ?), bytes_total = (SELECT coalesce(sum(size), 0) "
                             "FROM clips WHERE docking_id = ?) WHERE id = ?",
                             (out.skipped_known, dumps(sorted(earlier)) if earlier else None,
                              docking_id, docking_id, docking_id))
            pending = self.state.clips_of(docking_id, "discovered")
            done = self.state.query(
                "SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM clips "
                "WHERE docking_id = ? AND state != 'discovered'", (docking_id,))[0]
            total_n = done["n"] + len(pending)
            total_b = done["b"] + sum(c["size"] for c in pending)
            bytes_done = done["b"]
            started = time.monotonic()
            copied_bytes = 0
            self._port_msg(port, state="copying", docking_id=docking_id, serial=serial,
                           clips_done=done["n"], clips_total=total_n, bytes_done=bytes_done,
                           bytes_total=total_b, message="copying")
            staging = self.staging_dir(docking_id)
            staging.mkdir(parents=True, exist_ok=True)
            last_report = [0.0]
            notify = self.on_progress or _no_progress
            notify("begin", clips_total=total_n, bytes_total=total_b, clips_done=done["n"],
                   bytes_done=bytes_done)
            unsettled: list[str] = []

            for i, c in enumerate(pending):
                entry = ClipEntry(c["rel_path"], c["safe_name"], c["size"], c["mtime"])
                current[:] = [entry]
                if self._already_handled(c, root, chunk, f"port {port} serial {serial}"):
                    out.skipped_known += 1
                    continue
                base = bytes_done

                notify("clip", name=c["safe_name"], size=c["size"])

                def progress(n: int, base: int = base, before: int = copied_bytes,
                             name: str = c["safe_name"]) -> None:
                    notify("advance", name=name, done=n)
                    now_m = time.monotonic()
                    if now_m - last_report[0] >= 0.5:
                        last_report[0] = now_m
                        rate = (before + n) / max(1e-3, now_m - started)
                        self._port_msg(port, bytes_done=base + n, rate_bps=rate)

                def copy(e: ClipEntry, progress: Callable[[int], None] = progress) -> Any:
                    return copy_clip(root, e, staging, chunk_size=chunk,
                                     verify=self.cfg.offload.verify_staged,
                                     min_free=self.cfg.offload.min_free,
                                     progress=progress, should_stop=should_stop)

                try:
                    while True:
                        try:
                            res, changed = copy_settled(
                                copy, root, entry, settle_s=self.cfg.offload.settle_seconds,
                                should_stop=should_stop, where=f"port {port} serial {serial}: ")
                            break
                        except StagingFull as exc:
                            if not self._make_room(docking_id, exc, should_stop):
                                raise
                except SourceChanged as exc:
                    if should_stop() or not recorder_present(root, entry):
                        raise
                    unsettled.append(str(exc))  # the others first; this one later
                    self.state.clip_error(c["id"], str(exc))
                    continue
                extra = {"findings": dumps(_json_list(c["findings"]) +
                                           [f.as_dict() for f in changed])} if changed else {}
                self.state.advance_clip(c["id"], "discovered", "copied", sha256=res.sha256,
                                        size=res.size, staged_path=str(res.staged_path),
                                        copied_at=self.state.now(), **extra)
                out.copied += 1
                notify("copied", name=c["safe_name"], size=res.size)
                bytes_done += res.size
                copied_bytes += res.size
                rate = copied_bytes / max(1e-3, time.monotonic() - started)
                self._port_msg(port, clips_done=done["n"] + i + 1, bytes_done=bytes_done,
                               rate_bps=rate)
                log.info("port %s serial %s: copied %s (%d bytes, sha256 %s)", port, serial,
                         c["safe_name"], res.size, res.sha256)
            if unsettled:
                raise CopyError(f"{len(unsettled)} clip(s) changed while copying and did not "
                                f"settle; retried later: {'; '.join(unsettled)}")
        except RecorderGone as exc:
            if current and not should_stop() and recorder_present(root, current[0]):
                # the recorder is still there (a failing read, a stall): not a removal; the
                # daemon retries the offload, an Undocked event interrupts it if it left
                log.error("port %s serial %s: read error on the recorder: %s", port, serial,
                          exc)
                out.errors.append(str(exc))
                self._port_msg(port, state="error", error=str(exc))
                raise CopyError(f"read error on the recorder: {exc}") from exc
            log.warning("port %s serial %s: recorder gone during offload: %s", port, serial, exc)
            out.interrupted = True
            out.errors.append(str(exc))
            self.mark_interrupted(docking_id, f"recorder removed during copy: {exc}")
            return out
        except (StagingFull, CopyError) as exc:
            out.errors.append(str(exc))
            if should_stop():  # removed or dockd stopping: the caller says which
                log.info("port %s serial %s: offload stopped: %s", port, serial, exc)
                raise
            log.error("port %s serial %s: offload stopped: %s", port, serial, exc)
            self._port_msg(port, state="error", error=str(exc))
            raise
        with self.state.tx() as conn:
            left = conn.execute("SELECT count(*) FROM clips WHERE docking_id = ? AND "
                                "state = 'discovered'", (docking_id,)).fetchone()[0]
            cur = conn.execute("SELECT state FROM dockings WHERE id = ?", (docking_id,)).fetchone()
            if left == 0 and cur["state"] == "offloading":
                self.state.advance_docking_in(conn, docking_id, "offloading", "offloaded", {})
            self.state.audit("copied", f"docking/{docking_id}",
                             {"clips": out.copied, "bytes": copied_bytes, "left": left,
                              "skipped_known": out.skipped_known}, conn=conn)
        if left == 0:
            set_clock_after_offload(self.state, self.cfg, docking_id, root,
                                    self.profile(d["profile"]),
                                    writable=self.writable(port, root))
        return out

    def _already_handled(self, c: dict[str, Any], root: Path, chunk: int, who: str) -> bool:
        """A pending clip taken over from an ended docking may be content that another row
        (same serial, path and size: a same-serial twin's row was taken over first) already
        copied. Confirmed by SHA-256 on the recorder; then the row goes (audited)."""
        others = self.state.query(
            "SELECT id, sha256 FROM clips WHERE serial = (SELECT serial FROM clips WHERE "
            "id = ?) AND rel_path = ? AND size = ? AND state != 'discovered' AND id != ?",
            (c["id"], encode_path(c["rel_path"]), c["size"], c["id"]))
        if not others:
            return False
        try:
            size, digest = hash_file(root / c["rel_path"], chunk)
        except OSError as exc:
            raise RecorderGone(f"{c['safe_name']}: cannot re-read it on the recorder: "
                               f"{exc.strerror or exc}") from exc
        same = [o["id"] for o in others if o["sha256"] == digest]
        if size != c["size"] or not same:
            return False
        with self.state.tx() as conn:
            conn.execute("DELETE FROM clips WHERE id = ? AND state = 'discovered'", (c["id"],))
            self.state.audit("already_delivered", f"clip/{c['id']}",
                             {"same_as_clip": same[0], "sha256": digest,
                              "name": c["safe_name"]}, conn=conn)
        log.info("%s: %s is already handled as clip %d (same SHA-256): not copied again",
                 who, c["safe_name"], same[0])
        return True

    def _make_room(self, docking_id: int, exc: StagingFull, should_stop: StopFn) -> bool:
        """Staging is full: alarm, and deliver this docking's copied clips ahead of its
        manifest so they leave staging (dockd.delivery.early). True if room was made."""
        d = self.state.docking(docking_id)
        raise_alert(self.state, level="alarm", kind="staging_full", subject="staging",
                    message=f"staging {self.cfg.paths.staging_dir} is full ({exc}); port "
                            f"{d['port']} serial {d['serial']}: delivering copied clips ahead "
                            "of signing to make room",
                    command=self.cfg.delivery.alert_command)
        freed = make_room(self, docking_id, should_stop)
        log.warning("port %s serial %s: staging full: %d bytes freed by delivering ahead of "
                    "signing", d["port"], d["serial"], freed)
        return freed > 0

    def mark_interrupted(self, docking_id: int, why: str) -> None:
        with self.state.tx() as conn:
            cur = conn.execute("SELECT state, port FROM dockings WHERE id = ?",
                               (docking_id,)).fetchone()
            if cur is None or cur["state"] != "offloading":
                return
            left = conn.execute("SELECT count(*) FROM clips WHERE docking_id = ? AND "
                                "state = 'discovered'", (docking_id,)).fetchone()[0]
            new = "interrupted" if left else "offloaded"
            self.state.advance_docking_in(conn, docking_id, "offloading", new,
                                        {"undocked_at": self.state.now(), "error": why,
                                         "incomplete": left or None})
            self.state.audit("undocked", f"docking/{docking_id}",
                             {"port": cur["port"], "uncopied": left, "why": why}, conn=conn)
        if left:
            log.warning("port %s: docking %d closed with %d clip(s) not copied (%s): "
                        "copy incomplete, plug the recorder back in", cur["port"], docking_id,
                        left, why)
            tiles.show_incomplete(self.state, docking_id)

    def undocked(self, port: str) -> None:
        """The recorder left ``port``: its finished docking is over (a later docking of the
        same recorder is a new one; one still docked across a restart is the same)."""
        with self.state.tx() as conn:
            conn.execute("UPDATE dockings SET undocked_at = ? WHERE port = ? AND "
                         "undocked_at IS NULL AND state != 'offloading'",
                         (self.state.now(), port))

    # ------------------------------------------------------------------ 3. probe + check

    def process(self, docking_id: int) -> None:
        d = self.state.docking(docking_id)
        port, serial = d["port"], d["serial"]
        profile = self.profile(d["profile"])
        tz = self.cfg.tz
        offset = d["clock_offset_s"]
        for c in self.state.clips_of(docking_id, "copied"):
            self._docking_msg(port, docking_id, state="checking",
                              message=f"checking {c['safe_name']}")
            try:
                with self._probe_lock:
                    probe = self.prober.probe(Path(c["staged_path"]))
            except ProbeError as exc:
                # Tools missing altogether: not the clip's fault, keep it at 'copied' and retry.
                self.state.clip_error(c["id"], str(exc))
                log.error("port %s serial %s: cannot probe %s: %s", port, serial,
                          c["safe_name"], exc)
                raise
            times = checks.clip_times(c["rel_path"], probe, profile, tz, offset, c["mtime"])
            findings = checks.probe_findings(probe)
            if not probe.ok:
                log.warning("port %s serial %s: %s could not be parsed (%s); kept and flagged",
                            port, serial, c["safe_name"], probe.error)
            self.state.advance_clip(
                c["id"], "copied", "probed", probe=dumps(probe.summary()),
                start_recorded=times.start_recorded, start_utc=iso(times.start_utc),
                duration_s=times.duration_s,
                findings=dumps(_json_list(c["findings"]) + [f.as_dict() for f in findings]))
        for c in self.state.clips_of(docking_id, "probed"):
            findings = checks.clip_findings(c, serial, profile)
            self.state.advance_clip(
                c["id"], "probed", "checked",
                findings=dumps(_json_list(c["findings"]) + [f.as_dict() for f in findings]))

    # ------------------------------------------------------------------ 3b. continuity (R1, R2)

    def analyze_continuity(self, docking_id: int) -> dict[str, Any]:
        """Build the docking's timeline, listen to the start of every clip that resumes after
        an interruption, and store one row per gap. Idempotent: done once per docking."""
        d = self.state.docking(docking_id)
        if d.get("continuity"):
            return dict(json_obj(d["continuity"]))
        clips = self.state.clips_of(docking_id, "checked")
        params = ContinuityParams(self.cfg.continuity.split_tolerance_s,
                                  self.cfg.continuity.session_break_s)
        # R1/R2 on the recorder's whole timeline: clips of its earlier (judged) dockings take
        # part, and a gap belongs to the docking that completes it
        earlier = recorder_clips(self.state, d["serial"], docking_id)
        own = {c["id"] for c in clips}
        timings = [ClipTiming(c["id"], c["safe_name"], parse_iso(c["start_utc"]),  # type: ignore[arg-type]
                              c["duration_s"]) for c in [*clips, *earlier] if c["start_utc"]]
        untimed = [c["safe_name"] for c in clips if not c["start_utc"]]
        timeline = attributed(build_timeline(timings, params), own)
        by_id = {c["id"]: c for c in [*clips, *earlier]}
        rows, findings = [], list(timeline.findings)
        if untimed:
            findings.append(Finding("untimed_clips", "warning",
                                    "clips without a start time are left out of the timeline",
                                    {"clips": untimed}).as_dict())
        for gap in timeline.gaps:
            after = by_id[gap.after_clip]
            result = self._listen(after, d)
            if result is not None:
                findings.append(gap_finding(gap, result))
            rows.append({
                "docking_id": docking_id, "kind": gap.kind, "before_clip": gap.before_clip,
                "after_clip": gap.after_clip, "start": iso(gap.start), "end": iso(gap.end),
                "length_s": gap.length_s,
                "verdict": result.verdict if result else "not_checked",
                "speech_start_s": result.speech_start_s if result else None,
                "speech_end_s": result.speech_end_s if result else None,
                "transcript": result.transcript if result else "",
                "reason": result.reason if result else None,
                "confidence": result.confidence if result else None,
                "language": result.language if result else None,
                "needs_review": 1 if (result is None or result.needs_review) else 0,
                "error": result.error if result else "",
                "analyzed_at": self.state.now(),
            })
        for brk in timeline.session_breaks:
            rows.append({"docking_id": docking_id, "kind": brk.kind,
                         "before_clip": brk.before_clip, "after_clip": brk.after_clip,
                         "start": iso(brk.start), "end": iso(brk.end),
                         "length_s": brk.length_s, "needs_review": 0,
                         "analyzed_at": self.state.now()})
        doc = {"params": {"split_tolerance_s": params.split_tolerance_s,
                          "session_break_s": params.session_break_s},
               "timeline": timeline.to_dict(), "findings": findings,
               "earlier_clips": sorted(c["id"] for c in earlier),
               "notes": {"model": self.notes.model_dir.name  # the model in use, if any
                         if self.notes and self.notes.model_dir else None,
                         "enabled": self.cfg.notes.enabled}}
        with self.state.tx() as conn:
            conn.execute("DELETE FROM gaps WHERE docking_id = ?", (docking_id,))
            for r in rows:
                cols = ", ".join(r)
                conn.execute(f"INSERT INTO gaps ({cols}) VALUES ({', '.join('?' * len(r))})",
                             tuple(r.values()))
            conn.execute("UPDATE dockings SET continuity = ? WHERE id = ?",
                         (dumps(doc), docking_id))
            self.state.audit("findings", f"docking/{docking_id}",
                             {"kinds": sorted({str(f.get("kind")) for f in findings}),
                              "count": len(findings),
                              "needs_review": sum(r["needs_review"] for r in rows)}, conn=conn)
        unnoted = sum(r["needs_review"] for r in rows if r["kind"] != "session_break")
        log.info("port %s serial %s: docking %d timeline: %d session(s), %d interruption(s), "
                 "%d need review", d["port"], d["serial"], docking_id,
                 len(timeline.sessions), len(timeline.gaps), unnoted)
        return doc

    def _listen(self, clip: dict[str, Any], docking: dict[str, Any]) -> NoteResult | None:
        if self.notes is None:
            return None
        self._docking_msg(docking["port"], docking["id"], state="checking",
                          message=f"listening for a spoken note in {clip['safe_name']}")
        path = clip["staged_path"]
        if path and not Path(path).is_file() and docking.get("root"):
            path = str(Path(docking["root"]) / clip["rel_path"])  # delivered to make room
        return self.notes.analyze(path, label=f"port {docking['port']} serial "
                                  f"{docking['serial']} {clip['safe_name']}")

    # ------------------------------------------------------------------ 4. sign

    def ready_to_sign(self, docking_id: int) -> bool:
        d = self.state.docking(docking_id)
        if d["state"] not in ("offloaded", "interrupted"):
            return False
        busy = self.state.query_one(
            "SELECT count(*) AS n FROM clips WHERE docking_id = ? AND state IN "
            "('copied', 'probed')", (docking_id,))
        return bool(busy) and busy["n"] == 0

    def sign(self, docking_id: int) -> str:
        """Build, sign and store the docking's manifest; all its checked clips become signed."""
        with self._sign_lock, self.state.tx() as conn:
            d = dict(conn.execute("SELECT * FROM dockings WHERE id = ?", (docking_id,)).fetchone())
            if d["state"] == "signed" or d["state"] == "delivered":
                row = conn.execute("SELECT sha256 FROM manifests WHERE docking_id = ?",
                                   (docking_id,)).fetchone()
                return str(row["sha256"])
            clips = [decode_row(r) for r in conn.execute(
                "SELECT * FROM clips WHERE docking_id = ? ORDER BY rel_path", (docking_id,))]
            if any(c["state"] in ("copied", "probed") for c in clips):
                raise TransitionError(f"docking {docking_id}: clips still being checked")
            checked = [c for c in clips if c["state"] == "checked"]
            not_copied = [c for c in clips if c["state"] == "discovered"]
            prev = conn.execute("SELECT sha256, seq FROM manifests WHERE dock_id = ? "
                                "ORDER BY id DESC LIMIT 1", (self.cfg.dock.id,)).fetchone()
            seq = (prev["seq"] or 0) + 1 if prev else 1
            now = self.state.clock()
            snap = checks.snapshot_from_doc(json_obj(d["snapshot"]))
            docked_at = parse_iso(d["docked_at"])
            assert docked_at is not None
            local_date = recording_date((parse_iso(c.get("start_utc")) for c in checked),
                                        docked_at, self.cfg.tz)
            prefix = used_prefix(self.state, docking_id) or docking_prefix(
                snap.identity, docked_at, self.cfg.dock.id, d["port"], docking_id,
                local_date=local_date)  # clips delivered ahead of signing fixed it already
            continuity = json_obj(d.get("continuity")) or {}
            extra: dict[str, Any] = {
                "continuity": continuity,
                "interrupted": d["state"] == "interrupted",
                "not_copied": [c["safe_name"] for c in not_copied],
                "skipped_already_delivered": d["skipped_known"] or 0,
                "copied_earlier_not_delivered": [
                    {"clip": r["safe_name"], "docking_id": r["docking_id"]} for r in
                    conn.execute("SELECT safe_name, docking_id FROM clips WHERE id IN "
                                 "(SELECT value FROM json_each(?)) ORDER BY id",
                                 (d.get("earlier_pending") or "[]",))],
                "deadline_at": d["deadline_at"],
                "profile": d["profile"], "driver": d["driver"],
                "dock_clock": json_obj(d.get("dock_clock")) or None,
                "date_folder": local_date.isoformat(),
                "timezone": self.cfg.dock.timezone,
            }
            clock_set = conn.execute("SELECT detail FROM audit WHERE action = 'clock_set' AND "
                                     "subject = ?", (f"docking/{docking_id}",)).fetchone()
            extra["recorder_clock_set"] = json_obj(clock_set["detail"]) if clock_set else None
            manifest = build_manifest(
                dock_id=self.cfg.dock.id, port=d["port"], docking_id=docking_id,
                docked_at=docked_at, recorder=snap.identity, health=snap.health,
                clips=[checks.manifest_clip(c) for c in checked],
                findings=[checks.finding_from_dict(f) for f in
                          [*json_obj(d["findings"]), *continuity.get("findings", [])]],
                prev_manifest_sha256=prev["sha256"] if prev else None,
                key_id=self.signer.key_id, created_at=now, extra=extra, seq=seq,
                usb_serial=json_obj(d["snapshot"]).get("usb_serial"))
            body = canonical_bytes(manifest)
            digest = manifest_sha256(body)
            sig = sign_manifest(body, self.signer.private_key)
            cur = conn.execute(
                "INSERT INTO manifests (docking_id, dock_id, sha256, prev_sha256, key_id, prefix, "
                "created_at, manifest, signature, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (docking_id, self.cfg.dock.id, digest, prev["sha256"] if prev else None,
                 self.signer.key_id, prefix, iso(now), body, sig, seq))
            manifest_id = cur.lastrowid
            for c in checked:
                self.state.advance_clip_in(conn, c["id"], "checked", "signed", {})
                for t in self.targets:
                    conn.execute("INSERT OR IGNORE INTO deliveries (clip_id, target, state, key) "
                                 "VALUES (?, ?, 'pending', ?)",
                                 (c["id"], t.name, clip_key(prefix, c["safe_name"])))
            for t in self.targets:
                conn.execute("INSERT OR IGNORE INTO manifest_deliveries (manifest_id, target, "
                             "state) VALUES (?, ?, 'pending')", (manifest_id, t.name))
            self.state.advance_docking_in(conn, docking_id, d["state"], "signed",
                                        {"prefix": prefix, "signed_at": iso(now)})
            self.state.audit("signed", f"docking/{docking_id}",
                             {"manifest_sha256": digest, "clips": len(checked),
                              "key_id": self.signer.key_id}, conn=conn)
        log.info("port %s serial %s: docking %d signed (%d clips, manifest %s)", d["port"],
                 d["serial"], docking_id, len(checked), digest)
        self._docking_msg(d["port"], docking_id, state="done", message="delivering")
        return digest

    # ------------------------------------------------------------------ 5. deliver

    def deliver_pending(self, should_stop: StopFn = _never, *, ignore_backoff: bool = False
                        ) -> int:
        """One whole pass of every target's delivery work (dockd.stages.deliver). Returns
        how many items landed."""
        return self.delivery.deliver_pending(should_stop, ignore_backoff=ignore_backoff)

    def publish_checkpoints(self) -> int:
        """A fresh signed checkpoint on every target (after dockings and on the daemon's
        timer): the newest delivered sequence number and chain head of this dock."""
        return self.delivery.publish_checkpoints()

    # ------------------------------------------------------------------ whole docking

    def run_docking(self, port: str, root: Path, hints: Mapping[str, str] | None = None,
                    should_stop: StopFn = _never) -> DockingOutcome:
        same = self.reattach(port, root, hints)
        if same is not None:
            return DockingOutcome(same)
        docking_id, known = self.begin_docking(port, root, hints)
        out = self.offload(docking_id, root, known, should_stop)
        if not self.cancel.is_set():  # stopping: the restart finishes it
            self.finish(docking_id)
        return out

    def reattach(self, port: str, root: Path, hints: Mapping[str, str] | None = None
                 ) -> int | None:
        """The docking still going on in ``port`` (see :func:`dockd.reattach.reattach`)."""
        from .reattach import reattach

        return reattach(self, port, root, hints)

    def finish(self, docking_id: int) -> bool:
        """Probe, check and sign whatever of the docking is copied (idempotent). Returns False
        when another thread is already finishing this docking."""
        with self._finishing_lock:
            if docking_id in self._finishing:
                return False
            self._finishing.add(docking_id)
        try:
            if self.cancel.is_set():
                return False
            self.process(docking_id)
            if self.ready_to_sign(docking_id) and not self.cancel.is_set():
                self.analyze_continuity(docking_id)
                self.sign(docking_id)
                promote_delivered(self.state, docking_id,  # clips delivered to make room
                                  [t.name for t in self.targets if t.required])
            return True
        finally:
            with self._finishing_lock:
                self._finishing.discard(docking_id)

    def clear(self, port: str, root: Path) -> ClearOutcome | None:
        """Erase verified-delivered clips from the recorder docked at ``port`` when its
        profile's policy says so (R6: only after every required target confirmed them)."""
        d = self.state.query_one("SELECT * FROM dockings WHERE port = ? ORDER BY id DESC "
                                 "LIMIT 1", (port,))
        if d is None or self.profile(d["profile"]).clear_policy != "after_delivery":
            return None
        required = [t.name for t in self.targets if t.required]
        try:
            out = clear_recorder(self.state, serial=d["serial"], root=root, port=port,
                                 required_targets=required,
                                 chunk_size=self.cfg.offload.chunk_size,
                                 verify_copy=verify_with({t.name: t for t in self.targets}),
                                 writable=self.writable(port, root),
                                 on_mismatch=lambda c, bad: self._repair(c, bad, root))
        except DockdError as exc:  # e.g. the recorder could not be made writable
            log.warning("port %s serial %s: recorder not cleared: %s", port, d["serial"], exc)
            self._port_msg(port, message=f"not cleared: {exc}")
            return None
        if out.cleared:
            self._port_msg(port, message=f"erased {len(out.cleared)} delivered clip(s) "
                                         "from the recorder")
        return out

    def _repair(self, clip: dict[str, Any], bad: list[str], root: Path | None) -> None:
        """A delivered copy failed its re-check before clearing: see dockd.delivery.repair."""
        repair_copies(self.state, clip, bad, targets={t.name: t for t in self.targets},
                      staging_dir=self.staging_dir(clip["docking_id"]), root=root,
                      chunk_size=self.cfg.offload.chunk_size,
                      alert_command=self.cfg.delivery.alert_command)

    def reread_health(self, port: str, root: Path, hints: Mapping[str, str] | None = None
                      ) -> None:
        """Read battery/storage again while the recorder stays docked (charging), so the
        fit-for-next-shift verdict sees the battery it will leave with, not the one it came
        with (R9). Reading only: nothing is written to the recorder."""
        d = self.state.query_one("SELECT id, serial FROM dockings WHERE port = ? "
                                 "ORDER BY id DESC LIMIT 1", (port,))
        if d is None:
            return
        now = self.state.clock()
        snap = self.registry.select(root, dict(hints or {})).snapshot(root, dict(hints or {}),
                                                                      now=now)
        if snap.identity.serial != d["serial"]:
            return  # another recorder: its own docking will read it
        h = snap.health
        sample = sample_from_health(h, serial=d["serial"], ts=now, docking_id=d["id"],
                                    source=SOURCE_REREAD)
        with self.state.tx() as conn:
            conn.execute(HEALTH_INSERT_SQL, health_row(sample))
            conn.execute("UPDATE recorders SET last_battery = ?, last_storage_free = ?, "
                         "last_storage_total = ? WHERE serial = ?",
                         (h.battery_percent, h.storage_free, h.storage_total, d["serial"]))
        log.info("port %s serial %s: health re-read: battery %s%%", port, d["serial"],
                 h.battery_percent)

    def writable(self, port: str, root: Path) -> Callable[[], Any] | None:
        """How the recorder is made writable for clearing / setting its clock: the udev
        source remounts it read-write through the mount helper for that step only; the
        directory source needs nothing (None)."""
        factory = self.writable_for
        if factory is None:
            return None
        return lambda: factory(port)

    def resume(self) -> list[int]:
        """At start-up: carry every docking whose recorder is no longer needed forward."""
        resumed = []
        for d in self.state.query("SELECT id, state, port, serial FROM dockings WHERE state IN "
                                  "('offloaded', 'interrupted') ORDER BY id"):
            try:
                self.finish(d["id"])
                resumed.append(d["id"])
            except DockdError as exc:
                log.error("port %s serial %s: docking %d cannot finish yet: %s", d["port"],
                          d["serial"], d["id"], exc)
        return resumed


def json_obj(text: str | None) -> Any:
    import json

    return json.loads(text) if text else []


def _json_list(text: str | None) -> list[Any]:
    value = json_obj(text)
    return list(value) if isinstance(value, list) else []
