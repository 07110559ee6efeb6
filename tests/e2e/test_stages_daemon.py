"""The stages in the real daemon (#13): a port's job only copies, so a long spoken-note check
of one docking never holds the copy slot another recorder needs."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dockd.config import Config, for_workdir
from dockd.daemon import Daemon
from dockd.devices.simulator import plug
from dockd.integrity.keys import generate_key
from dockd.integrity.notes import NoteAnalyzer, NoteResult
from dockd.store import State

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def wait_for_state(st: State, sql: str, seconds: float = 60.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if st.query(sql):
            return True
        time.sleep(0.1)
    return False


def test_a_transcription_never_holds_the_copy_slot(workdir: Path, make_recorder: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg: Config = for_workdir(workdir)
    cfg = dataclasses.replace(
        cfg, offload=dataclasses.replace(cfg.offload, workers=1, settle_seconds=0.3),
        web=dataclasses.replace(cfg.web, enabled=False))
    generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
    incoming = workdir / "ports" / ".incoming"
    first = make_recorder(cfg, dest=incoming / "r1", segments=2, gaps={1: 60.0})
    second = make_recorder(cfg, dest=incoming / "r2", segments=2, serial="B7654321")
    listening = threading.Event()
    release = threading.Event()

    def slow_analyze(self: NoteAnalyzer, clip: Any, language: str | None = None,
                     label: str = "") -> NoteResult:
        listening.set()
        release.wait(120)  # a long Whisper run on the first docking's interruption
        return NoteResult(verdict="no_speech")

    monkeypatch.setattr(NoteAnalyzer, "analyze", slow_analyze)
    state = State(cfg.paths.database)
    daemon = Daemon(cfg, state=state, install_signals=False)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert daemon.ready.wait(30)
        plug(first, cfg.paths.ports_dir, 1)
        assert listening.wait(60), "the first docking's interruption was never listened to"
        plug(second, cfg.paths.ports_dir, 2)
        # the one copy slot is free: the second recorder is copied while the first docking
        # is still being transcribed
        assert wait_for_state(state, "SELECT 1 FROM dockings WHERE serial = 'B7654321' AND "
                                     "state IN ('offloaded', 'signed', 'delivered')")
        assert not release.is_set()
        assert state.query("SELECT state FROM dockings WHERE serial = 'A1234567'") == [
            {"state": "offloaded"}]
        release.set()
        assert wait_for_state(state, "SELECT 1 FROM dockings WHERE serial = 'A1234567' AND "
                                     "state = 'delivered'")
        assert wait_for_state(state, "SELECT 1 FROM dockings WHERE serial = 'B7654321' AND "
                                     "state = 'delivered'")
    finally:
        release.set()
        daemon.request_stop()
        thread.join(60)
        state.close()
    assert not thread.is_alive()
