"""The finisher: probe, check, continuity, spoken notes and signing, off the copy threads.

Offload workers only copy. Each clip they land is announced here (:meth:`Finisher.arrived`);
a finisher thread takes the docking, probes and checks its copied clips in batches (so
they become ``checked`` — ready for delivery — while the recorder is still copying), and
once the offload ended (``offloaded`` / ``interrupted``) runs continuity, the spoken-note
check and signing. :attr:`Finisher.on_ready` is called with the docking id whenever clips
became checked or the docking got signed (the delivery stage's ``wake``).

Ownership: one thread finishes a docking at a time. A docking owned by one thread is never
taken by another; a request for it while owned waits in ``_due`` and is served after.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..delivery.early import promote_delivered
from ..errors import DockdError
from ..store import dockings, finishing
from . import check, sign

if TYPE_CHECKING:
    from ..pipeline import Pipeline

log = logging.getLogger(__name__)

ReadyFn = Callable[[int], None]


def no_ready(docking_id: int) -> None:
    """The default ``on_ready``: nobody to wake."""


class Finisher:
    def __init__(self, pipe: Pipeline, on_ready: ReadyFn = no_ready):
        self.pipe = pipe
        self.on_ready: ReadyFn = on_ready
        self.on_done: Callable[[int], None] = no_ready
        """Called after each pass over a docking (the supervisor's wake-up)."""
        self._cv = threading.Condition()
        self._owned: set[int] = set()
        self._due: dict[int, None] = {}  # insertion-ordered: first asked, first served
        self._threads: list[threading.Thread] = []
        self._running: set[threading.Thread] = set()  # until each ends, stop() or not
        self._stopping = False

    # ------------------------------------------------------------------ ownership

    def _claim(self, docking_id: int, *, wait: bool) -> bool:
        """Own ``docking_id``; False (without ``wait``) when another thread owns it."""
        with self._cv:
            while docking_id in self._owned:
                if not wait:
                    return False
                self._cv.wait()
            self._owned.add(docking_id)
            return True

    def _release(self, docking_id: int) -> None:
        with self._cv:
            self._owned.discard(docking_id)
            self._cv.notify_all()

    def owned(self) -> set[int]:
        with self._cv:
            return set(self._owned)

    def stop_asked(self) -> bool:
        """True in a finisher thread once :meth:`stop` was called: its pass ends after the
        batch it is recording (the rest stays ``copied``, for whoever finishes the docking
        next, e.g. ``dockd ingest`` in place), so that stop() does not wait for a whole
        recorder's backlog. False in any other thread."""
        with self._cv:
            return self._stopping and threading.current_thread() in self._running

    # ------------------------------------------------------------------ the work

    def check_arrived(self, docking_id: int) -> int:
        """Probe and check the docking's copied clips now (waiting while another thread
        owns it). Returns how many became checked."""
        self._claim(docking_id, wait=True)
        try:
            return check.process(self.pipe, docking_id)  # wakes delivery per batch
        finally:
            self._release(docking_id)

    def finish(self, docking_id: int) -> bool:
        """Probe and check what is copied; sign once the offload ended (idempotent).
        False when another thread owns the docking (it is then asked again, and done after)."""
        if not self._claim(docking_id, wait=False):
            self.request(docking_id)
            return False
        try:
            self._finish_owned(docking_id)
        finally:
            self._release(docking_id)
        return True

    def _finish_owned(self, docking_id: int) -> None:
        pipe = self.pipe
        if pipe.cancel.is_set():
            return
        check.process(pipe, docking_id)  # wakes delivery (on_ready) after each batch
        if sign.ready_to_sign(pipe, docking_id) and not pipe.cancel.is_set():
            check.analyze_continuity(pipe, docking_id)
            pipe.sign(docking_id)  # through the facade: tests hook it
            promote_delivered(pipe.state, docking_id,  # clips delivered to make room
                              [t.name for t in pipe.targets if t.required])
            self.on_ready(docking_id)

    # ------------------------------------------------------------------ the threads

    def arrived(self, docking_id: int) -> None:
        """A clip of the docking was copied: probe it soon (in a finisher thread)."""
        self.request(docking_id)

    def request(self, docking_id: int) -> None:
        """Finish ``docking_id`` in a finisher thread (no-op while no thread runs)."""
        with self._cv:
            if not self._threads or self._stopping:
                return
            self._due[docking_id] = None
            self._cv.notify_all()

    def backlog(self) -> int:
        """Ask for every docking copied but not signed yet (start-up, and now and then for
        one a failure left behind), and promote the early-delivered clips of signed ones
        that a crash right after signing left ``signed``. Returns how many were asked for."""
        pipe = self.pipe
        for docking_id in finishing.signed_with_copies(pipe.state):
            # signed, then killed before its early-delivered clips were promoted
            if promote_delivered(pipe.state, docking_id,
                                 [t.name for t in pipe.targets if t.required]):
                self.on_ready(docking_id)
        rows = dockings.unfinished(pipe.state)
        for r in rows:
            self.request(r["id"])
        return len(rows)

    def start(self, threads: int = 2) -> None:
        """Finisher threads: more than one, so that a long spoken-note check of one docking
        does not hold up the probing of another that is still copying."""
        with self._cv:
            self._stopping = False
            for n in range(max(1, threads)):
                t = threading.Thread(target=self._work, name=f"finish-{n + 1}", daemon=True)
                self._threads.append(t)
                self._running.add(t)
                t.start()

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the threads after their current docking. True if they all ended."""
        with self._cv:
            self._stopping = True
            self._due.clear()
            self._cv.notify_all()
            threads, self._threads = self._threads, []
        for t in threads:
            t.join(timeout)
        return not any(t.is_alive() for t in threads)

    def _next(self) -> int | None:
        with self._cv:
            while not self._stopping:
                for docking_id in self._due:
                    if docking_id not in self._owned:
                        del self._due[docking_id]
                        self._owned.add(docking_id)
                        return docking_id
                self._cv.wait(timeout=1.0)
        return None

    def _work(self) -> None:
        try:
            self._serve()
        finally:
            with self._cv:
                self._running.discard(threading.current_thread())

    def _serve(self) -> None:
        while (docking_id := self._next()) is not None:
            try:
                self._finish_owned(docking_id)
            except DockdError as exc:
                log.error("docking %d cannot finish yet: %s", docking_id, exc)
            except Exception:  # keep the finisher alive; the docking is retried later
                log.exception("finishing docking %d failed", docking_id)
            finally:
                self._release(docking_id)
            self.on_done(docking_id)
