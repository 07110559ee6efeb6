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
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from .alerts import raise_alert
from .config import Config, ProfileConfig
from .delivery.base import StorageTarget
from .delivery.clearing import ClearOutcome, clear_recorder
from .delivery.layout import MANIFEST_NAME, SIGNATURE_NAME, clip_key, docking_prefix, key_path
from .delivery.schedule import Pacer, parse_bandwidth
from .delivery.targets import retention_for
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
    DeliveryError,
    DockdError,
    ProbeError,
    RecorderGone,
    StagingFull,
    TransitionError,
)
from .ingest.offload import copy_clip, hash_file
from .ingest.probe import Prober
from .ingest.scan import scan_recorder
from .integrity import checks
from .integrity.continuity import ClipTiming, ContinuityParams, build_timeline
from .integrity.manifest import build_manifest, canonical_bytes, manifest_sha256, sign_manifest
from .integrity.notes import NoteAnalyzer, NoteResult, gap_finding
from .lifecycle import deadline_for, retry_delay
from .model import ClipEntry, Finding, RecorderSnapshot
from .state import State, decode_row, dumps, encode_path, iso, parse_iso

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
        """port -> context manager making that recorder writable (the udev source's
        ``writable``); None: recorders need no remount (the directory source)."""
        for t in self.targets:
            tcfg = next((c for c in cfg.targets if c.name == t.name), None)
            if tcfg is not None and tcfg.bandwidth_limit and hasattr(t, "throttle"):
                pacer = Pacer(parse_bandwidth(tcfg.bandwidth_limit),
                              now=lambda: datetime.now(cfg.tz))
                t.throttle = pacer.consume

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
        dock_clock = dock_clock_doc(self.cfg.health)
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
                else:
                    self.state._advance_docking(conn, row["id"], "offloading", "interrupted",
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
        known = self._register_clips(docking_id, ident.serial, scan.entries,
                                     [*snap.findings, *scan.findings])
        return docking_id, known

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
                rows = conn.execute(
                    "SELECT * FROM clips WHERE serial = ? AND rel_path = ? AND size = ? "
                    "ORDER BY id DESC", (serial, encode_path(e.rel_path), e.size)).fetchall()
                mine = [r for r in rows if r["docking_id"] == docking_id]
                if mine:
                    continue  # already registered in this docking (resumed)
                pending = [r for r in rows if r["state"] == "discovered"]
                handled = [r for r in rows if r["state"] != "discovered"]
                if pending:
                    # Left uncopied by an earlier docking that was interrupted: continue it
                    # here, keeping the deadline of the docking that first saw it (R3).
                    conn.execute("UPDATE clips SET docking_id = ?, safe_name = ?, mtime = ?, "
                                 "updated_at = ? WHERE id = ?",
                                 (docking_id, e.safe_name, e.mtime, now, pending[0]["id"]))
                    continue
                if handled:
                    known.append((e, decode_row(handled[0])))
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
        try:
            for entry, prior in known:
                if should_stop():
                    raise CopyError("stopped")
                size, digest = hash_file(root / entry.rel_path, chunk)
                if size == prior["size"] and digest == prior["sha256"]:
                    out.skipped_known += 1
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
            if out.skipped_known:
                with self.state.tx() as conn:
                    conn.execute("UPDATE dockings SET skipped_known = ? WHERE id = ?",
                                 (out.skipped_known, docking_id))
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

            for i, c in enumerate(pending):
                entry = ClipEntry(c["rel_path"], c["safe_name"], c["size"], c["mtime"])
                base = bytes_done

                def progress(n: int, base: int = base, before: int = copied_bytes) -> None:
                    now_m = time.monotonic()
                    if now_m - last_report[0] >= 0.5:
                        last_report[0] = now_m
                        rate = (before + n) / max(1e-3, now_m - started)
                        self._port_msg(port, bytes_done=base + n, rate_bps=rate)

                res = copy_clip(root, entry, staging, chunk_size=chunk,
                                verify=self.cfg.offload.verify_staged,
                                min_free=self.cfg.offload.min_free,
                                progress=progress, should_stop=should_stop)
                self.state.advance_clip(c["id"], "discovered", "copied", sha256=res.sha256,
                                        size=res.size, staged_path=str(res.staged_path),
                                        copied_at=self.state.now())
                out.copied += 1
                bytes_done += res.size
                copied_bytes += res.size
                rate = copied_bytes / max(1e-3, time.monotonic() - started)
                self._port_msg(port, clips_done=done["n"] + i + 1, bytes_done=bytes_done,
                               rate_bps=rate)
                log.info("port %s serial %s: copied %s (%d bytes, sha256 %s)", port, serial,
                         c["safe_name"], res.size, res.sha256)
        except RecorderGone as exc:
            log.warning("port %s serial %s: recorder gone during offload: %s", port, serial, exc)
            out.interrupted = True
            out.errors.append(str(exc))
            self.mark_interrupted(docking_id, f"recorder removed during copy: {exc}")
            return out
        except (StagingFull, CopyError) as exc:
            log.error("port %s serial %s: offload stopped: %s", port, serial, exc)
            out.errors.append(str(exc))
            self._port_msg(port, state="error", error=str(exc))
            raise
        with self.state.tx() as conn:
            left = conn.execute("SELECT count(*) FROM clips WHERE docking_id = ? AND "
                                "state = 'discovered'", (docking_id,)).fetchone()[0]
            cur = conn.execute("SELECT state FROM dockings WHERE id = ?", (docking_id,)).fetchone()
            if left == 0 and cur["state"] == "offloading":
                self.state._advance_docking(conn, docking_id, "offloading", "offloaded", {})
        if left == 0:
            set_clock_after_offload(self.state, self.cfg, docking_id, root,
                                    self.profile(d["profile"]),
                                    writable=self.writable(port, root))
        return out

    def mark_interrupted(self, docking_id: int, why: str) -> None:
        with self.state.tx() as conn:
            cur = conn.execute("SELECT state, port FROM dockings WHERE id = ?",
                               (docking_id,)).fetchone()
            if cur is None or cur["state"] != "offloading":
                return
            left = conn.execute("SELECT count(*) FROM clips WHERE docking_id = ? AND "
                                "state = 'discovered'", (docking_id,)).fetchone()[0]
            new = "interrupted" if left else "offloaded"
            self.state._advance_docking(conn, docking_id, "offloading", new,
                                        {"undocked_at": self.state.now(), "error": why})
            self.state.audit("undocked", f"docking/{docking_id}",
                             {"port": cur["port"], "uncopied": left, "why": why}, conn=conn)

    # ------------------------------------------------------------------ 3. probe + check

    def process(self, docking_id: int) -> None:
        d = self.state.docking(docking_id)
        port, serial = d["port"], d["serial"]
        profile = self.profile(d["profile"])
        tz = self.cfg.tz
        offset = d["clock_offset_s"]
        for c in self.state.clips_of(docking_id, "copied"):
            self._port_msg(port, state="checking", message=f"checking {c['safe_name']}")
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
        timings = [ClipTiming(c["id"], c["safe_name"], parse_iso(c["start_utc"]),  # type: ignore[arg-type]
                              c["duration_s"]) for c in clips if c["start_utc"]]
        untimed = [c["safe_name"] for c in clips if not c["start_utc"]]
        timeline = build_timeline(timings, params)
        by_id = {c["id"]: c for c in clips}
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
               "notes": {"model": Path(self.cfg.notes.model_dir).name
                         if self.cfg.notes.model_dir else None,
                         "enabled": self.cfg.notes.enabled}}
        with self.state.tx() as conn:
            conn.execute("DELETE FROM gaps WHERE docking_id = ?", (docking_id,))
            for r in rows:
                cols = ", ".join(r)
                conn.execute(f"INSERT INTO gaps ({cols}) VALUES ({', '.join('?' * len(r))})",
                             tuple(r.values()))
            conn.execute("UPDATE dockings SET continuity = ? WHERE id = ?",
                         (dumps(doc), docking_id))
        unnoted = sum(r["needs_review"] for r in rows if r["kind"] != "session_break")
        log.info("port %s serial %s: docking %d timeline: %d session(s), %d interruption(s), "
                 "%d need review", d["port"], d["serial"], docking_id,
                 len(timeline.sessions), len(timeline.gaps), unnoted)
        return doc

    def _listen(self, clip: dict[str, Any], docking: dict[str, Any]) -> NoteResult | None:
        if self.notes is None:
            return None
        self._port_msg(docking["port"], state="checking",
                       message=f"listening for a spoken note in {clip['safe_name']}")
        return self.notes.analyze(clip["staged_path"], label=f"port {docking['port']} serial "
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
            prev = conn.execute("SELECT sha256 FROM manifests WHERE dock_id = ? "
                                "ORDER BY id DESC LIMIT 1", (self.cfg.dock.id,)).fetchone()
            now = self.state.clock()
            snap = checks.snapshot_from_doc(json_obj(d["snapshot"]))
            docked_at = parse_iso(d["docked_at"])
            assert docked_at is not None
            prefix = docking_prefix(snap.identity, docked_at, self.cfg.dock.id, d["port"],
                                    docking_id)
            continuity = json_obj(d.get("continuity")) or {}
            extra: dict[str, Any] = {
                "continuity": continuity,
                "interrupted": d["state"] == "interrupted",
                "not_copied": [c["safe_name"] for c in not_copied],
                "skipped_already_delivered": d["skipped_known"] or 0,
                "deadline_at": d["deadline_at"],
                "profile": d["profile"], "driver": d["driver"],
                "dock_clock": json_obj(d.get("dock_clock")) or None,
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
                key_id=self.signer.key_id, created_at=now, extra=extra)
            body = canonical_bytes(manifest)
            digest = manifest_sha256(body)
            sig = sign_manifest(body, self.signer.private_key)
            cur = conn.execute(
                "INSERT INTO manifests (docking_id, dock_id, sha256, prev_sha256, key_id, prefix, "
                "created_at, manifest, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (docking_id, self.cfg.dock.id, digest, prev["sha256"] if prev else None,
                 self.signer.key_id, prefix, iso(now), body, sig))
            manifest_id = cur.lastrowid
            for c in checked:
                self.state._advance_clip(conn, c["id"], "checked", "signed", {})
                for t in self.targets:
                    conn.execute("INSERT OR IGNORE INTO deliveries (clip_id, target, state, key) "
                                 "VALUES (?, ?, 'pending', ?)",
                                 (c["id"], t.name, clip_key(prefix, c["safe_name"])))
            for t in self.targets:
                conn.execute("INSERT OR IGNORE INTO manifest_deliveries (manifest_id, target, "
                             "state) VALUES (?, ?, 'pending')", (manifest_id, t.name))
            self.state._advance_docking(conn, docking_id, d["state"], "signed",
                                        {"prefix": prefix, "signed_at": iso(now)})
            self.state.audit("signed", f"docking/{docking_id}",
                             {"manifest_sha256": digest, "clips": len(checked),
                              "key_id": self.signer.key_id}, conn=conn)
        log.info("port %s serial %s: docking %d signed (%d clips, manifest %s)", d["port"],
                 d["serial"], docking_id, len(checked), digest)
        self._port_msg(d["port"], state="done", message="delivering")
        return digest

    # ------------------------------------------------------------------ 5. deliver

    def deliver_pending(self, should_stop: StopFn = _never, *, ignore_backoff: bool = False
                        ) -> int:
        """Deliver what is due, earliest deadline first. Returns how many items landed."""
        landed = 0
        now = self.state.now()
        due = "" if ignore_backoff else "AND (d.next_try_at IS NULL OR d.next_try_at <= :now)"
        rows = self.state.query(
            "SELECT d.clip_id, d.target, d.key, c.staged_path, c.sha256, c.size, c.docking_id, "
            "c.safe_name, c.retention_class, k.docked_at FROM deliveries d "
            "JOIN clips c ON c.id = d.clip_id JOIN dockings k ON k.id = c.first_docking_id "
            f"WHERE d.state = 'pending' AND c.state = 'signed' {due} "
            "ORDER BY c.deadline_at, c.id", {"now": now})
        targets = {t.name: t for t in self.targets}
        by_target: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["target"] in targets:
                by_target.setdefault(r["target"], []).append(r)
        # each target drains its own earliest-deadline-first list, with at most
        # ``max_concurrency`` uploads at a time; targets proceed independently
        pools = [ThreadPoolExecutor(max_workers=self._concurrency(name),
                                    thread_name_prefix=f"deliver-{name}")
                 for name in by_target]
        futures = []
        for pool, (name, items) in zip(pools, by_target.items(), strict=True):
            for r in items:
                futures.append(pool.submit(self._deliver_clip, r, targets[name], should_stop))
        for pool in pools:
            pool.shutdown(wait=True)
        landed += sum(1 for f in futures if f.result())
        for m in self.state.query(
                "SELECT m.id, m.docking_id, m.prefix, m.manifest, m.signature, m.key_id, "
                "md.target FROM manifest_deliveries md JOIN manifests m ON m.id = md.manifest_id "
                f"WHERE md.state = 'pending' {due.replace('d.', 'md.')} ORDER BY m.id",
                {"now": now}):
            target = targets.get(m["target"])
            if target is None or should_stop():
                continue
            waiting = self.state.query_one(
                "SELECT count(*) AS n FROM deliveries dl JOIN clips c ON c.id = dl.clip_id "
                "WHERE c.docking_id = ? AND dl.target = ? AND dl.state != 'delivered'",
                (m["docking_id"], target.name))
            if waiting and waiting["n"]:
                continue  # the manifest goes last: it is the docking's commit marker
            try:
                target.put_bytes(self.signer.public_pem, key_path(m["key_id"]))
                target.put_bytes(bytes(m["manifest"]), f"{m['prefix']}/{MANIFEST_NAME}")
                target.put_bytes(bytes(m["signature"]), f"{m['prefix']}/{SIGNATURE_NAME}")
            except (DeliveryError, OSError) as exc:
                self._delivery_failed("manifest_deliveries", "manifest_id", m["id"], target, exc)
                continue
            landed += 1
            self._manifest_landed(m["id"], m["docking_id"], target.name)
        return landed

    def _concurrency(self, target: str) -> int:
        for t in self.cfg.targets:
            if t.name == target:
                return t.max_concurrency
        return 1

    def _deliver_clip(self, r: dict[str, Any], target: StorageTarget,
                      should_stop: StopFn) -> bool:
        if should_stop():
            return False
        started = time.monotonic()
        try:
            retention = retention_for(self.cfg.retention, r["retention_class"] or
                                      self.cfg.retention.default_class,
                                      parse_iso(r["docked_at"]))  # type: ignore[arg-type]
            receipt = target.put_file(Path(r["staged_path"]), r["key"], sha256=r["sha256"],
                                      size=r["size"], retention=retention)
            if not target.verify(r["key"], sha256=r["sha256"], size=r["size"]):
                self._corrupt_copy(target, r)
        except (DeliveryError, OSError) as exc:
            self._delivery_failed("deliveries", "clip_id", r["clip_id"], target, exc)
            return False
        seconds = time.monotonic() - started
        self._clip_landed(r["clip_id"], target.name,
                          transfer=None if receipt.already_present else (r["size"], seconds))
        return True

    def _corrupt_copy(self, target: StorageTarget, r: dict[str, Any]) -> None:
        """The copy on the target does not match the clip's SH-256: move it aside and send
        again where the target allows it; a write-once store needs an operator."""
        quarantine = getattr(target, "quarantine", None)
        if quarantine is None:
            raise DeliveryError(
                f"{target.name}: {r['key']}: the stored copy does not match SHA-256 "
                f"{r['sha256']} and this write-once target cannot replace it: operator "
                "action needed", retry=False)
        moved = quarantine(r["key"])
        self.state.audit("quarantined", f"clip/{r['clip_id']}",
                         {"target": target.name, "key": r["key"], "moved_to": moved,
                          "expected_sha256": r["sha256"]})
        raise DeliveryError(f"{target.name}: {r['key']}: copy on target was corrupt (moved to "
                            f"{moved}); sending again", retry=True)

    def _clip_landed(self, clip_id: int, target: str,
                     transfer: tuple[int, float] | None = None) -> None:
        required = {t.name for t in self.targets if t.required}
        with self.state.tx() as conn:
            conn.execute("UPDATE deliveries SET state = 'delivered', verified_at = ?, "
                         "last_error = NULL WHERE clip_id = ? AND target = ?",
                         (self.state.now(), clip_id, target))
            if transfer is not None:
                conn.execute("INSERT INTO transfers (ts, target, bytes, seconds) "
                             "VALUES (?, ?, ?, ?)", (self.state.now(), target, *transfer))
            have = {r["target"] for r in conn.execute(
                "SELECT target FROM deliveries WHERE clip_id = ? AND state = 'delivered'",
                (clip_id,))}
            if required <= have:
                self.state._advance_clip(conn, clip_id, "signed", "delivered",
                                         {"delivered_at": self.state.now()})
        who = self._who_clip(clip_id)
        log.info("port %s serial %s: %s verified on %s", who["port"], who["serial"],
                 who["safe_name"], target)

    def _who_clip(self, clip_id: int) -> dict[str, Any]:
        """Port, serial and name of a clip, for log lines."""
        return self.state.query_one(
            "SELECT d.port, d.serial, c.safe_name FROM clips c JOIN dockings d "
            "ON d.id = c.docking_id WHERE c.id = ?", (clip_id,)) or {
            "port": "?", "serial": "?", "safe_name": f"clip {clip_id}"}

    def _manifest_landed(self, manifest_id: int, docking_id: int, target: str) -> None:
        required = {t.name for t in self.targets if t.required}
        with self.state.tx() as conn:
            conn.execute("UPDATE manifest_deliveries SET state = 'delivered', verified_at = ?, "
                         "last_error = NULL WHERE manifest_id = ? AND target = ?",
                         (self.state.now(), manifest_id, target))
            have = {r["target"] for r in conn.execute(
                "SELECT target FROM manifest_deliveries WHERE manifest_id = ? AND "
                "state = 'delivered'", (manifest_id,))}
            undelivered = conn.execute(
                "SELECT count(*) FROM clips WHERE docking_id = ? AND state = 'signed'",
                (docking_id,)).fetchone()[0]
            d = conn.execute("SELECT state, port, serial FROM dockings WHERE id = ?",
                             (docking_id,)).fetchone()
            finished = required <= have and undelivered == 0 and d["state"] == "signed"
            if finished:
                self.state._advance_docking(conn, docking_id, "signed", "delivered",
                                            {"delivered_at": self.state.now()})
                self.state.audit("delivered", f"docking/{docking_id}",
                                 {"targets": sorted(have)}, conn=conn)
        if finished:
            log.info("port %s serial %s: docking %d delivered and verified on %s", d["port"],
                     d["serial"], docking_id, ", ".join(sorted(have)))
            with self.state.tx() as conn:  # the port tile, if it still shows this docking
                conn.execute("UPDATE ports SET message = 'delivered and verified', "
                             "updated_at = ? WHERE port = ? AND docking_id = ?",
                             (self.state.now(), d["port"], docking_id))
            if not self.cfg.delivery.keep_staged:
                shutil.rmtree(self.staging_dir(docking_id), ignore_errors=True)

    def _delivery_failed(self, table: str, idcol: str, ident: int, target: StorageTarget,
                         exc: BaseException) -> None:
        retry = getattr(exc, "retry", True)
        row = self.state.query_one(f"SELECT attempts FROM {table} WHERE {idcol} = ? AND "
                                   "target = ?", (ident, target.name))
        attempts = (row["attempts"] if row else 0) + 1
        delay = retry_delay(attempts, self.cfg.delivery.retry_seconds)
        retry_after = getattr(exc, "retry_after", None)
        if retry and retry_after:  # the server said when (503 Slow Down, Retry-After)
            delay = max(delay, float(retry_after))
        next_try = datetime.fromtimestamp(self.state.clock().timestamp() + delay,
                                          tz=self.state.clock().tzinfo)
        with self.state.tx() as conn:
            conn.execute(f"UPDATE {table} SET attempts = ?, last_error = ?, next_try_at = ?, "
                         f"state = ? WHERE {idcol} = ? AND target = ?",
                         (attempts, str(exc), iso(next_try), "pending" if retry else "failed",
                          ident, target.name))
            if not retry:
                self.state.audit("delivery_failed", f"{table}/{ident}",
                                 {"target": target.name, "error": str(exc)}, conn=conn)
        if not retry:
            raise_alert(self.state, level="alarm", kind="delivery_failed",
                        subject=f"target/{target.name}",
                        message=f"{target.describe()}: permanent error, not retrying: {exc}",
                        command=self.cfg.delivery.alert_command)
        level = logging.WARNING if retry else logging.ERROR
        if table == "deliveries":
            who = self._who_clip(ident)
        else:
            who = self.state.query_one(
                "SELECT d.port, d.serial, 'manifest' AS safe_name FROM manifests m JOIN "
                "dockings d ON d.id = m.docking_id WHERE m.id = ?", (ident,)) or {
                "port": "?", "serial": "?", "safe_name": "manifest"}
        log.log(level, "port %s serial %s: delivery of %s to %s failed (attempt %d, %s): %s",
                who["port"], who["serial"], who["safe_name"], target.name, attempts,
                "will retry" if retry else "permanent, not retrying", exc)

    # ------------------------------------------------------------------ whole docking

    def run_docking(self, port: str, root: Path, hints: Mapping[str, str] | None = None,
                    should_stop: StopFn = _never) -> DockingOutcome:
        docking_id, known = self.begin_docking(port, root, hints)
        out = self.offload(docking_id, root, known, should_stop)
        self.finish(docking_id)
        return out

    def finish(self, docking_id: int) -> bool:
        """Probe, check and sign whatever of the docking is copied (idempotent). Returns False
        when another thread is already finishing this docking."""
        with self._finishing_lock:
            if docking_id in self._finishing:
                return False
            self._finishing.add(docking_id)
        try:
            self.process(docking_id)
            if self.ready_to_sign(docking_id):
                self.analyze_continuity(docking_id)
                self.sign(docking_id)
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
                                 writable=self.writable(port, root))
        except DockdError as exc:  # e.g. the recorder could not be made writable
            log.warning("port %s serial %s: recorder not cleared: %s", port, d["serial"], exc)
            self._port_msg(port, message=f"not cleared: {exc}")
            return None
        if out.cleared:
            self._port_msg(port, message=f"erased {len(out.cleared)} delivered clip(s) "
                                         "from the recorder")
        return out

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
