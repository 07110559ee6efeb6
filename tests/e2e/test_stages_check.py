"""check.process records each probed batch in one transaction (copied -> probed -> checked
and the tile's progress), wakes delivery per batch, is all-or-nothing per batch when the
record fails, stops between batches when dockd stops, and probes many waiting clips with
two exiftool processes (one for a one-clip docking)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from typing import Any

import pytest

from dockd.config import Config
from dockd.daemon import build_pipeline
from dockd.ingest.probe import Prober
from dockd.pipeline import Pipeline
from dockd.stages import check
from dockd.store import State, clips, dumps

pytestmark = pytest.mark.timeout(180)


def states(st: State, docking_id: int) -> list[str]:
    return [c["state"] for c in st.clips_of(docking_id)]


def _offloaded(cfg: Config, st: State, prober: Prober, rec: Any) -> tuple[Pipeline, int]:
    pipe = build_pipeline(cfg, st, prober)
    d, known = pipe.begin_docking("port-01", rec)
    pipe.offload(d, rec, known)
    assert set(states(st, d)) == {"copied"}
    return pipe, d


def test_each_batch_is_one_transaction_and_wakes_delivery(cfg: Config, make_recorder: Any
                                                          ) -> None:
    rec = make_recorder(cfg, segments=5)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe, d = _offloaded(cfg, st, prober, rec)
        seen: list[Counter[str]] = []
        pipe.on_ready = lambda docking_id: seen.append(Counter(states(st, docking_id)))
        statements: list[str] = []
        st.conn.set_trace_callback(statements.append)
        try:
            assert check.process(pipe, d, batch=2) == 5
        finally:
            st.conn.set_trace_callback(None)
        commits = sum(s.strip().upper() == "COMMIT" for s in statements)
        assert commits == 1 + 3  # the tile once, then one per batch of 2, 2 and 1 clips
        # after each batch: its clips checked, none left half-way ('probed')
        assert seen == [Counter(checked=2, copied=3), Counter(checked=4, copied=1),
                        Counter(checked=5)]
        for c in st.clips_of(d):
            assert c["probe"] and c["start_utc"] and c["duration_s"]
        port = st.query_one("SELECT message FROM ports WHERE port = 'port-01'")
        assert port is not None and port["message"] == "checked 5 of 5 clips"


def test_a_batch_whose_record_fails_stays_copied_and_is_probed_again(
        cfg: Config, make_recorder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record of the second batch fails half-way (the disk, a crash): that batch is
    rolled back whole (its clips 'copied', none 'probed'), the first stays checked, and the
    next pass probes it again."""
    rec = make_recorder(cfg, segments=4)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe, d = _offloaded(cfg, st, prober, rec)
        real = clips.advance_in
        moved: list[int] = []

        def failing(conn: Any, clip_id: int, old: str, new: str, now: str,
                    fields: dict[str, Any] | None = None) -> None:
            moved.append(clip_id)
            if len(moved) == 6:  # batch 2: its first clip already moved, inside the tx
                raise OSError("disk I/O error")
            real(conn, clip_id, old, new, now, fields)

        monkeypatch.setattr(clips, "advance_in", failing)
        with pytest.raises(OSError):
            check.process(pipe, d, batch=2)
        assert states(st, d) == ["checked", "checked", "copied", "copied"]
        assert all(c["probe"] is None for c in st.clips_of(d)[2:])
        monkeypatch.setattr(clips, "advance_in", real)
        assert check.process(pipe, d, batch=2) == 2
        assert states(st, d) == ["checked"] * 4


def test_stops_between_batches_when_dockd_stops(cfg: Config, make_recorder: Any) -> None:
    rec = make_recorder(cfg, segments=5)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe, d = _offloaded(cfg, st, prober, rec)
        pipe.on_ready = lambda docking_id: pipe.cancel.set()
        assert check.process(pipe, d, batch=2) == 2
        assert states(st, d) == ["checked", "checked", "copied", "copied", "copied"]
        pipe.cancel.clear()
        pipe.on_ready = lambda docking_id: None
        assert check.process(pipe, d, batch=2) == 3
        assert states(st, d) == ["checked"] * 5


