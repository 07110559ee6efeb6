"""What the pipeline records stays true (issue #12 defects 1, 2, 6): a gap across two
dockings is found and delivered with the docking that completes it, clips that failed
delivery never count as delivered, ``dockd retry`` and ``dockd ack``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dockd.config import for_workdir
from dockd.daemon import build_pipeline
from dockd.errors import CopyError, DeliveryError
from dockd.ingest.probe import Prober
from dockd.status.report import report_data
from dockd.status.views import ports_view, status_data
from dockd.store import State
from tests.truthkit import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def cfg(workdir: Path):
    from dockd.integrity.keys import generate_key

    c = for_workdir(workdir)
    c = dataclasses.replace(c, notes=dataclasses.replace(c.notes, enabled=False))
    generate_key(c.paths.key_file, c.paths.public_key_file)
    return c


def _manifest(st: State, docking_id: int) -> dict:
    row = st.query_one("SELECT manifest FROM manifests WHERE docking_id = ?", (docking_id,))
    assert row is not None
    return json.loads(bytes(row["manifest"]))


def _pulled_after(cfg, n: int):
    """should_stop for offload: the recorder is pulled once ``n`` clips are copied, i.e.
    staged (the offload records copied clips in groups: the database may lag behind)."""
    def pulled() -> bool:
        staged = [p for p in cfg.paths.staging_dir.glob("docking-*/*")
                  if not p.name.endswith(".partial")]
        return len(staged) >= n
    return pulled


def test_gap_across_two_dockings_is_found_and_signed(cfg, make_recorder):
    rec = make_recorder(cfg, segments=6, gaps={3: 300.0})
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d1, known = pipe.begin_docking("port-01", rec)
        with pytest.raises(CopyError):
            pipe.offload(d1, rec, known, should_stop=_pulled_after(cfg, 3))
        pipe.mark_interrupted(d1, "recorder removed")
        pipe.finish(d1)
        assert st.query("SELECT * FROM gaps WHERE docking_id = ?", (d1,)) == []
        d2 = pipe.run_docking("port-01", rec).docking_id
        assert d2 != d1
        gaps = st.query("SELECT * FROM gaps WHERE kind = 'interruption'")
        assert len(gaps) == 1
        g = gaps[0]
        assert g["docking_id"] == d2 and g["needs_review"] == 1
        assert abs(g["length_s"] - 300.0) < 2.0
        names = {c["id"]: (c["docking_id"], c["safe_name"]) for c in st.query(
            "SELECT id, docking_id, safe_name FROM clips")}
        assert names[g["before_clip"]][0] == d1 and names[g["after_clip"]][0] == d2
        # delivered in the signed manifest of the docking that completes it
        doc = _manifest(st, d2)
        assert [f["kind"] for f in doc["extra"]["continuity"]["timeline"]["gaps"]] == [
            "interruption"]
        rep = report_data(st, docking_id=d2)["dockings"][0]
        assert [(x["before_clip"], x["after_clip"]) for x in rep["gaps"]] == [
            (names[g["before_clip"]][1], names[g["after_clip"]][1])]
        # a third docking with nothing new finds no further gap
        pipe.run_docking("port-01", rec)
        assert len(st.query("SELECT * FROM gaps WHERE kind = 'interruption'")) == 1


class Refusing:
    """A local target whose store refuses some keys' content (write-once conflict)."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.required = inner.name, inner.required
        self.throttle = None
        self.refuse: set[str] = set()

    def put_file(self, local_path, key, **kw):
        if any(key.endswith(n) for n in self.refuse):
            raise DeliveryError(f"{self.name}: {key} already exists with different content; "
                                "refusing to overwrite evidence", retry=False)
        return self.inner.put_file(local_path, key, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_failed_clips_never_count_as_delivered_and_retry_sends_them(cfg, make_recorder,
                                                                    workdir):
    rec = make_recorder(cfg, segments=3)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        target = Refusing(pipe.targets[0])
        pipe.targets = [target]
        first = sorted(p.name for p in rec.rglob("*.MP4"))[0]
        target.refuse = {first}
        d1 = pipe.run_docking("port-01", rec).docking_id
        pipe.deliver_pending(ignore_backoff=True)
        states = {r["state"] for r in st.query("SELECT state FROM deliveries")}
        assert states == {"failed", "delivered"}
        assert [a["kind"] for a in st.query("SELECT kind FROM alerts WHERE resolved_at IS NULL")
                ] == ["delivery_failed"]
        # the same recorder docked again: the failed clip is copied already but NOT delivered
        pipe.undocked("port-01")
        d2 = pipe.run_docking("port-01", rec).docking_id
        pipe.deliver_pending(ignore_backoff=True)
        extra = _manifest(st, d2)["extra"]
        assert extra["skipped_already_delivered"] == 2
        assert [c["clip"] for c in extra["copied_earlier_not_delivered"]] == [first]
        port = next(p for p in ports_view(st) if p["port"] == "port-01")
        assert port["docking_id"] == d2
        assert port["delivered"] == {"done": 2, "total": 3}
        assert port["message"] != "delivered and verified"
        # the store is fixed; `dockd retry` sends the failed clip again
        target.refuse = set()
        r = run_cli("retry", "--workdir", str(workdir))
        assert r.returncode == 0, r.stderr
        assert "1" in r.stdout
        assert {r["state"] for r in st.query("SELECT state FROM deliveries")} == {
            "pending", "delivered"}
        pipe.deliver_pending()
        assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"delivered"}
        assert st.query("SELECT * FROM alerts WHERE resolved_at IS NULL") == []
        port = next(p for p in ports_view(st) if p["port"] == "port-01")
        assert port["delivered"] == {"done": 3, "total": 3}
        assert port["message"] == "delivered and verified"
        assert st.docking(d1)["state"] == "delivered"


