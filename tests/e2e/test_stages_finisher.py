"""The finisher stage (#13): offload workers only copy; the finisher probes and checks clips
as they arrive (the docking still copying), signs once the offload ended, tells the
delivery side through ``on_ready``, and never lets two threads finish one docking."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from dockd.config import Config
from dockd.daemon import build_pipeline
from dockd.ingest.probe import Prober
from dockd.model import ProbeResult
from dockd.stages import check
from dockd.store import State

pytestmark = pytest.mark.timeout(180)


def wait_until(pred: Callable[[], bool], seconds: float = 60.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def states(st: State, docking_id: int) -> list[str]:
    return [c["state"] for c in st.clips_of(docking_id)]


def test_clips_are_checked_while_the_recorder_still_copies(cfg: Config, make_recorder: Any
                                                           ) -> None:
    rec = make_recorder(cfg, segments=4)
    ready: list[int] = []
    seen: dict[str, Any] = {}
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        pipe.on_ready = ready.append
        d, known = pipe.begin_docking("port-01", rec)
        started = 0

        def progress(event: str, **info: Any) -> None:
            nonlocal started
            if event != "clip":
                return
            started += 1
            if started == 3:  # two clips copied, the third about to be read
                seen["checked"] = wait_until(lambda: "checked" in states(st, d))
                seen["docking"] = st.docking(d)["state"]
                seen["ready"] = set(ready)  # once per pass that checked clips

        pipe.on_progress = progress
        pipe.finisher.start(threads=1)
        try:
            out = pipe.offload(d, rec, known)
            assert out.copied == 4
            assert seen == {"checked": True, "docking": "offloading", "ready": {d}}
            assert st.query("SELECT 1 FROM manifests") == []  # not signed while copying
            pipe.finisher.request(d)  # the port's job asks once the offload ended
            assert wait_until(lambda: st.docking(d)["state"] == "signed")
        finally:
            assert pipe.finisher.stop()
        assert set(states(st, d)) == {"signed"}
        assert ready[-1] == d and len(ready) >= 2  # checked clips, then the signing


class NoProbing:
    """A prober that must not be used (the copy stage never probes)."""

    def probe_batch(self, paths: Sequence[Path]) -> list[ProbeResult]:
        raise AssertionError(f"probed during the copy: {paths}")

    probe = probe_batch


def test_offload_only_copies(cfg: Config, make_recorder: Any) -> None:
    """Without a finisher running, the copy leaves every clip 'copied': no probe, no notes,
    no continuity, no signature happen in the copy slot."""
    rec = make_recorder(cfg, segments=3, gaps={1: 30.0})
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        pipe.prober = NoProbing()  # type: ignore[assignment]
        d, known = pipe.begin_docking("port-01", rec)
        assert pipe.offload(d, rec, known).copied == 3
        assert states(st, d) == ["copied"] * 3
        assert st.docking(d)["state"] == "offloaded"
        assert st.docking(d)["continuity"] is None
        assert st.query("SELECT 1 FROM gaps") == [] and st.query("SELECT 1 FROM manifests") == []
        pipe.prober = prober
        pipe.finish(d)  # in place (``dockd ingest``): probe, check, continuity, sign
        assert set(states(st, d)) == {"signed"}
        assert st.query("SELECT kind FROM gaps") == [{"kind": "interruption"}]


class CountingProber:
    def __init__(self, real: Prober):
        self.real = real
        self.batches: list[int] = []

    def probe_batch(self, paths: Sequence[Path]) -> list[ProbeResult]:
        self.batches.append(len(paths))
        return self.real.probe_batch(paths)


def test_copied_clips_are_probed_in_batches(cfg: Config, make_recorder: Any) -> None:
    rec = make_recorder(cfg, segments=5)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        counting = CountingProber(prober)
        pipe.prober = counting  # type: ignore[assignment]
        d, known = pipe.begin_docking("port-01", rec)
        pipe.offload(d, rec, known)
        assert check.process(pipe, d, batch=2) == 5
        assert counting.batches == [2, 2, 1]
        assert states(st, d) == ["checked"] * 5
        for c in st.clips_of(d):
            assert c["start_utc"] and c["duration_s"] and c["probe"]
        assert check.process(pipe, d) == 0  # nothing left: idempotent


def test_one_thread_finishes_a_docking_at_a_time(cfg: Config, make_recorder: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Many requests for one docking from several threads: never two passes at once; a
    finish asked while another thread owns the docking is not lost (done after)."""
    rec = make_recorder(cfg, segments=3)
    running: dict[int, int] = {}
    most = [0]
    guard = threading.Lock()
    real = check.process

    def slow_process(pipe: Any, docking_id: int, batch: int = check.PROBE_BATCH) -> int:
        with guard:
            running[docking_id] = running.get(docking_id, 0) + 1
            most[0] = max(most[0], running[docking_id])
        try:
            time.sleep(0.2)
            return real(pipe, docking_id, batch)
        finally:
            with guard:
                running[docking_id] -= 1

    monkeypatch.setattr(check, "process", slow_process)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, known = pipe.begin_docking("port-01", rec)
        pipe.offload(d, rec, known)
        pipe.finisher.start(threads=3)
        try:
            for _ in range(5):
                pipe.finisher.request(d)
            assert wait_until(lambda: d in pipe.finisher.owned())
            assert pipe.finish(d) is False  # owned by a finisher thread: asked again
            assert wait_until(lambda: st.docking(d)["state"] == "signed")
            assert wait_until(lambda: not pipe.finisher.owned())
        finally:
            assert pipe.finisher.stop()
        assert set(states(st, d)) == {"signed"}
    assert most[0] == 1


def test_process_waits_for_the_owner(cfg: Config, make_recorder: Any) -> None:
    """``Pipeline.process`` (the staging-pressure path, from a copy thread) waits while a
    finisher thread owns the docking instead of racing it over the same clips."""
    rec = make_recorder(cfg, segments=2)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, known = pipe.begin_docking("port-01", rec)
        pipe.offload(d, rec, known)
        assert pipe.finisher._claim(d, wait=False)
        done = threading.Event()

        def process() -> None:
            pipe.process(d)
            done.set()

        worker = threading.Thread(target=process)
        worker.start()
        assert not done.wait(0.5)  # waiting for the owner
        assert states(st, d) == ["copied", "copied"]
        pipe.finisher._release(d)
        assert done.wait(60)
        worker.join()
        assert states(st, d) == ["checked", "checked"]
