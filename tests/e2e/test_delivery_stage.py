"""The delivery stage (#13): one long-lived worker per target.

* a slow target does not hold back another target's manifest (each target's manifests go
  as soon as that target has the docking's clips);
* an exception nobody expected inside a worker is a failed attempt with backoff on the
  item, and the worker carries on with the next one;
* clips flow while the recorder still copies: a checked clip of a docking still offloading
  is delivered before the docking is signed, and the manifest still lands last;
* ``dockd ingest`` reads each delivered copy once (as it lands), ``--reverify`` again.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dockd.config import TargetConfig
from dockd.daemon import build_pipeline
from dockd.delivery.local import LocalTarget
from dockd.ingest.probe import Prober
from dockd.integrity.keys import own_key
from dockd.integrity.verify import verify_path
from dockd.oneshot import ingest_tree
from dockd.store import State, parse_iso
from tests.conftest import wait_for

pytestmark = [pytest.mark.timeout(120)]


class Wrapped:
    """A real local target with a hook before each clip upload."""

    def __init__(self, inner: LocalTarget, before_put: Any):
        self.inner = inner
        self.name, self.required, self.throttle = inner.name, inner.required, None
        self.before_put = before_put
        self.puts: list[str] = []

    def put_file(self, local_path: Path, key: str, **kw: Any) -> Any:
        self.puts.append(key)
        self.before_put(key)
        return self.inner.put_file(local_path, key, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _two_targets(cfg):
    second = TargetConfig(name="second", kind="local", path=cfg.paths.staging_dir.parent / "t2")
    return dataclasses.replace(cfg, targets=(cfg.targets[0], second))


def test_slow_target_does_not_delay_another_targets_manifest(cfg, make_recorder):
    cfg = _two_targets(cfg)
    rec = make_recorder(cfg, segments=2)
    gate = threading.Event()
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        slow = Wrapped(pipe.targets[0], lambda key: gate.wait(60))
        pipe.targets = [slow, pipe.targets[1]]
        d, known = pipe.begin_docking("port-01", rec)
        pipe.offload(d, rec, known)
        pipe.finish(d)
        landed: list[int] = []
        passing = threading.Thread(target=lambda: landed.append(
            pipe.deliver_pending(ignore_backoff=True)))
        passing.start()
        try:
            # the fast target gets its clips AND its manifest while the slow one still hangs
            wait_for(lambda: st.query(
                "SELECT 1 FROM manifest_deliveries WHERE target = 'second' AND "
                "state = 'delivered'"), 60, 0.05, "the fast target's manifest")
            assert list((cfg.targets[1].path).rglob("manifest.json"))
            assert not list((cfg.targets[0].path).rglob("manifest.json"))
            assert st.docking(d)["state"] == "signed"  # not on every target yet
        finally:
            gate.set()
            passing.join(60)
        assert landed == [2 + 1 + 2 + 1]  # both clips and the manifest, on both targets
        assert st.docking(d)["state"] == "delivered"
    for t in cfg.targets:
        assert verify_path(t.path, own_key(cfg.paths.public_key_file)).ok


def test_unexpected_exception_in_worker_is_a_failed_attempt_and_worker_goes_on(
        cfg, make_recorder):
    rec = make_recorder(cfg, segments=3)
    failed: list[str] = []

    def boom(key: str) -> None:
        if not failed:
            failed.append(key)
            raise RuntimeError("a bug nobody expected")

    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        target = Wrapped(pipe.targets[0], boom)
        pipe.targets = [target]
        d, known = pipe.begin_docking("port-01", rec)
        pipe.offload(d, rec, known)
        pipe.finish(d)
        pipe.delivery.start()  # the daemon's long-lived workers
        try:
            worker = pipe.delivery.workers[0]
            assert pipe.deliver_pending(ignore_backoff=True) == 2  # the other two landed
            assert worker.running  # the exception did not end the worker
            row = st.query_one("SELECT d.* FROM deliveries d WHERE d.key = ?", (failed[0],))
            assert row["state"] == "pending" and row["attempts"] == 1
            assert "RuntimeError" in row["last_error"] and "nobody expected" in row["last_error"]
            assert parse_iso(row["next_try_at"]) > st.clock()  # backoff
            assert st.query("SELECT * FROM manifest_deliveries WHERE state = 'delivered'") == []
            # the backoff is honoured: a normal pass leaves it alone
            assert pipe.deliver_pending() == 0
            # once it is due, the same worker sends it and then the manifest
            assert pipe.deliver_pending(ignore_backoff=True) == 2
            assert worker.running and pipe.delivery.workers[0] is worker
        finally:
            assert pipe.delivery.stop(30)
        assert st.docking(d)["state"] == "delivered"
        assert Counter(target.puts)[failed[0]] == 2


def test_clip_of_docking_still_offloading_is_delivered_before_signing(cfg, make_recorder):
    rec = make_recorder(cfg, segments=4)
    primary = cfg.targets[0].path
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d, known = pipe.begin_docking("port-01", rec)

        def after_two() -> bool:  # the recorder is still being copied: two clips staged
            # (the offload records copied clips in groups: the database may lag behind)
            return len([p for p in pipe.staging_dir(d).glob("*")
                        if not p.name.endswith(".partial")]) >= 2

        with pytest.raises(Exception, match="stopped"):
            pipe.offload(d, rec, known, should_stop=after_two)
        assert st.docking(d)["state"] == "offloading"
        pipe.process(d)  # the copied clips are checked (the finisher does it as they arrive)
        assert pipe.deliver_pending() == 2
        assert st.docking(d)["state"] == "offloading"
        assert len(list(primary.rglob("*.MP4"))) == 2
        assert not list(primary.rglob("manifest.json"))  # no commit marker yet
        early = {r["clip_id"] for r in st.query(
            "SELECT clip_id FROM deliveries WHERE state = 'delivered'")}
        assert {st.clip(c)["state"] for c in early} == {"checked"}
        # the rest is copied, the docking signed; its manifest lands last, in the same folder
        d2, known = pipe.begin_docking("port-01", rec)
        assert d2 == d
        pipe.offload(d, rec, known)
        pipe.finish(d)
        assert {st.clip(c)["state"] for c in early} == {"delivered"}
        assert pipe.deliver_pending() == 2 + 1
        assert st.docking(d)["state"] == "delivered"
        folders = {p.parent for p in primary.rglob("*.MP4")}
        assert folders == {p.parent for p in primary.rglob("manifest.json")}
        manifest = next(primary.rglob("manifest.json"))
        assert all(p.stat().st_mtime <= manifest.stat().st_mtime
                   for p in primary.rglob("*.MP4"))
    assert verify_path(primary, own_key(cfg.paths.public_key_file)).ok
    # the staged copies left staging once the docking was delivered
    assert not [p for p in cfg.paths.staging_dir.rglob("*") if p.is_file()]


def _count_reads(monkeypatch) -> tuple[Counter[str], Counter[str]]:
    """(reads of the stored copy per file name on the target: the put's read-back of what
    landed and any ``verify`` after it, full re-reads per file by the offline verifier)."""
    import dockd.integrity.verify as verify_mod

    readbacks: Counter[str] = Counter()
    rereads: Counter[str] = Counter()
    real_read_back, real_hash = LocalTarget._read_back, verify_mod._hash_file

    def read_back(self, dir_fd, name):
        readbacks[name.removesuffix(".partial")] += 1
        return real_read_back(self, dir_fd, name)

    def hash_file(p):
        rereads[Path(p).name] += 1
        return real_hash(p)

    monkeypatch.setattr(LocalTarget, "_read_back", read_back)
    monkeypatch.setattr(verify_mod, "_hash_file", hash_file)
    return readbacks, rereads


@pytest.mark.parametrize("reverify", [False, True])
def test_ingest_reads_each_delivered_copy_once_unless_reverify(cfg, make_recorder, monkeypatch,
                                                               reverify):
    rec = make_recorder(cfg, segments=3)
    readbacks, rereads = _count_reads(monkeypatch)
    out = ingest_tree(cfg, rec, reverify=reverify)
    assert out["ok"], out["problems"]
    clips = [k for k in readbacks if k.endswith(".MP4")]
    assert len(clips) == 3
    # each copy read back once, as it landed (the put's read-back after fsync), not again
    assert [readbacks[k] for k in clips] == [1, 1, 1]
    if reverify:
        assert sorted(rereads.values()) == [1, 1, 1]  # and once more, on request
    else:
        assert not rereads


def test_ingest_check_still_catches_a_manifest_changed_on_the_target(cfg, make_recorder,
                                                                     monkeypatch):
    """Without the full re-read the final check still reads the manifest and signature."""
    import dockd.stages.deliver_steps as steps

    rec = make_recorder(cfg, segments=1)
    real = steps.manifest_landed

    def tamper(ctx, manifest_id, docking_id, target):
        real(ctx, manifest_id, docking_id, target)
        m = next(cfg.targets[0].path.rglob("manifest.json"))
        m.chmod(0o644)
        m.write_bytes(m.read_bytes().replace(b'"format"', b' "format"', 1))

    monkeypatch.setattr(steps, "manifest_landed", tamper)
    out = ingest_tree(cfg, rec)
    assert not out["ok"]
    assert any("manifest.json is not the one signed" in p for p in out["problems"])
