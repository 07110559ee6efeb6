"""The supervisor's port table: which recorder is docked where, the job running for each
port, and when a failed offload is tried again.

One owner: the daemon's supervisor loop is the only thread that reads or changes the
table (:meth:`Supervisor.on_event`, :meth:`Supervisor.serve`, :meth:`Supervisor.reap`).
Other threads never touch it; they ask through :meth:`Supervisor.ask` (a queue), e.g. the
delivery thread asking for recorders to be cleared once their clips are delivered.

A port runs one job at a time, in the offload pool: the docking's copy (register + copy
only; the finisher probes, checks and signs), or — for a recorder still docked whose copy
ended — clearing it (R6) or re-reading its health (R9).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import tiles
from ..devices.source import DeviceSource
from ..devices.udev_core import Docked as UdevDocked
from ..devices.udev_core import Foreign, ForeignGone, MountFailed
from ..devices.watch import Docked, Undocked
from ..errors import CopyError, DockdError
from ..store import State, dockings

if TYPE_CHECKING:
    from ..config import Config
    from ..pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClearDocked:
    """Clear the docked recorders whose clips are now verified on every target."""


@dataclass(frozen=True)
class RereadDocked:
    """Re-read the health of the docked recorders (charging)."""


Request = ClearDocked | RereadDocked


@dataclass
class PortJob:
    root: Path
    future: Future[Any]
    gone: threading.Event
    kind: str = "dock"
    """"dock" (register + copy), "clear" or "reread"."""


@dataclass
class Supervisor:
    cfg: Config
    state: State
    pipeline: Pipeline
    source: DeviceSource
    pool: ThreadPoolExecutor
    stop_event: threading.Event
    wake: Callable[[], None]
    """Called when a job ended (the delivery thread has work)."""
    docked: dict[str, Path] = field(default_factory=dict)
    hints: dict[str, dict[str, str]] = field(default_factory=dict)
    jobs: dict[str, PortJob] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)
    redocked: set[str] = field(default_factory=set)
    """Ports docked again while the job of the previous recorder there still ran."""
    requests: queue.SimpleQueue[Request] = field(default_factory=queue.SimpleQueue)

    # ------------------------------------------------------------------ other threads

    def ask(self, request: Request) -> None:
        """Any thread: ask the supervisor for something (served in its next turn)."""
        self.requests.put(request)

    # ------------------------------------------------------------------ device events

    def on_event(self, ev: object) -> None:
        match ev:
            case Foreign(port=port, vendor_id=vendor, model_id=model, serial=serial):
                log.warning("port %s: foreign USB device %s:%s (serial %s) ignored: not an "
                            "allowed recorder model, never mounted", port, vendor, model, serial)
                self.state.set_port(port, state="foreign", serial=None, error=None,
                                    message=f"foreign device {vendor}:{model} ignored "
                                            "(not a registered recorder)")
            case ForeignGone(port=port):
                self.state.set_port(port, state="empty", message=None, error=None)
            case MountFailed(port=port, serial=serial, reason=reason):
                log.error("port %s serial %s: cannot mount the recorder: %s", port, serial,
                          reason)
                self.state.set_port(port, state="error", serial=serial, error=reason)
            case UdevDocked(port=port, root=root, hints=hints):  # with its udev properties
                self.arrived(port, root, hints)
            case Docked(port=port, root=root):
                self.arrived(port, root, {})
            case Undocked(port=port):
                self.undocked(port)
            case _:
                log.warning("unknown device event %r ignored", ev)

    def arrived(self, port: str, root: Path, hints: Mapping[str, str]) -> None:
        log.info("port %s: recorder tree appeared at %s", port, root)
        self.docked[port] = root
        self.hints[port] = dict(hints)
        self.submit(port, root)

    def undocked(self, port: str) -> None:
        log.info("port %s: recorder removed", port)
        self.docked.pop(port, None)
        self.retry_at.pop(port, None)
        self.redocked.discard(port)
        # the tile first (a "plug it back in" tile stays), then the docking is closed
        tiles.port_emptied(self.state, port)
        self.pipeline.undocked(port)
        job = self.jobs.get(port)
        if job is not None:
            job.gone.set()
        else:
            self.interrupt(port)

    # ------------------------------------------------------------------ jobs

    def submit(self, port: str, root: Path) -> None:
        """Start the docking's job (register + copy) for ``port``."""
        if port in self.jobs:
            if self.jobs[port].gone.is_set():  # the last recorder is still being wound up
                self.redocked.add(port)
            return
        gone = threading.Event()
        pipeline, finisher = self.pipeline, self.pipeline.finisher
        hints = dict(self.hints.get(port, {}))

        def should_stop() -> bool:
            return gone.is_set() or self.stop_event.is_set()

        def job() -> None:
            try:
                out = pipeline.copy_docking(port, root, hints, should_stop)
                finisher.request(out.docking_id)  # continuity, notes, signing: not here
            except CopyError as exc:
                if gone.is_set():
                    d = dockings.offloading_on_port(self.state, port)
                    if d is not None:
                        pipeline.mark_interrupted(d, f"recorder removed: {exc}")
                        finisher.request(d)
                elif self.stop_event.is_set():
                    log.info("port %s: offload paused because dockd is stopping; the same "
                             "docking resumes after the restart", port)
                else:
                    raise
            finally:
                self.wake()

        self.jobs[port] = PortJob(root, self.pool.submit(job), gone)

    def _side_job(self, kind: str, port: str, root: Path, work: Callable[[], Any]) -> None:
        """Clearing or a health re-read of a docked recorder: the port's job while it runs."""
        self.jobs[port] = PortJob(root, self.pool.submit(work), threading.Event(), kind)

    def serve(self) -> None:
        """Answer what other threads asked for."""
        while True:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                return
            idle = [(p, r) for p, r in self.docked.items() if p not in self.jobs]
            match request:
                case ClearDocked():
                    for port, root in idle:
                        def clear(p: str = port, r: Path = root) -> None:
                            self.pipeline.clear(p, r)

                        self._side_job("clear", port, root, clear)
                case RereadDocked():
                    for port, root in idle:
                        hints = dict(self.hints.get(port, {}))

                        def reread(p: str = port, r: Path = root,
                                   h: Mapping[str, str] = hints) -> None:
                            try:
                                self.pipeline.reread_health(p, r, h)
                            except DockdError as exc:
                                log.warning("port %s: health re-read failed: %s", p, exc)

                        self._side_job("reread", port, root, reread)

    def reap(self) -> None:
        """Jobs that ended: errors on the port tile, the recorder released once copied, an
        offload that failed tried again later, a recorder docked meanwhile started."""
        for port, job in list(self.jobs.items()):
            if not job.future.done():
                continue
            del self.jobs[port]
            again = port in self.redocked and port in self.docked
            self.redocked.discard(port)
            exc = job.future.exception()
            if job.kind != "dock":
                if exc is not None:
                    log.error("port %s: %s failed: %s", port, job.kind, exc,
                              exc_info=not isinstance(exc, DockdError))
            elif exc is not None:
                log.error("port %s: docking failed: %s", port, exc,
                          exc_info=not isinstance(exc, DockdError))
                if not again:
                    self.state.set_port(port, state="error", error=str(exc))
                if isinstance(exc, CopyError) and not job.gone.is_set():
                    self.retry_at[port] = time.monotonic() + self.cfg.delivery.retry_seconds
            elif not again and not self._keep_mounted(port):
                # everything is copied: unmount (udev source) so the officer may unplug
                self.source.release(port)
            if again:  # the recorder came back while the last one was wound up
                log.info("port %s: recorder docked again: starting its docking", port)
                self.submit(port, self.docked[port])
        for port, when in list(self.retry_at.items()):
            if time.monotonic() >= when and port in self.docked and port not in self.jobs:
                del self.retry_at[port]
                log.info("port %s: retrying offload", port)
                self.submit(port, self.docked[port])

    def _keep_mounted(self, port: str) -> bool:
        """A recorder whose profile clears it after delivery stays mounted until then."""
        d = dockings.latest_on_port(self.state, port)
        return d is not None and \
            self.pipeline.profile(d["profile"] or "").clear_policy == "after_delivery"

    # ------------------------------------------------------------------ dockings left open

    def interrupt(self, port: str) -> None:
        """The recorder left with no job running: its docking (if still copying) ends."""
        d = dockings.offloading_on_port(self.state, port)
        if d is not None:
            self.pipeline.mark_interrupted(d, "recorder removed")
            self.pipeline.finisher.request(d)

    def close_orphaned(self, present: Collection[str]) -> None:
        """Dockings whose port is empty after a restart: one left 'offloading' by a killed
        daemon is interrupted (and finished by the finisher); a finished one is over. A
        port that still holds a recorder keeps its docking: the Docked event resumes it."""
        for row in dockings.open_dockings(self.state):
            if row["port"] in present:
                continue
            if row["state"] == "offloading":
                self.pipeline.mark_interrupted(row["id"], "recorder not present after restart")
                self.pipeline.finisher.request(row["id"])
            else:
                self.pipeline.undocked(row["port"])
