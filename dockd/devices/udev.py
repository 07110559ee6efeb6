"""The udev device source: real USB recorders, recognised by port, mounted read-only.

udev events are hints (as in Home Assistant's usb integration and udiskie). The pyudev
monitor thread only turns each event into a frozen :class:`UdevHint` on a small queue. The
owner of the source calls :meth:`UdevSource.poll`, which re-enumerates every block device
(on a hint, a second later again, at start-up and every ``devices.rescan_seconds``) into
:class:`BlockDevice` snapshots; pure functions (:mod:`.udev_core`) decide:

- :func:`snapshot` groups USB block devices by physical port (:mod:`.ports`), checks the
  allow-list, and picks the volume to mount: a partition with a vfat/exfat filesystem is
  preferred over its whole disk (lowest partition number first);
- :func:`reconcile` compares two snapshots and says what :class:`Appeared` or :class:`Left`.

Because decisions use whole snapshots, an event that arrives twice, late, out of order or
not at all changes nothing. Non-USB disks (SATA, NVMe, loop) are not dock ports and are
ignored; a USB device not on the allow-list is reported as :class:`Foreign`, logged, kept
in :attr:`UdevSource.foreign`, and never mounted or read.

Mounting (read-only fsck first, when configured) goes through the privileged helper
(:mod:`.mount`) on a small worker pool, one operation at a time per port, so a slow fsck
never blocks the supervisor (and its watchdog pings). The source emits the same
``Docked``/``Undocked`` events as the directory source (``Docked.root`` is the mount
point, ``Docked.hints`` the udev properties for the drivers) plus :class:`Foreign`,
:class:`ForeignGone` and :class:`MountFailed`.

:meth:`UdevSource.writable` is the one way a recorder becomes writable: the helper
remounts it read-write for the block (clearing delivered clips, writing the time-set file)
and read-only again afterwards, whatever happens inside; if that fails the recorder is
unmounted rather than left writable. Windows and unmounts of one port are serialised.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..config import Config
from . import watch
from .mount import FsckResult, HelperMounter, Mounter, MountError
from .ports import PortMap
from .udev_core import (
    BlockDevice,
    Docked,
    Foreign,
    ForeignGone,
    Left,
    MountFailed,
    PortView,
    UdevEvent,
    UdevHint,
    Undocked,
    docking_hints,
    reconcile,
    snapshot,
)
from .udev_edge import Stoppable, list_block_properties, watch_block_events

log = logging.getLogger(__name__)
T = TypeVar("T")

FOLLOWUP_SECONDS = 1.0
"""After a hint, re-enumerate once more this much later (partitions follow their disk)."""
UNUSABLE_GRACE_SECONDS = 3.0
"""A recorder still without a mountable filesystem after this is reported as failed."""
UNKNOWN_OUTCOME = ("timeout", "unreachable", "protocol")
"""Helper errors after which a remount may or may not have happened."""

# --------------------------------------------------------------------------- the source


@dataclass
class _Attach:
    view: PortView
    future: Future[tuple[Path, FsckResult | None, str]]


class UdevSource:
    """Recorders docking/undocking on USB ports; ``poll()`` it from one owner thread."""

    def __init__(self, cfg: Config, *, mounter: Mounter | None = None,
                 enumerate_devices: Callable[[], list[dict[str, str]]] | None = None,
                 use_monitor: bool = True, mount_workers: int = 4,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.port_map = PortMap(cfg.port_map)
        self.allow = cfg.allow
        self.rescan_seconds = max(0.5, cfg.devices.rescan_seconds)
        self.mounter: Mounter = mounter or HelperMounter(cfg.devices.mount_helper)
        self._enumerate = enumerate_devices or list_block_properties
        self.use_monitor = use_monitor
        self._clock = clock
        self._wake: queue.Queue[object] = queue.Queue(maxsize=64)
        self._pool: ThreadPoolExecutor | None = None
        self._workers = max(1, mount_workers)
        self._observer: Stoppable | None = None
        self._seen: dict[str, PortView] = {}
        self._attaching: dict[str, _Attach] = {}
        self._chain: dict[str, Future[Any]] = {}
        self._docked: dict[str, tuple[PortView, Path]] = {}
        self._failed: dict[str, tuple[watch.Fingerprint, float]] = {}
        self._unusable: dict[str, tuple[watch.Fingerprint, float, bool]] = {}
        self._foreign: dict[str, Foreign] = {}
        self._released: set[str] = set()
        self._port_locks: dict[str, threading.RLock] = {}
        self._port_locks_guard = threading.Lock()
        self._writable_depth: dict[str, int] = {}
        self._next_rescan = 0.0
        self._followup = float("inf")
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="mount")
        self._started = True
        self._next_rescan = 0.0
        if self.use_monitor:
            self._start_monitor()
        log.info("udev source: %d allowed model(s), %d mapped port(s), rescan %.0f s",
                 len(self.allow), len(self.port_map.labels), self.rescan_seconds)

    def stop(self) -> None:
        """Stop the monitor, finish mount work, unmount every recorder. Safe to call twice."""
        self._started = False
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
            except Exception as exc:  # pragma: no cover - pyudev internals
                log.debug("udev monitor stop: %s", exc)
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.shutdown(wait=True, cancel_futures=True)
        ports = set(self._docked) | set(self._attaching) | set(self._chain)  # cancelled detaches too
        for port in sorted(ports):
            self._detach(port, "daemon stopping")
        self._docked.clear()
        self._attaching.clear()
        self._chain.clear()

    def __enter__(self) -> UdevSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def docked(self) -> dict[str, Path]:
        """Mount point of every recorder announced as docked and not yet undocked."""
        return {port: root for port, (_view, root) in self._docked.items()}

    @property
    def foreign(self) -> dict[str, Foreign]:
        """Foreign (not allow-listed) USB devices present now, by port."""
        return dict(self._foreign)

    def push_hint(self, hint: UdevHint) -> None:
        """Called by the monitor thread (and tests): something changed, re-enumerate soon."""
        try:
            self._wake.put_nowait(hint)
        except queue.Full:
            pass  # a wake-up is already waiting; one re-enumeration covers both

    def release(self, port: str) -> None:
        """Offload of ``port`` is complete: unmount it now (it stays docked until unplugged)."""
        if port in self._docked and port not in self._released and self._pool is not None:
            self._released.add(port)
            self._submit(port, lambda: self._detach(port, "offload complete"))

    @contextmanager
    def writable(self, port: str) -> Iterator[None]:
        """The recorder at ``port`` is writable inside the block and read-only again after it,
        even when the block raises. Nested or concurrent windows on one port share one
        read-write period (the last to leave restores read-only). Raises :class:`MountError`
        when the recorder cannot be made writable."""
        with self._port_lock(port):
            depth = self._writable_depth.get(port, 0)
            if depth == 0:
                if port in self._released:
                    raise MountError(f"port {port}: the recorder was unmounted; not making it "
                                     "writable", code="not-mounted")
                self._open_writable(port)
            self._writable_depth[port] = depth + 1
            try:
                yield
            finally:
                if depth:
                    self._writable_depth[port] = depth
                else:
                    del self._writable_depth[port]
                    self._close_writable(port)

    def _port_lock(self, port: str) -> threading.RLock:
        with self._port_locks_guard:
            lock = self._port_locks.get(port)
            if lock is None:
                lock = self._port_locks[port] = threading.RLock()
            return lock

    def _open_writable(self, port: str) -> None:
        try:
            self.mounter.remount(port, True)
        except MountError as exc:
            log.error("port %s: cannot make the recorder writable: %s", port, exc)
            if exc.code in UNKNOWN_OUTCOME:
                self._close_writable(port)
            raise
        except BaseException:
            self._close_writable(port)
            raise
        log.info("port %s: recorder remounted read-write for one step", port)

    def _close_writable(self, port: str) -> None:
        """Back to read-only; never raises. Unmounts the recorder if that is impossible."""
        try:
            self.mounter.remount(port, False)
            log.info("port %s: recorder read-only again", port)
            return
        except Exception as exc:
            log.error("port %s: cannot remount the recorder read-only (%s); unmounting it "
                      "rather than leave it writable", port, exc)
        self._released.add(port)  # no further writable windows on this docking
        try:
            self.mounter.unmount(port)
        except Exception as exc:
            log.error("port %s: cannot unmount the recorder either: %s", port, exc)

    # ------------------------------------------------------------------ polling

    def poll(self, timeout: float) -> list[UdevEvent]:
        """Wait up to ``timeout`` seconds for docking changes; returns them (maybe none)."""
        if not self._started:
            raise RuntimeError("UdevSource.poll() before start()")
        deadline = self._clock() + max(0.0, timeout)
        while True:
            events = self._collect_attached()
            events += self._rescan_if_due()
            if events:
                return events
            now = self._clock()
            if now >= deadline:
                return []
            wake = min(deadline, self._next_rescan, self._followup)
            try:
                item = self._wake.get(timeout=max(0.0, min(wake - now, 0.25)))
            except queue.Empty:
                continue
            if isinstance(item, UdevHint):
                log.debug("port ?: udev %s %s (%s)", item.action, item.devnode, item.id_path)
                self._next_rescan = 0.0
                self._followup = self._clock() + FOLLOWUP_SECONDS

    def _rescan_if_due(self) -> list[UdevEvent]:
        now = self._clock()
        if now < self._next_rescan and now < self._followup:
            return []
        if now >= self._followup:
            self._followup = float("inf")
        self._next_rescan = now + self.rescan_seconds
        try:
            devices = [BlockDevice.from_properties(p) for p in self._enumerate()]
        except Exception as exc:
            log.error("port ?: cannot enumerate block devices: %s", exc)
            return []
        new = snapshot(devices, self.port_map, self.allow)
        events: list[UdevEvent] = []
        for change in reconcile(self._seen, new):
            if isinstance(change, Left):
                events += self._on_left(change.view)
            else:
                events += self._on_appeared(change.view, now)
        self._seen = new
        events += self._retry_and_unusable(now)
        return events

    def _on_left(self, view: PortView) -> list[UdevEvent]:
        port = view.port
        serial = view.device.serial if view.device else ""
        if view.kind == "foreign":
            log.info("port %s: foreign device %s removed (serial %s)", port,
                     view.device.devnode if view.device else "?", serial)
            self._foreign.pop(port, None)
            return [ForeignGone(port)]
        self._failed.pop(port, None)
        self._unusable.pop(port, None)
        self._attaching.pop(port, None)
        if view.device is not None and self._pool is not None:
            self._submit(port, lambda: self._detach(port, "recorder removed"))
        if port in self._docked:
            del self._docked[port]
            self._released.discard(port)
            log.info("port %s: recorder %s removed", port, serial)
            return [Undocked(port)]
        return []

    def _on_appeared(self, view: PortView, now: float) -> list[UdevEvent]:
        port, dev = view.port, view.device
        if view.kind == "foreign":
            assert dev is not None
            ev = Foreign(port, dev.devnode, dev.vendor_id, dev.model_id, dev.serial,
                         dict(dev.properties))
            self._foreign[port] = ev
            log.warning("port %s: foreign USB device %s (vendor %s, model %s, serial %s) "
                        "is not on the allow-list; ignored, not mounted", port, dev.devnode,
                        dev.vendor_id, dev.model_id, dev.serial or "-")
            return [ev]
        if dev is None:
            self._unusable[port] = (view.fingerprint, now, False)
            log.info("port %s: recorder present, waiting for a vfat/exfat filesystem", port)
            return []
        self._start_attach(view)
        return []

    def _retry_and_unusable(self, now: float) -> list[UdevEvent]:
        events: list[UdevEvent] = []
        for port, (fp, since, reported) in list(self._unusable.items()):
            view = self._seen.get(port)
            if view is None or view.fingerprint != fp:
                del self._unusable[port]
            elif not reported and now - since >= UNUSABLE_GRACE_SECONDS:
                self._unusable[port] = (fp, since, True)
                log.error("port %s: recorder has no vfat/exfat filesystem; not mounted", port)
                events.append(MountFailed(port, "", "no vfat/exfat filesystem on the recorder"))
        for port, (fp, when) in list(self._failed.items()):
            view = self._seen.get(port)
            if view is None or view.fingerprint != fp:
                del self._failed[port]
            elif now >= when and port not in self._attaching:
                del self._failed[port]
                log.info("port %s: retrying mount of recorder %s", port,
                         view.device.serial if view.device else "")
                self._start_attach(view)
        return events

    # ------------------------------------------------------------------ mount work

    def _submit(self, port: str, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the pool after the port's previous operation (FIFO per port)."""
        assert self._pool is not None
        prev = self._chain.get(port)

        def run() -> T:
            if prev is not None:
                try:
                    prev.result()
                except Exception:
                    pass  # its outcome was handled by whoever submitted it
            return fn()

        fut = self._pool.submit(run)
        fut.add_done_callback(lambda _f: self._wake_up())
        self._chain[port] = fut
        return fut

    def _wake_up(self) -> None:
        try:
            self._wake.put_nowait(None)
        except queue.Full:
            pass

    def _start_attach(self, view: PortView) -> None:
        if self._pool is None:
            return
        dev = view.device
        assert dev is not None
        log.info("port %s: recorder %s (%s %s:%s) on %s, mounting", view.port,
                 dev.serial or "-", view.rule.label if view.rule else "", dev.vendor_id,
                 dev.model_id, dev.devnode)
        fut = self._submit(view.port, lambda: self._attach(view))
        self._attaching[view.port] = _Attach(view, fut)

    def _attach(self, view: PortView) -> tuple[Path, FsckResult | None, str]:
        """Worker thread: read-only fsck (if configured), then mount. Raises MountError."""
        dev = view.device
        assert dev is not None
        fsck = None
        if self.cfg.devices.fsck:
            fsck = self.mounter.fsck(dev.devnode, view.port)
            level = logging.INFO if fsck.verdict == "clean" else logging.WARNING
            log.log(level, "port %s: recorder %s: read-only fsck %s: %s", view.port,
                    dev.serial or "-", fsck.verdict, fsck.detail)
        result = self.mounter.mount(dev.devnode, view.port)
        return result.mountpoint, fsck, result.driver

    def _detach(self, port: str, why: str) -> None:
        with self._port_lock(port):  # never while a writable window is open on the port
            try:
                was = self.mounter.unmount(port)
                log.info("port %s: %s (%s)", port, "unmounted" if was else "nothing mounted",
                         why)
            except MountError as exc:
                log.error("port %s: cannot unmount (%s): %s", port, why, exc)

    def _collect_attached(self) -> list[UdevEvent]:
        events: list[UdevEvent] = []
        for port, att in list(self._attaching.items()):
            if not att.future.done():
                continue
            del self._attaching[port]
            current = self._seen.get(port)
            serial = att.view.device.serial if att.view.device else ""
            if current is None or current.fingerprint != att.view.fingerprint:
                continue  # left meanwhile: the chained detach undoes any mount
            exc = att.future.exception()
            if exc is not None:
                reason = str(exc) if isinstance(exc, MountError) else f"{type(exc).__name__}: {exc}"
                log.error("port %s: recorder %s: mount failed: %s", port, serial, reason)
                self._failed[port] = (att.view.fingerprint, self._clock() + self.rescan_seconds)
                events.append(MountFailed(port, serial, reason))
                continue
            root, fsck, fs_driver = att.future.result()
            self._docked[port] = (att.view, root)
            self._released.discard(port)
            log.info("port %s: recorder %s mounted read-only at %s", port, serial, root)
            events.append(Docked(port, root, att.view.fingerprint,
                                 hints=docking_hints(att.view, fsck, fs_driver)))
        return events

    def _start_monitor(self) -> None:
        try:
            self._observer = watch_block_events(
                lambda action, devnode, id_path: self.push_hint(UdevHint(action, devnode, id_path)))
        except Exception as exc:  # no netlink, no libudev: the slow re-scan still works
            log.warning("port ?: cannot watch udev events (%s); relying on the %.0f s re-scan",
                        exc, self.rescan_seconds)
