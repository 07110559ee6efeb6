"""The daemon: owns the state, wires the device source to the stages, talks to systemd,
and stops cleanly on SIGTERM.

Threads, each with one job: the device source's observer thread only queues hints; the
supervisor loop (this thread) turns them into dockings and alone owns the port table
(:class:`dockd.stages.supervisor.Supervisor`); a bounded pool runs each port's job
(register + copy, or clearing); the finisher threads probe, check and sign
(:class:`dockd.stages.finisher.Finisher`); the delivery thread drains clips to the targets.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .alerts import check_deadlines
from .config import Config
from .delivery.recheck import retry_deliveries
from .delivery.targets import open_targets
from .devices.drivers import registry_from_config
from .devices.source import DeviceSource, open_source
from .devices.watch import scan_ports
from .errors import SigningError
from .ingest.offload import clean_stale_partials
from .ingest.probe import Prober
from .integrity.keys import key_id, load_private_key, public_key_pem
from .integrity.notes import NoteAnalyzer, NoteParams
from .pipeline import Pipeline, Signer
from .stages.supervisor import ClearDocked, RereadDocked, Supervisor
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
        self.web: Any = None
        self.supervisor: Supervisor | None = None
        """The port table (docked recorders, their jobs, retries): the supervisor loop's
        alone; other threads ask it through ``supervisor.ask``."""
        self.source: DeviceSource = open_source(cfg)

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
            self.pipeline.writable_for = self.source.writable_for()
            self.pipeline.cancel = self.stop_event  # uploads in flight end when dockd stops
            finisher = self.pipeline.finisher
            ready = finisher.on_ready

            def on_ready(docking_id: int) -> None:  # checked or signed clips: deliver them
                ready(docking_id)
                self.work_event.set()

            finisher.on_ready = on_ready
            finisher.on_done = lambda _d: self.work_event.set()
            # a start is a re-check: what failed on a target that may be fixed now (or is
            # configured differently now) is tried again
            retry_deliveries(self.state, actor="dockd", why="start-up re-check")
            for label in self.port_labels():
                self.state.set_port(label)
            pool = ThreadPoolExecutor(max_workers=cfg.offload.workers,
                                      thread_name_prefix="offload")
            sup = self.supervisor = Supervisor(cfg, self.state, self.pipeline, self.source,
                                               pool, self.stop_event, self.work_event.set)
            deliverer = threading.Thread(target=self._deliver_loop, name="deliver", daemon=True)
            self.source.start()
            finisher.start(threads=2)
            deliverer.start()
            self.notifier.notify("READY=1\nSTATUS=watching ports")
            self.ready.set()
            self._resume_in_background()  # the backlog drains after READY=1, in the finisher
            log.info("dockd %s ready: watching %s (%d ports), %d target(s)", cfg.dock.id,
                     cfg.paths.ports_dir, cfg.dock.ports, len(self.pipeline.targets))
            wd = self.notifier.watchdog_interval()
            last_ping = 0.0
            if cfg.devices.source == "directory":
                sup.close_orphaned(scan_ports(cfg.paths.ports_dir, cfg.dock.ports))
            first_poll = True
            try:
                while not self.stop_event.is_set():
                    for ev in self.source.poll(timeout=0.5):
                        sup.on_event(ev)
                    if first_poll and cfg.devices.source == "udev":
                        sup.close_orphaned(sup.docked)
                    first_poll = False
                    sup.serve()
                    sup.reap()
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
                finisher.stop()
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

    # ------------------------------------------------------------------ asked by other threads

    def _resume_in_background(self) -> None:
        """Carry dockings forward (probe, check, sign) in the finisher threads."""
        if not self.stop_event.is_set():
            self.pipeline.finisher.backlog()

    check_interval = 30.0

    def _reread_docked(self) -> None:
        """Ask the supervisor to re-read the health of the docked recorders."""
        if self.supervisor is not None:
            self.supervisor.ask(RereadDocked())

    def _clear_docked(self) -> None:
        """Ask the supervisor to clear docked recorders whose clips are now verified on every
        target (it runs each as that port's job)."""
        if self.supervisor is not None:
            self.supervisor.ask(ClearDocked())

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
