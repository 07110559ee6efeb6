"""Small clips are recorded as ``copied`` in groups (one transaction per group, not per
clip), without ever losing a clip or taking one as copied that is not durably staged."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dockd.daemon import build_pipeline
from dockd.ingest.probe import Prober
from dockd.stages import offload as offload_stage
from dockd.store import State, clips

pytestmark = pytest.mark.timeout(180)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count_transactions(st: State, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every write transaction of ``st`` from now on (the list's one item)."""
    n = [0]
    real = State.tx

    @contextmanager
    def tx(self: State) -> Any:
        if self is st:
            n[0] += 1
        with real(self) as conn:
            yield conn

    monkeypatch.setattr(State, "tx", tx)
    return n


def test_many_small_clips_take_few_transactions(cfg, make_recorder, monkeypatch) -> None:
    rec = make_recorder(cfg, segments=12, segment_seconds=0.5, width=64, height=48, fps=5)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, known = pipe.begin_docking("port-01", rec)
        n = count_transactions(st, monkeypatch)
        out = pipe.offload(d, rec, known)
        assert out.copied == 12
        copied = st.clips_of(d, "copied")
        assert len(copied) == 12
        for c in copied:  # every record is the staged copy's
            assert Path(c["staged_path"]).is_file()
            assert sha(Path(c["staged_path"])) == c["sha256"]
            assert sha(rec / c["rel_path"]) == c["sha256"]
        # one per clip used to be 2 (the clip, the port): 24 and more; now a few groups
        assert n[0] < 12, f"{n[0]} write transactions for 12 small clips"
        port = st.query_one("SELECT clips_done, clips_total FROM ports WHERE port = 'port-01'")
        assert port is not None and port["clips_done"] == port["clips_total"] == 12


def test_clips_staged_but_not_recorded_are_confirmed_after_a_crash(cfg, make_recorder,
                                                                   monkeypatch) -> None:
    """dockd dies after clips were staged but before their group was recorded: the restart
    finds them staged, confirms each by hash against the recorder and records it; nothing
    is lost, nothing is recorded that the staging copy does not hold."""
    rec = make_recorder(cfg, segments=6, segment_seconds=0.5, width=64, height=48, fps=5)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, known = pipe.begin_docking("port-01", rec)

        class Killed(BaseException):
            pass

        def dies(*_a: Any, **_k: Any) -> int:
            raise Killed

        monkeypatch.setattr(clips, "advance_many", dies)
        with pytest.raises(Killed):
            pipe.offload(d, rec, known)
        monkeypatch.undo()
        assert st.clips_of(d, "copied") == []  # nothing recorded ...
        staged = sorted(pipe.staging_dir(d).iterdir())
        assert len(staged) == 6  # ... though every clip is staged (and synced)
        before = {p.name: (p.stat().st_ino, sha(p)) for p in staged}
        # the restart: the same docking goes on
        d2, known = pipe.begin_docking("port-01", rec)
        assert d2 == d
        out = pipe.offload(d, rec, known)
        assert out.copied == 6
        copied = st.clips_of(d, "copied")
        assert len(copied) == 6
        for c in copied:
            p = Path(c["staged_path"])
            assert (p.stat().st_ino, c["sha256"]) == before[p.name]  # confirmed, not re-copied
            assert sha(rec / c["rel_path"]) == c["sha256"]


def test_a_large_clip_is_recorded_as_soon_as_it_is_staged(cfg, make_recorder,
                                                          monkeypatch) -> None:
    """Clips above SMALL_FILE are recorded one by one (with any small ones before them)."""
    monkeypatch.setattr(offload_stage, "SMALL_FILE", 1)
    rec = make_recorder(cfg, segments=4)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, known = pipe.begin_docking("port-01", rec)
        seen: list[int] = []

        def progress(event: str, **info: Any) -> None:
            if event == "clip":  # the next clip is about to be read
                seen.append(len(st.clips_of(d, "copied")))

        pipe.on_progress = progress
        pipe.offload(d, rec, known)
        assert seen == [0, 1, 2, 3]
