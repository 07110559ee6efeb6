"""One long-lived delivery worker per storage target.

A worker owns its target: its pacer (the bandwidth cap), its concurrency cap
(``max_concurrency`` upload lanes, started once) and its backoff (kept per item in the
``deliveries`` table). A *pass* takes what is due for this target, earliest deadline first,
runs it through the lanes, then sends the manifests whose clips are all on this target —
so a slow or broken target holds back only its own manifests, never another target's.

The worker runs a pass when woken (:meth:`TargetWorker.wake`: clips became ready, a
docking was signed), on its timer, and on request (:meth:`TargetWorker.request_pass`,
which the synchronous ``deliver_pending`` waits for). An exception no step expected is
recorded on the item as a failed attempt with backoff; it never ends the lane, the pass
or the worker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ..delivery.base import StorageTarget
from ..delivery.publish import publish_checkpoints
from ..delivery.schedule import Pacer, parse_bandwidth
from ..errors import DeliveryCancelled
from ..store import deliveries
from ..store.rows import DueClipRow
from .deliver_steps import (
    DeliveryContext,
    StopFn,
    UnexpectedError,
    deliver_clip,
    deliver_manifest,
    delivery_failed,
)

log = logging.getLogger(__name__)


def _never() -> bool:
    return False


@dataclass
class PassRequest:
    """A caller waiting for one whole pass of a worker (``deliver_pending``)."""

    should_stop: StopFn = _never
    ignore_backoff: bool = False
    landed: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    """What ended the pass in a way no item can record (``SystemExit``, a simulated crash):
    raised again in the waiting caller, as if the pass had run in its thread."""

    def wait(self, timeout: float | None = None) -> int:
        self.done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.landed


@dataclass
class _Batch:
    """The clip uploads of one pass, counted down by the lanes."""

    left: int
    should_stop: StopFn
    landed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def stopping(self) -> bool:
        return self.error is not None or self.should_stop()

    def finish(self, ok: bool) -> None:
        with self.lock:
            self.landed += ok
            self.left -= 1
            if self.left <= 0:
                self.done.set()


_Job = tuple[DueClipRow, _Batch]


class TargetWorker:
    def __init__(self, ctx: DeliveryContext, target: StorageTarget, *, concurrency: int,
                 prepare: Callable[[], object], cancel: Callable[[], threading.Event],
                 on_landed: Callable[[], None] = lambda: None, interval: float = 1.0):
        self.ctx = ctx
        self.target = target
        self.concurrency = max(1, concurrency)
        self.interval = interval
        self.on_landed = on_landed
        self._prepare = prepare
        self._cancel = cancel
        self._cond = threading.Condition()
        self._woken = False
        self._requests: list[PassRequest] = []
        self._stopping = False
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.passes = 0
        """Passes run so far (tests and status)."""
        tcfg = next((c for c in ctx.cfg.targets if c.name == target.name), None)
        self.pacer: Pacer | None = None
        if tcfg is not None and tcfg.bandwidth_limit:
            self.pacer = Pacer(parse_bandwidth(tcfg.bandwidth_limit),
                               now=lambda: datetime.now(ctx.cfg.tz), sleep=self._paced_sleep)
        if hasattr(target, "throttle"):
            target.throttle = self._throttle

    # ------------------------------------------------------------------ pacing

    def _paced_sleep(self, seconds: float) -> None:
        if self._cancel().wait(seconds):
            raise DeliveryCancelled()

    def _throttle(self, n: int) -> object:
        """Every chunk sent: stop here when dockd stops, and keep the bandwidth cap."""
        if self._cancel().is_set():
            raise DeliveryCancelled()
        return self.pacer.consume(n) if self.pacer is not None else 0.0

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return bool(self._threads) and self._threads[0].is_alive()

    def start(self) -> None:
        if self.running:
            return
        with self._cond:
            self._stopping = False
        name = self.target.name
        self._threads = [threading.Thread(target=self._loop, name=f"deliver-{name}",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._lane, name=f"deliver-{name}-{i}",
                                           daemon=True) for i in range(self.concurrency)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the worker to end after the item in hand; True if every thread ended."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for _ in range(self.concurrency):
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout)
        alive = any(t.is_alive() for t in self._threads)
        if not alive:
            self._threads = []
            self._jobs = queue.Queue()
        return not alive

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def request_pass(self, should_stop: StopFn = _never, *, ignore_backoff: bool = False
                     ) -> PassRequest:
        req = PassRequest(should_stop, ignore_backoff)
        with self._cond:
            if self._stopping or not self.running:
                req.done.set()
                return req
            self._requests.append(req)
            self._cond.notify_all()
        return req

    # ------------------------------------------------------------------ threads

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not (self._stopping or self._woken or self._requests):
                    self._cond.wait(self.interval)
                if self._stopping:
                    for req in self._requests:
                        req.done.set()
                    self._requests = []
                    return
                requests, self._requests = self._requests, []
                self._woken = False
            stops = [r.should_stop for r in requests]

            def should_stop(stops: list[StopFn] = stops) -> bool:
                return self._stopping or (bool(stops) and all(s() for s in stops))

            landed = 0
            error: BaseException | None = None
            try:
                landed = self.run_pass(should_stop,
                                       ignore_backoff=any(r.ignore_backoff for r in requests))
            except Exception:  # a pass that cannot even start (the database): next time
                log.exception("%s: delivery pass failed", self.target.name)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                error = exc
                if not requests:
                    log.error("%s: delivery pass ended by %r", self.target.name, exc)
            for req in requests:
                req.landed, req.error = landed, error
                req.done.set()

    def _lane(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            row, batch = job
            ok = False
            try:
                ok = self.deliver_one(row, batch.stopping)
            except BaseException as exc:  # noqa: BLE001 - the pass hands it to its caller
                batch.error = batch.error or exc
            finally:
                batch.finish(ok)

    def deliver_one(self, row: DueClipRow, should_stop: StopFn) -> bool:
        """One clip copy; whatever goes wrong is a failed attempt on this item."""
        try:
            return deliver_clip(self.ctx, row, self.target, should_stop)
        except Exception as exc:
            log.exception("%s: unexpected error delivering %s", self.target.name, row["key"])
            try:
                delivery_failed(self.ctx, "deliveries", row["clip_id"], self.target,
                                UnexpectedError(exc))
            except Exception:
                log.exception("%s: cannot record the failed attempt", self.target.name)
            return False

    # ------------------------------------------------------------------ one pass

    def run_pass(self, should_stop: StopFn = _never, *, ignore_backoff: bool = False) -> int:
        """Deliver what is due on this target, then the manifests it completes. Returns how
        many items landed. Runs in the worker's thread (or the caller's, when not started)."""
        self.passes += 1
        self._prepare()
        state = self.ctx.state
        rows = deliveries.due_clips(state, self.target.name, state.now(),
                                    ignore_backoff=ignore_backoff)
        landed = self._upload(rows, should_stop)
        manifests = 0
        for m in deliveries.due_manifests(state, self.target.name, state.now(),
                                          ignore_backoff=ignore_backoff):
            if should_stop():
                break
            try:
                ok = deliver_manifest(self.ctx, m, self.target, should_stop)
            except Exception as exc:
                log.exception("%s: unexpected error delivering the manifest of docking %d",
                              self.target.name, m["docking_id"])
                delivery_failed(self.ctx, "manifest_deliveries", m["id"], self.target,
                                UnexpectedError(exc))
                ok = False
            manifests += ok
        if manifests:
            publish_checkpoints(state, self.ctx.cfg, self.ctx.signer.private_key, [self.target])
        if landed + manifests:
            self.on_landed()
        return landed + manifests

    def _upload(self, rows: list[DueClipRow], should_stop: StopFn) -> int:
        if not rows:
            return 0
        if not self.running:  # called directly, outside the worker: one at a time
            return sum(self.deliver_one(r, should_stop) for r in rows)
        batch = _Batch(len(rows), should_stop)
        for r in rows:
            self._jobs.put((r, batch))
        batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return batch.landed
