"""The daemon's timers: a signed checkpoint on every target at start-up and then every
``integrity.checkpoint_minutes``, even with no docking in between, so the newest
checkpoint's age tells a reviewer the dock is alive and nothing newer was deleted; the
target audit runs at start-up too."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from dockd.config import for_workdir
from dockd.daemon import Daemon
from dockd.integrity.checkpoint import parse_checkpoint
from dockd.integrity.keys import generate_key
from dockd.store import State
from tests.conftest import wait_for


def test_checkpoints_published_on_a_timer(tmp_path: Path) -> None:
    cfg = for_workdir(tmp_path / "w")
    cfg = dataclasses.replace(
        cfg, dock=dataclasses.replace(cfg.dock, ports=1),
        web=dataclasses.replace(cfg.web, enabled=False),
        integrity=dataclasses.replace(cfg.integrity, checkpoint_minutes=0.01))  # 0.6 s
    generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
    cpdir = tmp_path / "w" / "target" / "_checkpoints" / "dock-01"
    with State(cfg.paths.database) as state:
        daemon = Daemon(cfg, state=state, install_signals=False)
        thread = threading.Thread(target=daemon.run, name="test-daemon", daemon=True)
        thread.start()
        try:
            assert daemon.ready.wait(30)
            wait_for(lambda: cpdir.is_dir() and len(list(cpdir.glob("*.json"))) >= 3, 30,
                     what="three checkpoints")
        finally:
            daemon.request_stop()
            thread.join(60)
        cps = [parse_checkpoint(p.read_bytes())[0] for p in sorted(cpdir.glob("*.json"))]
        assert all(c.seq == 0 and c.head_sha256 is None and c.dock == "dock-01" for c in cps)
        assert len({c.created_at for c in cps}) == len(cps)
        rows = state.query("SELECT target, published_at FROM checkpoints")
        assert len(rows) >= 3 and all(r["published_at"] for r in rows)
        assert state.query("SELECT 1 FROM audit WHERE action = 'target_audit'")
