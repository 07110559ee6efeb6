"""Issue #10, defect 2: two recorders claiming the same serial, docked in two ports at once.

Same serial, same file names, same sizes, different bytes (a cloned or misconfigured
recorder). Before the fix the second docking took over the first one's uncopied clips and
interrupted it: one recorder's footage never reached the target and its docking was signed
with 0 clips. Now each recorder's clips are copied, signed and delivered distinctly, and the
duplicate serial is a finding in both manifests and an alert for the supervisor.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from dockd.daemon import build_pipeline
from dockd.ingest.probe import Prober
from dockd.integrity.keys import own_key
from dockd.integrity.verify import verify_path
from dockd.store import State

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _twin(rec: Path, dest: Path) -> Path:
    """A second recorder with the same serial, names and sizes but different bytes."""
    shutil.copytree(rec, dest)
    for p in dest.rglob("*.MP4"):
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0x5A
        p.write_bytes(bytes(b))
    return dest


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_same_serial_in_two_ports_delivers_both_recorders_distinctly(cfg, make_recorder,
                                                                     tmp_path, workdir):
    a = make_recorder(cfg, segments=3)
    b = _twin(a, tmp_path / "twin")
    want = {_sha(p) for p in [*a.rglob("*.MP4"), *b.rglob("*.MP4")]}
    assert len(want) == 6
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        da, known_a = pipe.begin_docking("port-01", a)
        db, known_b = pipe.begin_docking("port-02", b)  # both plugged in at once
        oa = pipe.offload(da, a, known_a)
        ob = pipe.offload(db, b, known_b)
        assert (oa.copied, ob.copied) == (3, 3) and not oa.interrupted and not ob.interrupted
        pipe.finish(da)
        pipe.finish(db)
        pipe.deliver_pending(ignore_backoff=True)
        for d in (da, db):
            row = st.docking(d)
            assert row["state"] == "delivered" and row["clips_total"] == 3
            assert [c["state"] for c in st.clips_of(d)] == ["delivered"] * 3
            kinds = [f["kind"] for f in json.loads(row["findings"])]
            assert "duplicate_serial" in kinds
        alert = st.query_one("SELECT * FROM alerts WHERE kind = 'duplicate_serial'")
        assert alert is not None and "port-01" in alert["message"] and \
            "port-02" in alert["message"]
        assert st.query("SELECT * FROM clips WHERE state = 'discovered'") == []
        manifests = [json.loads(bytes(m["manifest"])) for m in
                     st.query("SELECT manifest FROM manifests ORDER BY id")]
    assert len(manifests) == 2
    for m in manifests:
        assert "duplicate_serial" in [f["kind"] for f in m["findings"]]
    landed = list((workdir / "target").rglob("*.MP4"))
    assert {_sha(p) for p in landed} == want and len(landed) == 6  # both, distinctly, once
    assert verify_path(workdir / "target", own_key(cfg.paths.public_key_file)).ok


def test_recorder_moved_to_another_port_still_continues_its_docking(cfg, make_recorder):
    """The same recorder re-plugged elsewhere (its first port is empty now) is not a
    duplicate: the old docking is interrupted and the new one takes its clips over."""
    a = make_recorder(cfg, segments=2)
    moved = a.parent / "moved"
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d1, _ = pipe.begin_docking("port-01", a)
        a.rename(moved)  # pulled out of port-01 before copying, plugged into port-02
        d2, known = pipe.begin_docking("port-02", moved)
        assert st.docking(d1)["state"] == "interrupted"
        assert pipe.offload(d2, moved, known).copied == 2
        pipe.finish(d1)
        pipe.finish(d2)
        pipe.deliver_pending(ignore_backoff=True)
        assert st.docking(d2)["state"] == "delivered"
        assert not st.query("SELECT * FROM alerts WHERE kind = 'duplicate_serial'")
        assert st.query("SELECT * FROM clips WHERE state = 'discovered'") == []


def test_recorder_docked_again_after_its_twin_is_not_copied_twice(cfg, make_recorder,
                                                                  tmp_path, workdir):
    """Found by the soak: A delivered, then its same-serial twin B (same names and sizes),
    then A again with the same clips. A's clips are already delivered: they must be
    recognised by content among *all* earlier copies, not only the latest (B's)."""
    a = make_recorder(cfg, segments=2)
    b = _twin(a, tmp_path / "twin")
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        for port, rec in (("port-01", a), ("port-02", b), ("port-01", a)):
            d, known = pipe.begin_docking(port, rec)
            pipe.offload(d, rec, known)
            pipe.mark_interrupted(d, "taken out")
            pipe.finish(d)
            pipe.deliver_pending(ignore_backoff=True)
        last = st.docking(d)
        assert last["skipped_known"] == 2 and last["clips_total"] == 0
    landed = [_sha(p) for p in (workdir / "target").rglob("*.MP4")]
    assert len(landed) == 4 and len(set(landed)) == 4  # each recording once


def test_interrupted_twins_taking_over_each_others_rows_copy_nothing_twice(
        cfg, make_recorder, tmp_path, workdir):
    """Found by the soak: A and its twin B both interrupted before copying (a stop); A comes
    back and takes over B's uncopied rows (same serial, path, size), copies its clips; A
    comes back again and takes over its own old rows: its clips are already delivered and
    must be recognised by content, not copied a second time; no orphan rows remain."""
    a = make_recorder(cfg, segments=2)
    b = _twin(a, tmp_path / "twin")
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        da, _ = pipe.begin_docking("port-01", a)
        db, _ = pipe.begin_docking("port-02", b)
        for d in (da, db):
            pipe.mark_interrupted(d, "stopped")
            pipe.finish(d)
        for _ in range(2):
            d, known = pipe.begin_docking("port-01", a)
            pipe.offload(d, a, known)
            pipe.finish(d)
            pipe.deliver_pending(ignore_backoff=True)
        d, known = pipe.begin_docking("port-02", b)
        pipe.offload(d, b, known)
        pipe.finish(d)
        pipe.deliver_pending(ignore_backoff=True)
        assert st.query("SELECT * FROM clips WHERE state = 'discovered'") == []
    landed = [_sha(p) for p in (workdir / "target").rglob("*.MP4")]
    assert len(landed) == 4 and len(set(landed)) == 4