def test_many_waiting_clips_use_two_exiftools_one_clip_uses_one(
        cfg: Config, make_recorder: Any) -> None:
    rec = make_recorder(cfg, segments=5)
    one = make_recorder(cfg, segments=1, serial="B7654321")
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d1, known = pipe.begin_docking("port-02", one)
        pipe.offload(d1, one, known)
        assert check.process(pipe, d1, batch=2) == 1
        assert prober._helpers == []  # one clip: no second exiftool
        d, known = pipe.begin_docking("port-01", rec)
        pipe.offload(d, rec, known)
        assert check.process(pipe, d, batch=2) == 5
        assert len(prober._helpers) == 1 and prober._helpers[0]._et is not None
        one_process = dataclasses.replace(cfg, tools=dataclasses.replace(cfg.tools,
                                                                         probe_processes=1))
        with Prober(cfg.tools) as fresh:
            pipe1 = build_pipeline(one_process, st, fresh)
            again = make_recorder(cfg, segments=5, serial="C1111111")
            d2, known = pipe1.begin_docking("port-03", again)
            pipe1.offload(d2, again, known)
            assert check.process(pipe1, d2, batch=2) == 5
            assert fresh._helpers == []
        assert states(st, d) == states(st, d2) == ["checked"] * 5


def test_clips_left_probed_by_an_older_dockd_are_checked(cfg: Config, make_recorder: Any
                                                         ) -> None:
    rec = make_recorder(cfg, segments=3)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe, d = _offloaded(cfg, st, prober, rec)
        first = st.clips_of(d)[0]
        probe = prober.probe(first["staged_path"])
        clips.advance_many(st, [(first["id"], {"probe": dumps(probe.summary()),
                                               "findings": "[]"})], "copied", "probed")
        assert check.process(pipe, d) == 3
        assert states(st, d) == ["checked"] * 3


class CountingLock:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holds = 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.holds += 1

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_the_probe_lock_is_let_go_between_turns(cfg: Config, make_recorder: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Another docking's finisher waits for a few batches, not for a whole recorder."""
    rec = make_recorder(cfg, segments=10)
    monkeypatch.setattr(check, "TURN", 2)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe, d = _offloaded(cfg, st, prober, rec)
        pipe.probe_lock = CountingLock()  # type: ignore[assignment]
        assert check.process(pipe, d, batch=1) == 10
        assert pipe.probe_lock.holds == 3  # type: ignore[attr-defined]  # 4 + 4 + 2 batches
        assert states(st, d) == ["checked"] * 10


def test_stopping_the_finisher_ends_its_pass_after_the_batch(
        cfg: Config, make_recorder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dockd ingest`` stops its finisher thread once the copy ended and finishes in place:
    the thread's pass over a big backlog ends after its current batch instead of holding
    the docking (stop() would time out and the in-place finish find it owned)."""
    rec = make_recorder(cfg, segments=6)
    real = check.process
    monkeypatch.setattr(check, "process", lambda pipe, docking_id: real(pipe, docking_id, 1))
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe, d = _offloaded(cfg, st, prober, rec)
        first = threading.Event()

        def ready(docking_id: int) -> None:
            first.set()
            for _ in range(200):  # hold the first batch until stop() is asked
                if pipe.finisher._stopping:
                    return
                time.sleep(0.05)

        pipe.on_ready = ready
        pipe.finisher.start(threads=1)
        pipe.finisher.request(d)
        assert first.wait(60)
        assert pipe.finisher.stop(timeout=60)
        left = states(st, d)
        assert 1 <= left.count("checked") < 6 and "probed" not in left
        assert not pipe.finisher.owned()
        assert not pipe.finisher.stop_asked()  # this thread is no finisher thread
        assert pipe.finish(d) is True  # in place: the rest, then continuity and signing
        assert set(states(st, d)) == {"signed"}


def test_backlog_promotes_early_copies_a_crash_after_signing_left_signed(
        cfg: Config, make_recorder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between signing and promoting the clips already delivered early: at start-up
    the finisher's backlog promotes them (else the docking never completes nor clears)."""
    from dockd.stages import finisher as finisher_mod
    from dockd.store import deliveries

    rec = make_recorder(cfg, segments=2)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe, d = _offloaded(cfg, st, prober, rec)

        def killed(*a: object, **kw: object) -> int:
            raise KeyboardInterrupt("killed after signing")

        monkeypatch.setattr(finisher_mod, "promote_delivered", killed)
        with pytest.raises(KeyboardInterrupt):
            pipe.finish(d)
        monkeypatch.undo()
        assert states(st, d) == ["signed", "signed"]
        first = st.clips_of(d)[0]["id"]
        with st.tx() as conn:  # its copy had landed early, before the signing
            for t in pipe.targets:
                deliveries.mark_delivered(conn, first, t.name, st.now())
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        woken: list[int] = []
        pipe.on_ready = woken.append
        pipe.finisher.backlog()
        assert states(st, d) == ["delivered", "signed"] and woken == [d]
        pipe.finisher.backlog()  # idempotent
        assert states(st, d) == ["delivered", "signed"] and woken == [d]
