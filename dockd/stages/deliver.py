"""The delivery stage: one long-lived worker per storage target
(:mod:`dockd.stages.deliver_worker`), fed from the state.

A clip is ready for delivery once it is ``checked`` (hash, probe and recording date known):
the stage gives it a pending delivery per target (:meth:`DeliveryStage.prepare`, in the
docking's folder on the targets as signing will name it) and the workers send it, earliest
deadline first, while the rest of the recorder is still being copied. A docking's manifest
goes to a target once the docking is signed and all its clips are on that target.

The daemon starts the workers once (:meth:`DeliveryStage.start`) and wakes them when work
appears (:meth:`DeliveryStage.wake`); ``dockd ingest`` and the tests call the synchronous
:meth:`DeliveryStage.deliver_pending`, one whole pass of every target's work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import Config
from ..delivery.base import StorageTarget
from ..delivery.early import docking_prefix_of
from ..delivery.layout import clip_key
from ..delivery.publish import publish_checkpoints
from ..errors import DeliveryError
from ..store import State, deliveries
from .deliver_steps import DeliveryContext, StopFn
from .deliver_worker import TargetWorker

log = logging.getLogger(__name__)


def _never() -> bool:
    return False


class DeliveryStage:
    def __init__(self, cfg: Config, state: State,
                 targets: Sequence[StorageTarget] | Callable[[], Sequence[StorageTarget]],
                 signer: Any, *, staging_dir: Callable[[int], Path],
                 cancel: Callable[[], threading.Event]):
        targets_of = targets if callable(targets) else (lambda fixed=list(targets): fixed)
        self.ctx = DeliveryContext(cfg, state, targets_of, signer, staging_dir)
        self._cancel = cancel
        self._prepare_lock = threading.Lock()
        self._workers_lock = threading.Lock()
        self._landed = threading.Event()
        self.on_landed: Callable[[], None] = lambda: None
        """Called (from a worker thread) after a pass in which something landed."""
        self._workers: list[TargetWorker] = []

    @property
    def targets(self) -> Sequence[StorageTarget]:
        return self.ctx.targets

    @property
    def workers(self) -> list[TargetWorker]:
        """One worker per target now; built again when the target list was replaced."""
        with self._workers_lock:
            now = list(self.ctx.targets)
            if len(now) != len(self._workers) or \
                    any(w.target is not t for w, t in zip(self._workers, now, strict=True)):
                old, running = self._workers, any(w.running for w in self._workers)
                for w in old:
                    w.stop()
                concurrency = {t.name: t.max_concurrency for t in self.ctx.cfg.targets}
                self._workers = [TargetWorker(self.ctx, t, concurrency=concurrency.get(t.name, 1),
                                              prepare=self.prepare, cancel=self._cancel,
                                              on_landed=self._note_landed) for t in now]
                if running:
                    for w in self._workers:
                        w.start()
            return self._workers

    # ------------------------------------------------------------------ workers

    @property
    def running(self) -> bool:
        return any(w.running for w in self.workers)

    def start(self) -> None:
        """Start every target's worker (idempotent)."""
        for w in self.workers:
            w.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the workers after the items in hand; True if all ended within ``timeout``."""
        return all([w.stop(timeout) for w in self.workers])

    def wake(self, docking_id: int | None = None) -> None:
        """Clips became ready or a docking was signed: every worker looks again now. (The
        finisher's ``on_ready(docking_id)`` callback.)"""
        for w in self.workers:
            w.wake()

    def _note_landed(self) -> None:
        self._landed.set()
        self.on_landed()

    def take_landed(self) -> bool:
        """True once after anything landed since the last call (clearing looks then)."""
        if self._landed.is_set():
            self._landed.clear()
            return True
        return False

    # ------------------------------------------------------------------ passes

    def deliver_pending(self, should_stop: StopFn = _never, *, ignore_backoff: bool = False
                        ) -> int:
        """One whole pass of every target's work, to completion: due clips earliest deadline
        first, then the manifests they complete, each target in its own worker. Returns how
        many items (clips and manifests) landed. Starts the workers for the pass when they
        are not running (``dockd ingest``, tests) and stops them again afterwards."""
        self.prepare()
        started_here = not self.running
        if started_here:
            self.start()
        try:
            requests = [w.request_pass(should_stop, ignore_backoff=ignore_backoff)
                        for w in self.workers]
            for r in requests:
                r.done.wait()
            landed = sum(r.wait() for r in requests)  # raises what ended a pass, if any
        finally:
            if started_here:
                self.stop()
        self.deliver_custody(ignore_backoff=ignore_backoff)
        return landed

    def deliver_custody(self, *, ignore_backoff: bool = False) -> int:
        """Revisions and audit-trail segments (R4, R7, R8) to every target."""
        from ..custody.publish import deliver_custody

        c = self.ctx
        return deliver_custody(c.state, c.cfg, c.targets, c.signer,
                               ignore_backoff=ignore_backoff)

    def publish_checkpoints(self) -> int:
        """A fresh signed checkpoint on every target (after dockings and on the daemon's
        timer): the newest delivered sequence number and chain head of this dock."""
        c = self.ctx
        return publish_checkpoints(c.state, c.cfg, c.signer.private_key, c.targets)

    # ------------------------------------------------------------------ ready clips

    def prepare(self) -> int:
        """Give every checked clip without one a pending delivery per target, keyed in its
        docking's folder. The folder is computed in the same transaction that records the
        first key, so signing (which takes the folder the clips went to) always agrees."""
        c = self.ctx
        names = [t.name for t in c.targets]
        added = 0
        with self._prepare_lock:
            ready = deliveries.ready_without_delivery(c.state, names)
            dockings = sorted({r["docking_id"] for r in ready})
            for docking_id in dockings:
                with c.state.tx() as conn:
                    # re-read inside the transaction: signing may have run in between
                    rows = [r for r in deliveries.ready_without_delivery(c.state, names)
                            if r["docking_id"] == docking_id]
                    if not rows:
                        continue
                    prefix = docking_prefix_of(c.state, docking_id, c.cfg.dock.id, c.cfg.tz)
                    for r in rows:
                        try:
                            key = clip_key(prefix, r["safe_name"])
                        except ValueError as exc:
                            log.error("clip %d: no key on the targets: %s", r["id"], exc)
                            continue
                        for name in names:
                            added += deliveries.add_pending(conn, r["id"], name, key)
        return added

    def deliver_now(self, row: Any, target: StorageTarget) -> bool:
        """Send one clip to one target in the caller's thread (making room in staging)."""
        worker = next(w for w in self.workers if w.target is target)
        try:
            return worker.deliver_one(row, _never)
        except DeliveryError:
            return False