def test_retry_only_the_named_target(cfg, make_recorder, workdir):
    r = run_cli("retry", "--target", "nosuch", "--workdir", str(workdir))
    assert r.returncode == 2 and "nosuch" in r.stderr


def test_ack_clears_the_incomplete_tile(cfg, make_recorder, workdir):
    rec = make_recorder(cfg, segments=4)
    with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, st, prober)
        d1, known = pipe.begin_docking("port-01", rec)
        with pytest.raises(CopyError):
            pipe.offload(d1, rec, known, should_stop=_pulled_after(cfg, 2))
        pipe.mark_interrupted(d1, "recorder removed")
        pipe.finish(d1)
        port = next(p for p in ports_view(st) if p["port"] == "port-01")
        assert port["state"] == "incomplete" and port["docking_id"] == d1
        assert [i["docking_id"] for i in status_data(st, "d", st.clock())["incomplete"]] == [d1]
    r = run_cli("ack", "port-01", "--workdir", str(workdir))
    assert r.returncode == 0, r.stderr
    with State(cfg.paths.database) as st:
        port = next(p for p in ports_view(st) if p["port"] == "port-01")
        assert port["state"] == "empty"
        assert status_data(st, "d", st.clock())["incomplete"] == []
        inc = report_data(st, docking_id=d1)["dockings"][0]["incomplete"]
        assert inc["open"] is False and inc["acked_at"]
        assert st.query("SELECT 1 FROM audit WHERE action = 'acknowledged'")
    r = run_cli("ack", "port-02", "--workdir", str(workdir))
    assert r.returncode == 1 and "nothing to acknowledge" in r.stderr


def test_missing_sftp_key_is_retried_and_delivers_once_the_key_is_back(cfg, make_recorder,
                                                                       tmp_path, workdir):
    """Issue #12 defect 6 with a real OpenSSH on 127.0.0.1: the off-site key file is missing
    at docking: the clips wait (pending, retried with backoff, an alarm), nothing counts as
    delivered; the key put back, the next pass delivers them and the alarm clears."""
    from dockd.config import TargetConfig
    from dockd.oneshot import ingest_tree
    from tests.sshd import SshdServer

    server = SshdServer(tmp_path / "sshd").start()
    key = tmp_path / "offsite_key"
    offsite = TargetConfig(name="offsite", kind="sftp", host=server.host, port=server.port,
                           user=server.user, key_file=str(key),
                           known_hosts=str(server.known_hosts), path=server.root,
                           verify="readback")
    cfg = dataclasses.replace(cfg, targets=(cfg.targets[0], offsite))
    rec = make_recorder(cfg, segments=2)
    try:
        res = ingest_tree(cfg, rec, attempts=2)
        assert not res["ok"]
        with State(cfg.paths.database) as st:
            rows = st.query("SELECT state, attempts, last_error FROM deliveries "
                            "WHERE target = 'offsite'")
            assert {r["state"] for r in rows} == {"pending"}
            assert all("private key" in r["last_error"] for r in rows)
            assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"signed"}
            alarms = st.query("SELECT kind, subject FROM alerts WHERE resolved_at IS NULL")
            assert alarms == [{"kind": "target_unusable", "subject": "target/offsite"}]
            port = next(p for p in ports_view(st) if p["port"] == "manual")
            assert port["delivered"]["done"] == 0
            assert port["message"] != "delivered and verified"
        key.write_bytes(Path(server.client_key).read_bytes())
        key.chmod(0o600)
        with State(cfg.paths.database) as st, Prober(cfg.tools) as prober:
            pipe = build_pipeline(cfg, st, prober)
            try:
                pipe.deliver_pending(ignore_backoff=True)
            finally:
                for t in pipe.targets:
                    t.close()
            assert {r["state"] for r in st.query("SELECT state FROM clips")} == {"delivered"}
            assert st.query("SELECT 1 FROM alerts WHERE resolved_at IS NULL") == []
            assert st.query_one("SELECT state FROM dockings")["state"] == "delivered"
    finally:
        server.stop()
    assert len(list(server.root.rglob("*.MP4"))) == 2
