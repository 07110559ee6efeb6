"""One docking's path through dockd: identify → register → offload → probe → check → sign,
and the delivery step that drains signed clips to every storage target.

``Pipeline`` is the facade the daemon, ``dockd ingest`` and the tests call; each step lives
in a stage module under :mod:`dockd.stages` (register, offload, check, sign, finisher,
clear) and its SQL in :mod:`dockd.store`. Each step reads the clips in the state it handles
and moves each one along one edge in one transaction, so a process killed anywhere resumes
by simply running the steps again.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from . import tiles
from .alerts import raise_alert
from .config import Config, ProfileConfig
from .delivery.base import StorageTarget
from .delivery.clearing import ClearOutcome
from .delivery.layout import MANIFEST_NAME, SIGNATURE_NAME
from .delivery.publish import manifest_token, publish_checkpoints, publish_keys
from .delivery.recheck import DELIVERY_FAILED, TARGET_UNUSABLE, target_delivered
from .delivery.repair import docking_complete
from .delivery.schedule import Pacer, parse_bandwidth
from .delivery.targets import retention_for
from .devices.drivers import DriverRegistry
from .errors import DeliveryCancelled, DeliveryError, DockdError
from .ingest.probe import Prober
from .integrity.checkpoint import TOKEN_SUFFIX
from .integrity.notes import NoteAnalyzer, NoteResult
from .lifecycle import retry_delay
from .model import ClipEntry, Finding, RecorderSnapshot
from .stages import check, clear, offload, register
from .stages import sign as signing
from .stages.finisher import Finisher, ReadyFn
from .store import State, dockings, iso, parse_iso

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
    staging_wait_s: float = 300.0
    """How long a copy waits for room in a full staging (other dockings' clips being
    delivered) without any room appearing, before it stops with ``StagingFull``."""

    def __init__(self, cfg: Config, state: State, *, registry: DriverRegistry, prober: Prober,
                 targets: Sequence[StorageTarget], signer: Signer,
                 notes: NoteAnalyzer | None = None, on_ready: ReadyFn | None = None):
        self.cfg = cfg
        self.notes = notes
        self.state = state
        self.registry = registry
        self.prober = prober
        self.targets = list(targets)
        self.signer = signer
        self.sign_lock = threading.Lock()
        self.probe_lock = threading.Lock()  # one exiftool process: one request at a time
        self.finisher = Finisher(self) if on_ready is None else Finisher(self, on_ready)
        """Probe/check as clips arrive, continuity, notes and signing (its own threads in
        the daemon; called in place otherwise)."""
        self.writable_for: Callable[[str], Any] | None = None
        """port -> context manager making that recorder writable (the udev source's
        ``writable``); None: recorders need no remount (the directory source)."""
        # copy progress for a foreground caller (``dockd ingest``'s progress bar):
        # on_progress(event, **info) with event "begin" | "clip" | "advance" | "copied"
        self.on_progress: Callable[..., None] | None = None
        self.cancel = threading.Event()
        """Set when dockd stops: uploads in flight end at their next chunk (resumed later)."""
        for t in self.targets:
            tcfg = next((c for c in cfg.targets if c.name == t.name), None)
            pacer = None
            if tcfg is not None and tcfg.bandwidth_limit:
                pacer = Pacer(parse_bandwidth(tcfg.bandwidth_limit),
                              now=lambda: datetime.now(cfg.tz), sleep=self._paced_sleep)
            if hasattr(t, "throttle"):
                t.throttle = self._throttle(pacer)

    def _paced_sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise DeliveryCancelled()

    def _throttle(self, pacer: Pacer | None) -> Callable[[int], object]:
        """Every chunk sent: stop here when dockd stops, and keep the bandwidth cap."""
        def throttle(n: int) -> object:
            if self.cancel.is_set():
                raise DeliveryCancelled()
            return pacer.consume(n) if pacer is not None else 0.0
        return throttle

    @property
    def on_ready(self) -> ReadyFn:
        """Called with a docking id whenever its clips became checked or it got signed
        (the delivery stage's ``wake``)."""
        return self.finisher.on_ready

    @on_ready.setter
    def on_ready(self, fn: ReadyFn) -> None:
        self.finisher.on_ready = fn

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

    def writable(self, port: str, root: Path) -> Callable[[], Any] | None:
        """How the recorder is made writable for clearing / setting its clock: the udev
        source remounts it read-write through the mount helper for that step only; the
        directory source needs nothing (None)."""
        factory = self.writable_for
        if factory is None:
            return None
        return lambda: factory(port)

    # ------------------------------------------------------------------ 1. identify + register

    def begin_docking(self, port: str, root: Path, hints: Mapping[str, str] | None = None
                      ) -> tuple[int, list[tuple[ClipEntry, dict[str, Any]]]]:
        """Identify the recorder at ``root`` and register its clips (dockd.stages.register)."""
        return register.begin_docking(self, port, root, hints)

    def _identity_findings(self, docking_id: int, serial: str, hints: Mapping[str, str]
                           ) -> list[Finding]:
        return register.identity_findings_of(self, docking_id, serial, hints)

    # ------------------------------------------------------------------ 2. offload (copy only)

    def offload(self, docking_id: int, root: Path,
                known: Sequence[tuple[ClipEntry, dict[str, Any]]] = (),
                should_stop: StopFn = _never) -> DockingOutcome:
        """Copy the docking's clips into staging (dockd.stages.offload)."""
        return offload.offload(self, DockingOutcome(docking_id), root, known, should_stop)

    def arrived(self, docking_id: int) -> None:
        """A clip of the docking was copied (the finisher probes it while the rest copies)."""
        self.finisher.arrived(docking_id)

    def mark_interrupted(self, docking_id: int, why: str) -> None:
        offload.mark_interrupted(self, docking_id, why)

    def undocked(self, port: str) -> None:
        offload.undocked(self, port)

    # ------------------------------------------------------------------ 3. probe, check, notes

    def process(self, docking_id: int) -> None:
        """Probe and check the copied clips now (waits while a finisher thread owns the
        docking)."""
        self.finisher.check_arrived(docking_id)

    def analyze_continuity(self, docking_id: int) -> dict[str, Any]:
        return check.analyze_continuity(self, docking_id)

    def _listen(self, clip: dict[str, Any], docking: dict[str, Any]) -> NoteResult | None:
        return check.listen(self, clip, docking)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ 4. sign

    def ready_to_sign(self, docking_id: int) -> bool:
        return signing.ready_to_sign(self, docking_id)

    def sign(self, docking_id: int) -> str:
        """Build, sign and store the docking's manifest; its checked clips become signed."""
        return signing.sign(self, docking_id)

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
        manifests_landed = 0
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
                publish_keys(target, self.cfg, self.signer.public_pem, self.signer.key_id)
                token = manifest_token(self.state, self.cfg, m["id"], bytes(m["manifest"]))
                if token is not None:
                    target.put_bytes(token, f"{m['prefix']}/{MANIFEST_NAME}{TOKEN_SUFFIX}")
                target.put_bytes(bytes(m["manifest"]), f"{m['prefix']}/{MANIFEST_NAME}")
                target.put_bytes(bytes(m["signature"]), f"{m['prefix']}/{SIGNATURE_NAME}")
            except DeliveryCancelled:
                continue
            except (DeliveryError, OSError) as exc:
                self._delivery_failed("manifest_deliveries", "manifest_id", m["id"], target, exc)
                continue
            landed += 1
            manifests_landed += 1
            self._manifest_landed(m["id"], m["docking_id"], target.name)
        from .custody.publish import deliver_custody  # revisions and audit trail (R4, R7, R8)

        deliver_custody(self.state, self.cfg, self.targets, self.signer,
                        ignore_backoff=ignore_backoff)
        if manifests_landed:
            self.publish_checkpoints()
        return landed

    def publish_checkpoints(self) -> int:
        """A fresh signed checkpoint on every target (after dockings and on the daemon's
        timer): the newest delivered sequence number and chain head of this dock."""
        return publish_checkpoints(self.state, self.cfg, self.signer.private_key, self.targets)

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
        except DeliveryCancelled:
            log.info("%s: upload of %s stopped (dockd stopping); resumed after restart",
                     target.name, r["key"])
            return False
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
                self.state.advance_clip_in(conn, clip_id, "signed", "delivered",
                                         {"delivered_at": self.state.now()})
            docking_id = conn.execute("SELECT docking_id FROM clips WHERE id = ?",
                                      (clip_id,)).fetchone()[0]
        if docking_complete(self.state, docking_id, required) and \
                not self.cfg.delivery.keep_staged:  # a re-sent copy completed it again
            shutil.rmtree(self.staging_dir(docking_id), ignore_errors=True)
        who = self._who_clip(clip_id)
        log.info("port %s serial %s: %s verified on %s", who["port"], who["serial"],
                 who["safe_name"], target)
        target_delivered(self.state, target)
        for waiting in tiles.dockings_waiting_for(self.state, clip_id):
            tiles.refresh_delivered_message(self.state, waiting)

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
            self.state.audit("delivered_to", f"docking/{docking_id}",
                             {"target": target, "manifest_id": manifest_id}, conn=conn)
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
                self.state.advance_docking_in(conn, docking_id, "signed", "delivered",
                                            {"delivered_at": self.state.now()})
                self.state.audit("delivered", f"docking/{docking_id}",
                                 {"targets": sorted(have)}, conn=conn)
        target_delivered(self.state, target)
        if finished:
            log.info("port %s serial %s: docking %d delivered and verified on %s", d["port"],
                     d["serial"], docking_id, ", ".join(sorted(have)))
            tiles.refresh_delivered_message(self.state, docking_id)
            if not self.cfg.delivery.keep_staged:
                shutil.rmtree(self.staging_dir(docking_id), ignore_errors=True)

    def _delivery_failed(self, table: str, idcol: str, ident: int, target: StorageTarget,
                         exc: BaseException) -> None:
        retry = getattr(exc, "retry", True)
        unusable = bool(getattr(exc, "target_state", False))
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
            raise_alert(self.state, level="alarm", kind=DELIVERY_FAILED,
                        subject=f"target/{target.name}",
                        message=f"{target.describe()}: the store refused the content, not "
                                f"retrying (fix it, then `dockd retry`): {exc}",
                        command=self.cfg.delivery.alert_command)
        elif unusable:
            raise_alert(self.state, level="alarm", kind=TARGET_UNUSABLE,
                        subject=f"target/{target.name}",
                        message=f"{target.describe()}: target unusable, retrying with "
                                f"backoff until it is fixed: {exc}",
                        command=self.cfg.delivery.alert_command)
        level = logging.WARNING if retry and not unusable else logging.ERROR
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
        """Register, copy and finish one docking in this thread (``dockd ingest``, tests)."""
        out = self.copy_docking(port, root, hints, should_stop)
        if not self.cancel.is_set():  # stopping: the restart finishes it
            self.finish(out.docking_id)
        return out

    def copy_docking(self, port: str, root: Path, hints: Mapping[str, str] | None = None,
                     should_stop: StopFn = _never) -> DockingOutcome:
        """A port's job in the daemon: register and copy only; the finisher does the rest."""
        same = self.reattach(port, root, hints)
        if same is not None:
            return DockingOutcome(same)
        docking_id, known = self.begin_docking(port, root, hints)
        return self.offload(docking_id, root, known, should_stop)

    def reattach(self, port: str, root: Path, hints: Mapping[str, str] | None = None
                 ) -> int | None:
        """The docking still going on in ``port`` (see :func:`dockd.reattach.reattach`)."""
        from .reattach import reattach

        return reattach(self, port, root, hints)

    def finish(self, docking_id: int) -> bool:
        """Probe, check and sign whatever of the docking is copied (idempotent). Returns False
        when another thread is already finishing this docking (it is done after)."""
        return self.finisher.finish(docking_id)

    def clear(self, port: str, root: Path) -> ClearOutcome | None:
        """Erase verified-delivered clips from the recorder (dockd.stages.clear)."""
        return clear.clear(self, port, root)

    def _repair(self, clip: dict[str, Any], bad: list[str], root: Path | None) -> None:
        clear.repair(self, clip, bad, root)

    def reread_health(self, port: str, root: Path, hints: Mapping[str, str] | None = None
                      ) -> None:
        """Read battery/storage again while the recorder stays docked (R9)."""
        clear.reread_health(self, port, root, hints)

    def resume(self) -> list[int]:
        """At start-up: carry every docking whose recorder is no longer needed forward."""
        resumed = []
        for d in dockings.unfinished(self.state):
            try:
                self.finish(d["id"])
                resumed.append(d["id"])
            except DockdError as exc:
                log.error("port %s serial %s: docking %d cannot finish yet: %s", d["port"],
                          d["serial"], d["id"], exc)
        return resumed
