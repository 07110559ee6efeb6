"""The directory device source: recorders appear as trees under ``<ports_dir>/port-NN``.

A recorder *docks* when ``port-NN`` becomes a non-empty directory and *undocks* when it
disappears or empties. As in udiskie and Home Assistant's usb integration, filesystem
events are only hints: the watchdog observer thread turns each one into a tiny
:class:`Hint` on a one-slot queue (hints coalesce; none is ever needed), the owner of the
source re-scans the ports, and pure functions decide. The ports directory and each port
directory are watched non-recursively (what a recorder holds deeper down does not matter,
and watching it would put inotify watches on the recorder's whole tree):

- :func:`reconcile` turns two scans into :class:`Docked` / :class:`Undocked` events;
- :func:`settle_step` adds the settle rule: a new view is reported as docked only once it
  has stayed identical for ``settle_seconds``; an undocking is reported at once.

The source also re-scans on a slow timer (events may be lost, e.g. mounts do not raise
inotify events) and at start-up, so recorders already present are reported too.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

log = logging.getLogger(__name__)

Fingerprint = tuple[int, int, int, tuple[str, ...]]


@dataclass(frozen=True)
class PortView:
    """What one scan saw on a port: a recorder tree and what identifies this docking."""

    port: str
    root: Path
    fingerprint: Fingerprint
    """(st_dev, st_ino, st_ctime_ns of the port directory, sorted top-level names).

    A re-plug of a different tree gives a new fingerprint. The ctime is there because a
    file system reuses a freed inode number at once: a tree removed and another renamed
    onto the port between two scans may well get the same ``st_ino`` (and a recorder of
    the same model has the same top-level names); renaming a directory updates its ctime.
    """


@dataclass(frozen=True)
class Docked:
    port: str
    root: Path
    fingerprint: Fingerprint


@dataclass(frozen=True)
class Undocked:
    port: str


DeviceEvent = Docked | Undocked


@dataclass(frozen=True)
class Hint:
    """Something changed under the ports directory (a watchdog event, reduced)."""

    kind: str
    path: str


def port_names(n_ports: int) -> list[str]:
    return [f"port-{i:02d}" for i in range(1, n_ports + 1)]


def scan_ports(ports_dir: Path, n_ports: int) -> dict[str, PortView]:
    """Every port ``port-01``..``port-NN`` that holds a non-empty directory.

    A missing ``ports_dir``, a port that is not a directory or cannot be read is empty.
    Names starting with ``.`` in ``ports_dir`` (trees being built) are never ports.
    """
    views: dict[str, PortView] = {}
    for name in port_names(n_ports):
        root = Path(ports_dir) / name
        try:
            st = os.stat(root)
            with os.scandir(root) as it:
                names = tuple(sorted(e.name for e in it))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            log.warning("port %s: cannot scan %s: %s", name, root, exc)
            continue
        if names:
            views[name] = PortView(name, root, (st.st_dev, st.st_ino, st.st_ctime_ns, names))
    return views


def reconcile(old: Mapping[str, PortView], new: Mapping[str, PortView]) -> list[DeviceEvent]:
    """What happened between two scans, sorted by port. Pure.

    A port that changed its fingerprint gives ``Undocked`` then ``Docked``.
    """
    events: list[DeviceEvent] = []
    for port in sorted(set(old) | set(new)):
        before, after = old.get(port), new.get(port)
        if before is not None and (after is None or after.fingerprint != before.fingerprint):
            events.append(Undocked(port))
        if after is not None and (before is None or after.fingerprint != before.fingerprint):
            events.append(Docked(port, after.root, after.fingerprint))
    return events


def settle_step(
    reported: Mapping[str, PortView],
    pending: Mapping[str, tuple[PortView, float]],
    observed: Mapping[str, PortView],
    now: float,
    settle_seconds: float,
) -> tuple[list[DeviceEvent], dict[str, PortView], dict[str, tuple[PortView, float]]]:
    """One scan through the settle rule. Pure.

    ``reported`` are the views already announced as docked; ``pending`` the views seen but
    not yet announced, each with the time it was first seen unchanged. Returns the events
    to announce and the new ``reported`` and ``pending``.
    """
    stable: dict[str, PortView] = {}
    new_pending: dict[str, tuple[PortView, float]] = {}
    for port, view in observed.items():
        known = reported.get(port)
        if known is not None and known.fingerprint == view.fingerprint:
            stable[port] = known
            continue
        seen = pending.get(port)
        since = seen[1] if seen is not None and seen[0].fingerprint == view.fingerprint else now
        if now - since >= settle_seconds:
            stable[port] = view
        else:
            new_pending[port] = (view, since)
    events = reconcile(reported, stable)
    return events, stable, new_pending


class _HintHandler(FileSystemEventHandler):
    """Runs in the observer thread: only turns events into hints on a one-slot queue."""

    def __init__(self, hints: queue.Queue[Hint]):
        super().__init__()
        self._hints = hints

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        path = event.src_path if isinstance(event.src_path, str) else os.fsdecode(event.src_path)
        try:
            self._hints.put_nowait(Hint(event.event_type, path))
        except queue.Full:
            pass  # a hint is already waiting; one re-scan covers both


class DirectorySource:
    """Recorder docking/undocking under ``ports_dir``; ``poll()`` it from one owner thread."""

    def __init__(self, ports_dir: Path, n_ports: int, settle_seconds: float,
                 rescan_seconds: float = 5.0, *, use_observer: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.ports_dir = Path(ports_dir)
        self.n_ports = n_ports
        self.settle_seconds = max(0.0, settle_seconds)
        self.rescan_seconds = rescan_seconds
        self.use_observer = use_observer
        self._clock = clock
        self._hints: queue.Queue[Hint] = queue.Queue(maxsize=1)
        self._observer: BaseObserver | None = None
        self._handler = _HintHandler(self._hints)
        self._port_watches: dict[str, tuple[int, ObservedWatch]] = {}
        self._lock = threading.Lock()
        self._reported: dict[str, PortView] = {}
        self._pending: dict[str, tuple[PortView, float]] = {}
        self._next_rescan = 0.0
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create the ports and start watching. The first ``poll()`` scans at once, so
        recorders already docked are reported (after settle) like any other."""
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        for name in port_names(self.n_ports):
            try:
                (self.ports_dir / name).mkdir(exist_ok=True)
            except OSError as exc:  # e.g. a file in the way: the port just stays empty
                log.warning("port %s: cannot create %s: %s", name, self.ports_dir / name, exc)
        self._started = True
        self._next_rescan = 0.0
        self._start_observer()
        log.info("watching %d ports under %s (settle %.1f s, rescan %.1f s)",
                 self.n_ports, self.ports_dir, self.settle_seconds, self.rescan_seconds)

    def stop(self) -> None:
        """Stop the observer thread. Safe to call twice."""
        self._started = False
        with self._lock:
            observer, self._observer = self._observer, None
        self._port_watches = {}
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def __enter__(self) -> DirectorySource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def docked(self) -> dict[str, PortView]:
        """The views announced as docked and not yet undocked."""
        return dict(self._reported)

    # ------------------------------------------------------------------ polling

    def poll(self, timeout: float) -> list[DeviceEvent]:
        """Wait up to ``timeout`` seconds for docking changes; returns them (maybe none)."""
        if not self._started:
            raise RuntimeError("DirectorySource.poll() before start()")
        deadline = self._clock() + max(0.0, timeout)
        while True:
            events = self._rescan_if_due()
            if events:
                return events
            now = self._clock()
            wake = min(deadline, self._next_rescan, *self._settle_deadlines())
            if now >= deadline:
                return []
            try:
                self._hints.get(timeout=max(0.0, wake - now))
            except queue.Empty:
                continue
            self._drain_hints()
            self._next_rescan = 0.0  # a hint: re-scan now

    def _settle_deadlines(self) -> list[float]:
        return [since + self.settle_seconds for _view, since in self._pending.values()]

    def _drain_hints(self) -> None:
        while True:
            try:
                self._hints.get_nowait()
            except queue.Empty:
                return

    def _rescan_if_due(self) -> list[DeviceEvent]:
        now = self._clock()
        due = now >= self._next_rescan or any(now >= d for d in self._settle_deadlines())
        if not due:
            return []
        self._next_rescan = now + self.rescan_seconds
        if self._observer is None or not self._observer.is_alive():
            self._start_observer()
        self._arm_port_watches()
        observed = scan_ports(self.ports_dir, self.n_ports)
        events, self._reported, self._pending = settle_step(
            self._reported, self._pending, observed, now, self.settle_seconds)
        for ev in events:
            if isinstance(ev, Docked):
                log.info("port %s: recorder docked at %s", ev.port, ev.root)
            else:
                log.info("port %s: recorder undocked", ev.port)
        return events

    def _start_observer(self) -> None:
        if not self.use_observer or not self._started or not self.ports_dir.is_dir():
            return
        with self._lock:
            if self._observer is not None:
                if self._observer.is_alive():
                    return
                log.warning("filesystem observer for %s died; restarting", self.ports_dir)
            observer = Observer()
            observer.daemon = True
            try:
                observer.schedule(self._handler, str(self.ports_dir), recursive=False)
                observer.start()
            except OSError as exc:
                log.warning("cannot watch %s (%s); relying on the %.1f s re-scan",
                            self.ports_dir, exc, self.rescan_seconds)
                return
            self._observer = observer
            self._port_watches = {}

    def _arm_port_watches(self) -> None:
        """Watch each port directory itself (not recursively); re-arm when it was replaced.

        The ports directory's own watch sees a tree renamed onto or off a port; these see
        names appearing in or vanishing from a port directory that stays in place.
        """
        observer = self._observer
        if observer is None or not observer.is_alive():
            return
        for name in port_names(self.n_ports):
            path = self.ports_dir / name
            try:
                ino = os.stat(path).st_ino
            except OSError:
                ino = None
            armed = self._port_watches.get(name)
            if armed is not None and armed[0] == ino:
                continue
            if armed is not None:
                try:
                    observer.unschedule(armed[1])
                except (KeyError, OSError):
                    pass
                del self._port_watches[name]
            if ino is None:
                continue
            try:
                watch = observer.schedule(self._handler, str(path), recursive=False)
            except OSError as exc:
                log.debug("port %s: cannot watch %s: %s", name, path, exc)
                continue
            self._port_watches[name] = (ino, watch)
