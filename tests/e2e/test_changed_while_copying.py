"""Issue #10, defect 3: a clip that changes while it is copied is not a removed recorder.

The recorder is still there; one file grew while dockd read it (a recorder finishing a
write, a second writer). Before the fix the docking was interrupted and signed with 2 of N
clips, the rest waited for a re-dock, and after a restart an orphan ``discovered`` row
stayed behind forever (false backlog, false deadline alarm). Now the clip settles and is
copied again, a ``changed_while_copying`` finding is recorded, the other clips proceed.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from dockd.daemon import build_pipeline
from dockd.errors import CopyError
from dockd.ingest import offload as offload_mod
from dockd.ingest.probe import Prober
from dockd.store import State

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _grow_once_on_open(monkeypatch, victim_name: str, times: int = 1):
    """The recorder appends to ``victim_name`` right after dockd opened it (and took its
    size), i.e. while it is being copied — deterministic, no timing involved."""
    real = offload_mod._open_source
    left = [times]

    def opening(root, rel_path):
        fd, st = real(root, rel_path)
        if rel_path.endswith(victim_name) and left[0] > 0:
            left[0] -= 1
            with open(root / rel_path, "ab") as fh:
                fh.write(b"\0" * 4096)
        return fd, st

    monkeypatch.setattr(offload_mod, "_open_source", opening)


def _cfg(cfg):
    return dataclasses.replace(cfg, offload=dataclasses.replace(cfg.offload,
                                                                settle_seconds=0.05))


def test_clip_growing_during_copy_is_copied_again_and_the_rest_proceeds(
        cfg, make_recorder, monkeypatch):
    cfg = _cfg(cfg)
    rec = make_recorder(cfg, segments=6)
    names = sorted(p.name for p in rec.rglob("*.MP4"))
    victim = names[2]
    _grow_once_on_open(monkeypatch, victim)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, known = pipe.begin_docking("port-01", rec)
        out = pipe.offload(d, rec, known)
        assert not out.interrupted and out.copied == 6
        assert st.docking(d)["state"] == "offloaded"
        pipe.finish(d)
        pipe.deliver_pending(ignore_backoff=True)
        assert st.docking(d)["state"] == "delivered"
        clips = {c["safe_name"]: c for c in st.clips_of(d)}
        assert {c["state"] for c in clips.values()} == {"delivered"}
        grown = clips[victim]
        on_rec = next(rec.rglob(victim))
        assert grown["size"] == on_rec.stat().st_size  # the settled, complete file
        assert "changed_while_copying" in [f["kind"] for f in json.loads(grown["findings"])]
        assert st.query("SELECT * FROM clips WHERE state = 'discovered'") == []
        manifest = json.loads(bytes(st.query_one("SELECT manifest FROM manifests")["manifest"]))
        assert manifest["extra"]["interrupted"] is False
        assert manifest["extra"]["not_copied"] == []


def test_clip_that_never_settles_is_retried_later_and_others_are_signed_once_it_does(
        cfg, make_recorder, monkeypatch):
    cfg = _cfg(cfg)
    rec = make_recorder(cfg, segments=4)
    victim = sorted(p.name for p in rec.rglob("*.MP4"))[1]
    _grow_once_on_open(monkeypatch, victim, times=50)  # keeps growing on every attempt
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, known = pipe.begin_docking("port-01", rec)
        with pytest.raises(CopyError, match="changed while"):
            pipe.offload(d, rec, known)
        # the recorder is still docked: not interrupted, the others are copied
        assert st.docking(d)["state"] == "offloading"
        states = {c["safe_name"]: c["state"] for c in st.clips_of(d)}
        assert states.pop(victim) == "discovered" and set(states.values()) == {"copied"}
        monkeypatch.undo()  # the writer on the recorder stops; the daemon's retry copies it
        d2, known = pipe.begin_docking("port-01", rec)
        assert d2 == d
        assert pipe.offload(d, rec, known).copied == 1
        assert st.docking(d)["state"] == "offloaded"
        assert st.query("SELECT * FROM clips WHERE state = 'discovered'") == []


def test_grown_clip_left_by_an_interrupted_docking_is_not_orphaned(cfg, make_recorder):
    """A docking interrupted before a clip was copied; by the next docking the file grew.
    The new docking takes the old row over (same recorder and path), no orphan remains."""
    rec = make_recorder(cfg, segments=2)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d1, _ = pipe.begin_docking("port-01", rec)
        pipe.mark_interrupted(d1, "recorder removed")
        victim = sorted(rec.rglob("*.MP4"))[0]
        with victim.open("ab") as fh:
            fh.write(b"\0" * 1000)
        d2, known = pipe.begin_docking("port-01", rec)
        assert pipe.offload(d2, rec, known).copied == 2
        pipe.finish(d1)
        pipe.finish(d2)
        pipe.deliver_pending(ignore_backoff=True)
        assert st.query("SELECT * FROM clips WHERE state = 'discovered'") == []
        assert st.docking(d2)["state"] == "delivered"
