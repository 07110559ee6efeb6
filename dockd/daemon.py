"""The supervisor: owns the state, wires the device source to offload workers and the
delivery worker, talks to systemd, and stops cleanly on SIGTERM.

Threads at the edges, a synchronous core: the device source's observer thread only queues
hints; this supervisor loop turns them into dockings; a bounded pool offloads ports in
parallel; one delivery thread drains signed clips earliest-deadline-first.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import tiles
from .alerts import check_deadlines
from .config import Config
from .delivery.recheck import retry_deliveries
from .delivery.targets import open_targets
from .devices.drivers import registry_from_config
from .devices.watch import DirectorySource, Docked, Undocked, scan_ports
from .errors import CopyError, DockdError, SigningError
from .ingest.offload import clean_stale_partials
from .ingest.probe import Prober
from .integrity.keys import key_id, load_private_key, public_key_pem
from .integrity.notes import NoteAnalyzer, NoteParams
from .pipeline import Pipeline, Signer
from .store import State

log = logging.getLogger(__name__)


def load_signer(cfg: Config) -> Signer:
    try:
        key = load_private_key(cfg.paths.key_file)
    except FileNotFoundError as exc:
        raise SigningError(f"no signing key at {cfg.paths.key_file}: run `dockd keygen` "
                           "first") from exc
    from .integrity.keyhistory import ensure_genesis
    from .store import utcnow

    ensure_genesis(cfg.dock.id, key, cfg.paths.public_key_file, utcnow())
    return Signer(private_key=key, key_id=key_id(key.public_key()),
                  public_pem=public_key_pem(key))


def build_notes(cfg: Config) -> NoteAnalyzer | None:
    """The spoken-note analyser (loads its model lazily, on the first interruption)."""
    n = cfg.notes
    if not n.enabled:
        return None
    params = NoteParams(probe_s=n.probe_seconds, window_s=n.window_seconds,
                        min_speech_s=n.min_speech_seconds, language=n.language,
                        cpu_threads=n.cpu_threads, ffmpeg=cfg.tools.ffmpeg)
    return NoteAnalyzer(n.model_dir or None, params)


def build_pipeline(cfg: Config, state: State, prober: Prober) -> Pipeline:
    return Pipeline(cfg, state, registry=registry_from_config(cfg), prober=prober,
                    targets=open_targets(cfg), signer=load_signer(cfg),
                    notes=build_notes(cfg))


class SystemdNotifier:
    """sd_notify(3) over $NOTIFY_SOCKET; silently inactive when not run by systemd."""

    def __init__(self, address: str | None = None):
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")

    def notify(self, message: str) -> bool:
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(addr)
                s.sendall(message.encode("utf-8"))
            return True
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False

    def watchdog_interval(self) -> float | None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 1e6 / 2


@dataclass
class _PortJob:
    root: Path
    future: Future[Any]
    gone: threading.Event


class Daemon:
    def __init__(self, cfg: Config, *, state: State | None = None,
                 notifier: SystemdNotifier | None = None, install_signals: bool = True,
                 require_web: bool = False):
        self.cfg = cfg
        self.require_web = require_web
        self._own_state = state is None
        self.state = state or State(cfg.paths.database)
        self.notifier = notifier or SystemdNotifier()
        self.install_signals = install_signals
        self.stop_event = threading.Event()
        self.work_event = threading.Event()
        self.ready = threading.Event()
        self.jobs: dict[str, _PortJob] = {}
        self.docked: dict[str, Path] = {}
        self.hints: dict[str, dict[str, str]] = {}
        self.web: Any = None
        self.retry_at: dict[str, float] = {}
        self.finisher: ThreadPoolExecutor | None = None
        """Probing, spoken-note checks and signing outside the supervisor loop (one worker:
        the supervisor only supervises, so the watchdog is never starved)."""
        self._resuming: Future[Any] | None = None
        self.redocked: set[str] = set()
        """Ports docked again while the job of the previous recorder there still ran."""
        self.source: Any
        if cfg.devices.source == "udev":
            from .devices.udev import UdevSource

            self.source = UdevSource(cfg)
        else:
            self.source = DirectorySource(cfg.paths.ports_dir, cfg.dock.ports,
                                          cfg.offload.settle_seconds)

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self, *_: Any) -> None:
        log.info("stop requested")
        self.stop_event.set()
        self.work_event.set()

    def run(self) -> int:
        if self.install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        cfg = self.cfg
        self._start_web()
        cfg.paths.staging_dir.mkdir(parents=True, exist_ok=True)
        for p in clean_stale_partials(cfg.paths.staging_dir):
            log.info("removed stale partial copy %s", p)
        with Prober(cfg.tools) as prober:
            self.pipeline = build_pipeline(cfg, self.state, prober)
            # udev recorders are remounted read-write through the helper for one step only
            self.pipeline.writable_for = getattr(self.source, "writable", None)
            self.pipeline.cancel = self.stop_event  # uploads in flight end when dockd stops
            # a start is a re-check: what failed on a target that may be fixed now (or is
            # configured differently now) is tried again
            retry_deliveries(self.state, actor="dockd", why="start-up re-check")
            self.finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish")
            for label in self.port_labels():
                self.state.set_port(label)
            pool = ThreadPoolExecutor(max_workers=cfg.offload.workers,
                                      thread_name_prefix="offload")
            deliverer = threading.Thread(target=self._deliver_loop, name="deliver", daemon=True)
            self.source.start()
            deliverer.start()
            self.notifier.notify("READY=1\nSTATUS=watching ports")
            self.ready.set()
            self._resume_in_background()  # the backlog drains after READY=1, in a worker
            log.info("dockd %s ready: watching %s (%d ports), %d target(s)", cfg.dock.id,
                     cfg.paths.ports_dir, cfg.dock.ports, len(self.pipeline.targets))
            wd = self.notifier.watchdog_interval()
            last_ping = 0.0
            if cfg.devices.source == "directory":
                self._close_orphaned_dockings(scan_ports(cfg.paths.ports_dir, cfg.dock.ports))
            first_poll = True
            try:
                while not self.stop_event.is_set():
                    for ev in self.source.poll(timeout=0.5):
                        self._on_event(ev, pool)
                    if first_poll and cfg.devices.source == "udev":
                        self._close_orphaned_dockings(self.docked)
                    first_poll = False
                    self._reap_jobs(pool)
                    if wd and time.monotonic() - last_ping >= wd:
                        self.notifier.notify("WATCHDOG=1")
                        last_ping = time.monotonic()
            finally:
                if self.web is not None:
                    self.web.stop()
                self.notifier.notify("STOPPING=1")
                self.source.stop()
                # a stop is not an unplug: dockings in progress stay 'offloading' and resume
                # after the restart; uploads in flight end at their next chunk (stop_event)
                self.stop_event.set()
                self.work_event.set()
                pool.shutdown(wait=True, cancel_futures=True)
                self.finisher.shutdown(wait=True, cancel_futures=True)
                deliverer.join(timeout=60)
                stuck = deliverer.is_alive()
                if stuck:
                    log.warning("delivery thread still busy at stop; its work resumes after "
                                "restart")
                for target in self.pipeline.targets:
                    try:
                        target.close()
                    except Exception as exc:  # closing must not mask the shutdown
                        log.warning("closing target %s: %s", target.name, exc)
                if self._own_state and not stuck:
                    self.state.close()
                log.info("dockd stopped")
        return 0

    # ------------------------------------------------------------------ device events

    def _start_web(self) -> None:
        """The status page, first: with ``require_web`` (``dockd run``) a port that is taken
        stops the start-up with a clear error instead of a dock running without its page."""
        from .status.web import WebError, start_web

        try:
            self.web = start_web(self.cfg, self.cfg.paths.database, self.stop_event)
        except WebError as exc:
            if self.require_web:
                raise WebError(f"{exc} (another program, or another dockd, uses this port: "
                               "stop it or set web.port)") from exc
            log.error("%s; running without the status page", exc)

    def port_labels(self) -> list[str]:
        if self.cfg.devices.source == "udev" and self.cfg.port_map:
            return [m.port for m in self.cfg.port_map]
        return [f"port-{n:02d}" for n in range(1, self.cfg.dock.ports + 1)]

    def _on_event(self, ev: Any, pool: ThreadPoolExecutor) -> None:
        kind = type(ev).__name__
        if kind == "Foreign":
            log.warning("port %s: foreign USB device %s:%s (serial %s) ignored: not an allowed "
                        "recorder model, never mounted", ev.port, ev.vendor_id, ev.model_id,
                        ev.serial)
            self.state.set_port(ev.port, state="foreign", serial=None, error=None,
                                message=f"foreign device {ev.vendor_id}:{ev.model_id} ignored "
                                        "(not a registered recorder)")
            return
        if kind == "ForeignGone":
            self.state.set_port(ev.port, state="empty", message=None, error=None)
            return
        if kind == "MountFailed":
            log.error("port %s serial %s: cannot mount the recorder: %s", ev.port, ev.serial,
                      ev.reason)
            self.state.set_port(ev.port, state="error", serial=ev.serial, error=ev.reason)
            return
        if isinstance(ev, Docked):
            log.info("port %s: recorder tree appeared at %s", ev.port, ev.root)
            self.docked[ev.port] = ev.root
            self.hints[ev.port] = dict(getattr(ev, "hints", {}) or {})
            self._submit(ev.port, ev.root, pool)
        elif isinstance(ev, Undocked):
            log.info("port %s: recorder removed", ev.port)
            self.docked.pop(ev.port, None)
            self.retry_at.pop(ev.port, None)
            self.redocked.discard(ev.port)
            # the tile first (a "plug it back in" tile stays), then the docking is closed
            tiles.port_emptied(self.state, ev.port)
            self.pipeline.undocked(ev.port)
            job = self.jobs.get(ev.port)
            if job is not None:
                job.gone.set()
            else:
                self._interrupt_port(ev.port)

    def _submit(self, port: str, root: Path, pool: ThreadPoolExecutor) -> None:
        if port in self.jobs:
            if self.jobs[port].gone.is_set():  # the last recorder is still being wound up
                self.redocked.add(port)
            return
        gone = threading.Event()

        def should_stop() -> bool:
            return gone.is_set() or self.stop_event.is_set()

        def job() -> None:
            try:
                self.pipeline.run_docking(port, root, self.hints.get(port, {}), should_stop)
            except CopyError as exc:
                if gone.is_set():
                    d = self._active_docking(port)
                    if d is not None:
                        self.pipeline.mark_interrupted(d, f"recorder removed: {exc}")
                        self.pipeline.finish(d)
                elif self.stop_event.is_set():
                    log.info("port %s: offload paused because dockd is stopping; the same "
                             "docking resumes after the restart", port)
                else:
                    self.retry_at[port] = time.monotonic() + self.cfg.delivery.retry_seconds
                    raise
            self.work_event.set()

        self.jobs[port] = _PortJob(root, pool.submit(job), gone)

    def _reap_jobs(self, pool: ThreadPoolExecutor) -> None:
        for port, job in list(self.jobs.items()):
            if not job.future.done():
                continue
            del self.jobs[port]
            again = port in self.redocked and port in self.docked
            self.redocked.discard(port)
            exc = job.future.exception()
            if exc is not None:
                log.error("port %s: docking failed: %s", port, exc,
                          exc_info=not isinstance(exc, DockdError))
                if not again:
                    self.state.set_port(port, state="error", error=str(exc))
            elif not again and self._keep_mounted(port) is False:
                # everything is copied: unmount (udev source) so the officer may unplug
                getattr(self.source, "release", lambda _p: None)(port)
            if again:  # the recorder came back while the last one was wound up
                log.info("port %s: recorder docked again: starting its docking", port)
                self._submit(port, self.docked[port], pool)
        for port, when in list(self.retry_at.items()):
            if time.monotonic() >= when and port in self.docked and port not in self.jobs:
                del self.retry_at[port]
                log.info("port %s: retrying offload", port)
                self._submit(port, self.docked[port], pool)

    def _keep_mounted(self, port: str) -> bool:
        """A recorder whose profile clears it after delivery stays mounted until then."""
        d = self.state.query_one("SELECT profile FROM dockings WHERE port = ? ORDER BY id DESC "
                                 "LIMIT 1", (port,))
        return bool(d) and self.pipeline.profile(d["profile"]).clear_policy == "after_delivery"

    def _active_docking(self, port: str) -> int | None:
        row = self.state.query_one("SELECT id FROM dockings WHERE port = ? AND "
                                   "state = 'offloading' ORDER BY id DESC LIMIT 1", (port,))
        return row["id"] if row else None

    def _interrupt_port(self, port: str) -> None:
        d = self._active_docking(port)
        if d is not None:
            self.pipeline.mark_interrupted(d, "recorder removed")
            self._finish_in_background(d)

    def _close_orphaned_dockings(self, present: Any) -> None:
        """Dockings whose port is empty after a restart: one left 'offloading' by a killed
        daemon is interrupted (and finished in a worker); a finished one is over. A port
        that still holds a recorder keeps its docking: the Docked event resumes it."""
        for row in self.state.query("SELECT id, port, state FROM dockings WHERE "
                                    "undocked_at IS NULL OR state = 'offloading'"):
            if row["port"] in present:
                continue
            if row["state"] == "offloading":
                self.pipeline.mark_interrupted(row["id"], "recorder not present after restart")
                self._finish_in_background(row["id"])
            else:
                self.pipeline.undocked(row["port"])

    def _finish_in_background(self, docking_id: int) -> None:
        def work() -> None:
            try:
                self.pipeline.finish(docking_id)
            except DockdError as exc:
                log.error("docking %d cannot finish yet: %s", docking_id, exc)
            self.work_event.set()

        assert self.finisher is not None
        self.finisher.submit(work)

    def _resume_in_background(self) -> None:
        """Carry dockings forward (probe, check, sign) in the finishing worker; one at a time."""
        if self.finisher is None or self.stop_event.is_set():
            return
        if self._resuming is not None and not self._resuming.done():
            return

        def work() -> None:
            if self.pipeline.resume():
                self.work_event.set()

        try:
            self._resuming = self.finisher.submit(work)
        except RuntimeError:  # shutting down
            pass

    # ------------------------------------------------------------------ delivery

    check_interval = 30.0

    def _reread_docked(self) -> None:
        for port, root in list(self.docked.items()):
            if port not in self.jobs:
                try:
                    self.pipeline.reread_health(port, root, self.hints.get(port))
                except DockdError as exc:
                    log.warning("port %s: health re-read failed: %s", port, exc)

    def _clear_docked(self) -> None:
        """Clear recorders still docked whose clips are now verified on every target."""
        for port, root in list(self.docked.items()):
            if port not in self.jobs:
                self.pipeline.clear(port, root)

    def _deliver_loop(self) -> None:
        """Start one delivery worker per target (dockd.stages.deliver), wake them when work
        appears, and run the periodic jobs: custody documents, checkpoints, the target
        audit, deadline alarms, clearing recorders whose clips landed, health re-reads.
        Stops the workers when dockd stops."""
        stage = self.pipeline.delivery
        stage.on_landed = self.work_event.set  # clearing looks when something landed
        stage.start()
        last_resume = last_check = last_reread = time.monotonic()
        last_checkpoint = last_audit = -float("inf")  # both run once at start-up
        try:
            while not self.stop_event.is_set():
                self.work_event.clear()
                try:
                    if stage.take_landed():
                        self._clear_docked()
                    stage.deliver_custody()
                    if time.monotonic() - last_resume > 30:
                        last_resume = time.monotonic()
                        self._resume_in_background()  # dockings a failed job left half-checked
                    if time.monotonic() - last_reread > self.cfg.health.reread_minutes * 60:
                        last_reread = time.monotonic()
                        self._reread_docked()
                    if time.monotonic() - last_checkpoint > \
                            self.cfg.integrity.checkpoint_minutes * 60:
                        last_checkpoint = time.monotonic()
                        self.pipeline.publish_checkpoints()
                    if time.monotonic() - last_audit > self.cfg.integrity.audit_minutes * 60:
                        last_audit = time.monotonic()
                        from .delivery.target_audit import audit_targets
                        audit_targets(self.state, self.cfg, self.pipeline.targets)
                    if time.monotonic() - last_check > self.check_interval:
                        last_check = time.monotonic()
                        check_deadlines(self.state, self.cfg, self.state.clock())
                        self._clear_docked()
                except Exception:  # keep the loop alive; the error is in state/logs
                    log.exception("delivery housekeeping failed")
                if self.work_event.wait(timeout=1.0):
                    stage.wake()  # a docking moved on (copied, checked, signed)
        finally:
            if not stage.stop(timeout=60):
                log.warning("delivery workers still busy at stop; their work resumes after "
                            "restart")
