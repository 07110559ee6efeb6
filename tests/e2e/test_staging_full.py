"""Issue #10, defect 4: a recorder larger than the free staging space must still finish.

Staging is a small disk: here a quota (the staging folder's ``statvfs`` reports the room
left under a fixed capacity, everything else is untouched), so the test is deterministic on
a shared machine. Before the fix the next clip waited for space that only delivery would
free, and delivery waited for the whole docking to be signed: it never finished. Now the
copied clips are checked and delivered ahead of the manifest (which is still the commit
marker and goes last), leave staging once they are on every target, the rest is copied,
and a staging-space alarm is raised.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from dockd.config import ByteSize
from dockd.daemon import build_pipeline
from dockd.errors import StagingFull
from dockd.ingest.probe import Prober
from dockd.integrity.keys import own_key
from dockd.integrity.verify import verify_path
from dockd.store import State

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def staging_quota(monkeypatch, staging: Path, capacity: int) -> None:
    """``os.statvfs`` of anything under ``staging`` reports ``capacity`` minus what the
    staging folder holds (the rest of the filesystem is answered truthfully)."""
    real = os.statvfs
    root = str(staging)

    def statvfs(path):
        p = os.fspath(path)
        if not (p == root or p.startswith(root + os.sep)):
            return real(path)
        used = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
        free = max(0, capacity - used)
        return os.statvfs_result((4096, 1, capacity, free, free, 1000, 1000, 1000, 0, 255))

    monkeypatch.setattr(os, "statvfs", statvfs)


def _cfg(cfg):
    return dataclasses.replace(cfg, offload=dataclasses.replace(cfg.offload,
                                                                min_free=ByteSize(0)))


def test_recorder_larger_than_staging_completes_and_alarms(cfg, make_recorder, monkeypatch,
                                                           workdir):
    cfg = _cfg(cfg)
    rec = make_recorder(cfg, segments=6)
    sizes = [p.stat().st_size for p in rec.rglob("*.MP4")]
    cfg.paths.staging_dir.mkdir(parents=True, exist_ok=True)
    staging_quota(monkeypatch, cfg.paths.staging_dir, 2 * max(sizes) + 100)
    assert sum(sizes) > 2 * max(sizes) + 100  # the recorder does not fit
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, known = pipe.begin_docking("port-01", rec)
        out = pipe.offload(d, rec, known)
        assert out.copied == 6 and st.docking(d)["state"] == "offloaded"
        alarm = st.query_one("SELECT * FROM alerts WHERE kind = 'staging_full'")
        assert alarm is not None and alarm["level"] == "alarm"
        # clips went to the target before the manifest existed; the manifest goes last
        assert st.query("SELECT * FROM manifests") == []
        early = st.query("SELECT * FROM deliveries WHERE state = 'delivered'")
        assert len(early) >= 4
        assert not list((workdir / "target").rglob("manifest.json"))
        pipe.finish(d)
        pipe.deliver_pending(ignore_backoff=True)
        assert st.docking(d)["state"] == "delivered"
        assert {c["state"] for c in st.clips_of(d)} == {"delivered"}
        manifest = json.loads(bytes(st.query_one("SELECT manifest FROM manifests")["manifest"]))
        assert len(manifest["clips"]) == 6
    landed = list((workdir / "target").rglob("*.MP4"))
    assert len(landed) == 6
    report = verify_path(workdir / "target", own_key(cfg.paths.public_key_file))
    assert report.ok, report.problems
    assert not [p for p in cfg.paths.staging_dir.rglob("*") if p.is_file()]


def test_no_room_and_no_target_still_raises_and_alarms(cfg, make_recorder, monkeypatch):
    """Nothing can leave staging (the only target is unwritable): the offload stops with
    StagingFull (the daemon retries later), nothing is lost, the alarm is up."""
    cfg = _cfg(cfg)
    rec = make_recorder(cfg, segments=3)
    sizes = [p.stat().st_size for p in rec.rglob("*.MP4")]
    cfg.paths.staging_dir.mkdir(parents=True, exist_ok=True)
    staging_quota(monkeypatch, cfg.paths.staging_dir, max(sizes) + 100)
    target = cfg.targets[0].path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("not a directory")  # the target is broken
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, known = pipe.begin_docking("port-01", rec)
        with pytest.raises(StagingFull):
            pipe.offload(d, rec, known)
        assert st.query_one("SELECT * FROM alerts WHERE kind = 'staging_full'")["level"] == \
            "alarm"
        states = sorted(c["state"] for c in st.clips_of(d))
        assert states.count("discovered") == 2 and len(states) == 3
        assert len(list(rec.rglob("*.MP4"))) == 3


def test_full_staging_of_another_docking_waits_for_its_delivery_and_resumes(
        cfg, make_recorder, monkeypatch, workdir):
    """Issue #13: staging is full of *another* docking's clips (signed, waiting for their
    delivery) and this docking has nothing copied it could deliver ahead. The copy waits for
    room — the other docking's delivery frees it — and then completes, instead of stopping
    (it used to raise StagingFull at once and leave the recorder to a retry)."""
    import threading

    cfg = _cfg(cfg)
    first = make_recorder(cfg, segments=3, serial="B7654321")
    second = make_recorder(cfg, segments=3)
    sizes = [p.stat().st_size for p in [*first.rglob("*.MP4"), *second.rglob("*.MP4")]]
    first_bytes = sum(p.stat().st_size for p in first.rglob("*.MP4"))
    cfg.paths.staging_dir.mkdir(parents=True, exist_ok=True)
    # the first recorder fits; then not even one clip of the second one fits beside it
    staging_quota(monkeypatch, cfg.paths.staging_dir, first_bytes + min(sizes) // 2)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        pipe.staging_wait_s = 120.0
        a, known = pipe.begin_docking("port-01", first)
        assert pipe.offload(a, first, known).copied == 3
        pipe.finish(a)
        assert st.docking(a)["state"] == "signed"  # staged, not delivered yet
        b, known = pipe.begin_docking("port-02", second)
        result: dict[str, object] = {}

        def copy_second() -> None:
            try:
                result["out"] = pipe.offload(b, second, known)
            except Exception as exc:  # the assertion below shows it
                result["error"] = exc

        worker = threading.Thread(target=copy_second)
        worker.start()
        for _ in range(300):  # the copy hits the full staging and raises the alarm
            if st.query_one("SELECT 1 FROM alerts WHERE kind = 'staging_full'"):
                break
            worker.join(0.1)
        assert worker.is_alive(), result  # waiting for room, not given up
        assert [c["state"] for c in st.clips_of(b)] == ["discovered"] * 3
        pipe.deliver_pending(ignore_backoff=True)  # the first docking leaves staging
        worker.join(120)
        assert not worker.is_alive()
        assert "error" not in result, result
        assert result["out"].copied == 3  # type: ignore[attr-defined]
        assert st.docking(b)["state"] == "offloaded"
        pipe.finish(b)
        pipe.deliver_pending(ignore_backoff=True)
        assert {st.docking(a)["state"], st.docking(b)["state"]} == {"delivered"}
    report = verify_path(workdir / "target", own_key(cfg.paths.public_key_file))
    assert report.ok, report.problems
