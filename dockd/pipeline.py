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
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, ProfileConfig
from .delivery.base import StorageTarget
from .delivery.clearing import ClearOutcome
from .devices.drivers import DriverRegistry
from .errors import DockdError
from .ingest.probe import Prober
from .integrity.notes import NoteAnalyzer, NoteResult
from .model import ClipEntry, Finding, RecorderSnapshot
from .stages import check, clear, offload, register
from .stages import sign as signing
from .stages.deliver import DeliveryStage
from .stages.finisher import Finisher, ReadyFn
from .store import State, dockings

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
        self.delivery = DeliveryStage(cfg, state, lambda: self.targets, signer,
                                      staging_dir=self.staging_dir, cancel=lambda: self.cancel)
        """One long-lived worker per target (dockd.stages.deliver); ``wake()`` it when clips
        become ready or a docking is signed."""

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
