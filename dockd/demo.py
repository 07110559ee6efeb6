"""``dockd demo``: a simulated docking station, end to end, on an embedded default.

Two simulated recorders (real ffmpeg clips, GBK device-info files, clocks that are off) are
plugged into ports of a simulated dock; the real daemon detects them, copies, hashes, checks,
signs and delivers to a local directory standing in for the storage server; a live table
shows each port; at the end the delivered tree is verified offline with the dock's public key.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import tempfile
import threading
import time
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from . import logredact
from .config import Config
from .daemon import Daemon
from .devices.simulator import RecorderSpec, plug, simulate_recorder
from .integrity.keys import key_id, load_public_key
from .integrity.verify import format_report, verify_path
from .oneshot import ensure_key
from .status.report import render_report, report_data
from .status.views import render_status, status_data
from .store import State, fleet, utcnow

log = logging.getLogger(__name__)


def _log_to_file(path: Path) -> Path:
    """The daemon's log goes to a file during the demo; only warnings reach the screen."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    root.setLevel(logging.INFO)
    logredact.install([fh])
    return path


def demo_recorders(speech_wav: Path) -> list[tuple[int, RecorderSpec]]:
    now = utcnow()
    return [
        (1, RecorderSpec(
            serial="A1234567", officer_no="012345", officer_name="张三",
            unit_no="110105000000", unit_name="北京市公安局朝阳分局",
            model="DSJ-SIM1", firmware="V2.3.1", battery=64, clock_offset_s=37.0,
            start=now - timedelta(hours=3), segments=6, segment_seconds=3.0,
            gaps={2: 95.0, 4: 420.0}, speech={2: speech_wav})),
        (3, RecorderSpec(
            serial="B7654321", officer_no="023456", officer_name="李四",
            unit_no="110105000000", unit_name="北京市公安局朝阳分局",
            model="DSJ-SIM1", firmware="V2.2.9", battery=18, clock_offset_s=-2.0,
            start=now - timedelta(hours=5), segments=4, segment_seconds=3.0,
            gaps={3: 2400.0})),
    ]


def run_demo(cfg: Config, *, workdir_given: bool, timeout: float = 300.0) -> int:
    console = Console()
    if not workdir_given:
        workdir = Path(tempfile.mkdtemp(prefix="dockd-demo-"))
        cfg = cfg.with_workdir(workdir)
    workdir = cfg.paths.state_dir.parent
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = _log_to_file(workdir / "dockd.log")
    cfg = dataclasses.replace(cfg, offload=dataclasses.replace(cfg.offload, settle_seconds=0.5))
    console.rule("[bold]dockd demo: a simulated docking station")
    console.print(f"work directory: {workdir} (daemon log: {log_file})")
    ensure_key(cfg)
    for t in cfg.targets:  # the embedded default target: a local directory of the demo's own
        if t.kind == "local":
            t.path.mkdir(parents=True, exist_ok=True)
    pub = load_public_key(cfg.paths.public_key_file)
    console.print(f"dock signing key: {key_id(pub)}")

    speech = resources.files("dockd") / "data" / "demo" / "zh_battery.wav"
    with resources.as_file(speech) as wav:
        incoming = cfg.paths.ports_dir / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        trees = []
        for port, spec in demo_recorders(Path(wav)):
            dest = incoming / f"{spec.serial}"
            if dest.exists():
                shutil.rmtree(dest)
            console.print(f"simulating recorder {spec.serial} ({spec.officer_no} "
                          f"{spec.officer_name}): {spec.segments} clips, gaps {dict(spec.gaps)}, "
                          f"clock {spec.clock_offset_s:+.0f} s")
            sim = simulate_recorder(dest, spec, profile=cfg.profiles[0], tz=cfg.tz,
                                    tools=cfg.tools)
            trees.append((port, sim.root, spec))

    cfg = _free_web_port(cfg, console)
    state = State(cfg.paths.database)
    daemon = Daemon(cfg, state=state, install_signals=False)
    thread = threading.Thread(target=daemon.run, name="dockd-daemon", daemon=True)
    thread.start()
    if not daemon.ready.wait(30):
        console.print("[red]daemon did not start")
        return 1
    if daemon.web is not None:
        url = daemon.web.url.rstrip("/")
        console.print(f"kiosk status page: {url}/  (fleet: {url}/fleet, IT: {url}/it, "
                      f"metrics: {url}/metrics)")
    for port, root, spec in trees:
        console.print(f"plugging {spec.serial} into port-{port:02d}")
        plug(root, cfg.paths.ports_dir, port)

    deadline = time.monotonic() + timeout
    serials = {spec.serial for _, _, spec in trees}
    ok = False
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while time.monotonic() < deadline:
            data = status_data(state, cfg.dock.id, utcnow())
            live.update(render_status(data, show_empty=False, width=console.width, tz=cfg.tz))
            if serials <= fleet.serials_in_state(state, "delivered") and not data["backlog"]["clips"]:
                ok = True
                break
            if not thread.is_alive():
                break
            time.sleep(0.25)
    console.print()
    target = cfg.targets[0].path
    if not ok:
        daemon.request_stop()
        thread.join(timeout=60)
        console.print(f"[red]demo did not finish within {timeout:.0f} s; see `dockd status "
                      f"--workdir {workdir}`")
        state.close()
        return 1
    try:
        return _finish(console, state, target, pub, workdir, daemon)
    finally:
        daemon.request_stop()
        thread.join(timeout=60)
        state.close()


def _free_web_port(cfg: Config, console: Console) -> Config:
    """The demo's page on the configured port when it is free, else on any free port (a
    running dockd, or anything else, may hold 8470: the demo must not show its page)."""
    from .status.web import WebError, _bind

    if not cfg.web.enabled or cfg.web.port == 0:
        return cfg
    try:
        _bind(cfg.web.bind, cfg.web.port).close()
        return cfg
    except WebError:
        console.print(f"port {cfg.web.port} is taken: the demo's status page uses a free port")
        return dataclasses.replace(cfg, web=dataclasses.replace(cfg.web, port=0))


def _wait_for_user(console: Console, daemon: Daemon) -> None:
    """On a terminal, keep the page up until the user quits (Enter, Ctrl-C or Ctrl-D)."""
    if daemon.web is None or not sys.stdin.isatty():
        return
    url = daemon.web.url.rstrip("/")
    print(f"The status pages stay up at {url}/ (fleet: {url}/fleet, IT: {url}/it): "
          "press Enter to quit.", flush=True)
    try:
        sys.stdin.readline()
    except KeyboardInterrupt:
        pass


def _finish(console: Console, state: State, target: Path, pub: Any, workdir: Path,
            daemon: Daemon) -> int:
    console.rule("[bold]recording timelines (R1) and spoken notes (R2)")
    console.print(render_report(report_data(state), daemon.cfg.tz))
    for d in fleet.signed_dockings_summary(state):
        console.print(f"recorder {d['serial']}: {d['n']} clip(s) delivered, signed manifest "
                      f"{d['sha256'][:16]}...")
    console.rule("[bold]offline verification of the delivered tree")
    report = verify_path(target, {key_id(pub): pub})
    console.print(format_report(report))
    if not report.ok:
        return 1
    console.print(f"verify again any time: dockd verify --workdir {workdir} {target}",
                  soft_wrap=True)
    print(f"Delivered to: {target}", flush=True)  # plain: never wrapped, easy to parse
    _wait_for_user(console, daemon)
    return 0
