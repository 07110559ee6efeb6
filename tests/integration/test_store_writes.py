"""The store's write functions join the caller's transaction (a rollback undoes them with
everything else) and keep their tables' rules: one open alert per subject, custody
deliveries' attempts and backoff, the target audit's upsert, the port tiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockd.store import State
from dockd.store import alerts as store_alerts
from dockd.store import audit as store_audit
from dockd.store import custody as store_custody
from dockd.store import health as store_health
from dockd.store import ports as store_ports
from dockd.store import trust as store_trust


@pytest.fixture
def st(tmp_path: Path) -> State:
    s = State(tmp_path / "s.db")
    yield s
    s.close()


class Boom(Exception):
    pass


def test_alert_writes_roll_back_with_the_caller(st: State) -> None:
    with pytest.raises(Boom), st.tx() as conn:
        store_alerts.insert_alert(conn, ts=st.now(), level="alarm", kind="deadline",
                                  subject="docking/1", message="late")
        assert store_alerts.open_alert(conn, "deadline", "docking/1") is not None
        raise Boom
    assert store_alerts.open_alerts(st) == []
    with st.tx() as conn:
        a = store_alerts.insert_alert(conn, ts=st.now(), level="warning", kind="deadline",
                                      subject="docking/1", message="soon")
        store_alerts.set_hook_status(conn, a, "ok")
    assert store_alerts.open_subjects(st, "deadline") == ["docking/1"]
    with st.tx() as conn:
        assert store_alerts.resolve(conn, "deadline", "docking/1", st.now()) == 1
        assert store_alerts.resolve(conn, "deadline", "docking/1", st.now()) == 0
    assert store_alerts.open_alerts(st) == []


def _signed_docking(st: State) -> int:
    with st.tx() as conn:
        conn.execute("INSERT INTO recorders (serial) VALUES ('A1')")
        d = int(conn.execute("INSERT INTO dockings (serial, port, state, docked_at, prefix) "
                             "VALUES ('A1', 'p1', 'signed', '2026-11-23T00:00:00+00:00', "
                             "'A1/x')").lastrowid)
        conn.execute("INSERT INTO manifests (docking_id, sha256, manifest, signature, prefix) "
                     "VALUES (?, 'm1', X'00', X'00', 'A1/x')", (d,))
        conn.execute("INSERT INTO clips (docking_id, first_docking_id, serial, rel_path, "
                     "safe_name, state, retention_class) VALUES (?, ?, 'A1', X'61', 'a.MP4', "
                     "'signed', 'standard')", (d, d))
    return d


def test_revisions_and_their_deliveries(st: State) -> None:
    d = _signed_docking(st)
    assert store_custody.signed_docking(st, d)["sha256"] == "m1"
    with pytest.raises(Boom), st.tx() as conn:
        store_custody.insert_revision(
            conn, docking_id=d, seq=1, sha256="r1", prev_sha256=None, manifest_sha256="m1",
            key_id="k", prefix="A1/x", kind="label", actor="me", created_at=st.now(),
            document=b"doc", signature=b"sig", targets=["t1", "t2"])
        raise Boom
    assert store_custody.revisions_of(st, d) == []
    with st.tx() as conn:
        rid = store_custody.insert_revision(
            conn, docking_id=d, seq=1, sha256="r1", prev_sha256=None, manifest_sha256="m1",
            key_id="k", prefix="A1/x", kind="label", actor="me", created_at=st.now(),
            document=b"doc", signature=b"sig", targets=["t1", "t2"])
        assert store_custody.newest_revision_in(conn, d) == {"seq": 1, "sha256": "r1"}
    pending = store_custody.pending_revisions(st, st.now(), ignore_backoff=False)
    assert sorted(p["target"] for p in pending) == ["t1", "t2"]
    assert store_custody.undelivered_count(st) == 2
    with st.tx() as conn:
        store_custody.record_failure(conn, "revision", rid, "t1", attempts=1, error="down",
                                     retry=True, next_try_at="2999-01-01T00:00:00+00:00")
        assert store_custody.attempts_of(conn, "revision", rid, "t1") == 1
        store_custody.mark_delivered(conn, "revision", rid, "t2", st.now())
    # t1 waits for its backoff unless told to ignore it; t2 is done
    assert store_custody.pending_revisions(st, st.now(), ignore_backoff=False) == []
    assert [p["target"] for p in store_custody.pending_revisions(
        st, st.now(), ignore_backoff=True)] == ["t1"]
    assert store_custody.undelivered_count(st) == 1
    with st.tx() as conn:
        store_custody.record_failure(conn, "revision", rid, "t1", attempts=2, error="never",
                                     retry=False, next_try_at=None)
    assert store_custody.pending_revisions(st, st.now(), ignore_backoff=True) == []
    with pytest.raises(KeyError):
        with st.tx() as conn:
            store_custody.mark_delivered(conn, "clips; DROP TABLE clips", rid, "t1", st.now())


def test_retention_rows_and_class(st: State) -> None:
    d = _signed_docking(st)
    rows = store_custody.clips_with_retention(st, d)
    assert [(r["safe_name"], r["retention_class"]) for r in rows] == [("a.MP4", "standard")]
    with st.tx() as conn:
        store_custody.set_retention_class(conn, rows[0]["id"], "evidence")
        assert store_custody.clips_with_retention_in(conn, d)[0]["retention_class"] == \
            "evidence"
    assert store_custody.delivered_manifest_prefix(st, d, "t1") is None


def test_audit_segments(st: State) -> None:
    for i in range(3):
        st.audit("thing", f"x/{i}")
    assert [e["subject"] for e in store_audit.entries_after(st, 1)] == ["x/1", "x/2"]
    assert store_audit.has_entry(st, "thing", "x/2")
    assert not store_audit.has_entry(st, "thing", "x/9")
    assert store_audit.last_segment_at(st) is None
    with st.tx() as conn:
        assert store_audit.last_segmented_id(conn) == 0
        seg = store_audit.insert_segment(conn, dock_id="d", first_id=1, last_id=3, sha256="s",
                                         created_at=st.now(), body=b"b", signature=b"g",
                                         targets=["t1"])
        assert store_audit.last_segmented_id(conn) == 3
    assert [s["id"] for s in store_audit.segment_heads(st)] == [seg]
    assert [s["target"] for s in store_custody.pending_segments(
        st, st.now(), ignore_backoff=False)] == ["t1"]
    assert store_audit.newest_entry(st)["id"] == 3


def test_trust_tokens_and_rehash_upsert(st: State) -> None:
    assert store_trust.token_of(st, "manifest/1") is None
    with st.tx() as conn:
        store_trust.keep_token(conn, "manifest/1", "h", b"first", st.now())
        store_trust.keep_token(conn, "manifest/1", "h", b"second", st.now())
        store_trust.record_rehash(conn, "t1", "k1", "2026-01-01", None)
        store_trust.record_rehash(conn, "t1", "k1", "2026-02-01", "changed")
    assert store_trust.token_of(st, "manifest/1") == b"first"  # the first one kept stays
    assert store_trust.last_rehashed(st, "t1") == {"k1": "2026-02-01"}
    assert st.query("SELECT problem FROM target_audit")[0]["problem"] == "changed"


def test_incomplete_tile_and_acknowledgement(st: State) -> None:
    with st.tx() as conn:
        conn.execute("INSERT INTO recorders (serial) VALUES ('A1')")
        d = int(conn.execute("INSERT INTO dockings (serial, port, state, docked_at, "
                             "incomplete, clips_total) VALUES ('A1', 'p1', 'interrupted', "
                             "'2026-11-23T00:00:00+00:00', 2, 5)").lastrowid)
        info = store_ports.incomplete_of(conn, d)
        assert info == {"port": "p1", "serial": "A1", "incomplete": 2, "clips_total": 5}
        store_ports.show_incomplete_tile(conn, port="p1", serial="A1", docking_id=d,
                                         message="plug it back", done=3, total=5,
                                         now=st.now())
        store_ports.empty_tile(conn, "p1", st.now())  # an incomplete tile stays
        assert store_ports.incomplete_docking_on(conn, "p1") == d
        assert store_ports.acknowledge_docking(conn, d, "sgt", st.now())
        assert not store_ports.acknowledge_docking(conn, d, "sgt", st.now())
        assert store_ports.incomplete_docking_on(conn, "p1") is None
    port = st.query("SELECT state, serial FROM ports")[0]
    assert port == {"state": "empty", "serial": None}


def test_health_insert_checks_its_columns(st: State) -> None:
    row = {c: None for c in store_health.HEALTH_COLUMNS}
    row.update(ts="2026-11-23T00:00:00+00:00", serial="A1", fs_check="not_run")
    with st.tx() as conn:
        conn.execute("INSERT INTO recorders (serial) VALUES ('A1')")
        hid = store_health.insert_health(conn, {**row, "extra": "ignored"})
        with pytest.raises(ValueError, match="lacks battery"):
            store_health.insert_health(conn, {k: v for k, v in row.items() if k != "battery"})
    assert st.query("SELECT id, serial FROM recorder_health") == [{"id": hid, "serial": "A1"}]
