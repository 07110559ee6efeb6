"""dockd.store.dockings and dockd.store.clips: the docking stages' SQL, on a real SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockd.errors import TransitionError
from dockd.model import ClipEntry, RecorderHealth, RecorderIdentity
from dockd.store import State, clips, dockings

NOW = "2026-01-02T03:04:05.000000+00:00"


@pytest.fixture
def st(tmp_path: Path) -> Iterator[State]:
    with State(tmp_path / "state.db") as s:
        yield s


def ident(serial: str = "A1") -> RecorderIdentity:
    return RecorderIdentity(serial=serial, officer_no="0001", officer_name="n", unit_no="u",
                            unit_name="un", vendor="v", model="m")


def health() -> RecorderHealth:
    return RecorderHealth(battery_percent=50, storage_total=100, storage_free=40,
                          firmware="F1")


def new_docking(st: State, serial: str = "A1", port: str = "port-01") -> int:
    with st.tx() as conn:
        dockings.seen_recorder(conn, ident(serial), health(), port=port, now=NOW)
        return dockings.insert(conn, serial=serial, port=port, dock_id="dock", root="/r",
                               docked_at=NOW, deadline_at=NOW, driver="sim", profile="default",
                               snapshot={"usb_serial": "U1"}, clock_offset_s=1.5,
                               dock_clock={"ntp": True})


def entry(name: str, size: int = 10) -> ClipEntry:
    return ClipEntry(f"DCIM/{name}", name, size, 1.0)


def add_clip(st: State, d: int, name: str, size: int = 10, serial: str = "A1") -> int:
    with st.tx() as conn:
        return clips.insert(conn, docking_id=d, serial=serial, entry=entry(name, size),
                            findings_json="[]", deadline=NOW, now=NOW, retention_class="std")


def test_insert_and_read_a_docking(st: State) -> None:
    d = new_docking(st)
    row = dockings.get(st, d)
    assert row["state"] == "offloading" and row["serial"] == "A1"
    assert json.loads(row["snapshot"] or "") == {"usb_serial": "U1"}
    assert json.loads(row["dock_clock"] or "") == {"ntp": True}
    rec = st.query_one("SELECT * FROM recorders WHERE serial = 'A1'")
    assert rec is not None and rec["last_battery"] == 50 and rec["firmware"] == "F1"
    assert dockings.offloading_on_port(st, "port-01") == d
    assert dockings.offloading_on_port(st, "port-02") is None
    assert dockings.latest_on_port(st, "port-01")["id"] == d  # type: ignore[index]
    assert [r["id"] for r in dockings.offloading_of(st, "A1")] == [d]
    assert dockings.offloading_elsewhere(st, "A1", "port-01") == []
    assert dockings.offloading_elsewhere(st, "A1", "port-02") == [{"id": d, "root": "/r"}]
    assert dockings.usb_serials_before(st, "A1", d + 1) == ["U1"]
    assert dockings.info_serials_before(st, "U1", d + 1) == ["A1"]
    assert dockings.usb_serials_before(st, "A1", d) == []


def test_docking_edges_are_checked_and_need_the_expected_state(st: State) -> None:
    d = new_docking(st)
    with pytest.raises(TransitionError), st.tx() as conn:
        dockings.advance_in(conn, d, "offloaded", "signed")  # not its state
    with pytest.raises(TransitionError, match="cannot move"), st.tx() as conn:  # no such edge
        dockings.advance_in(conn, d, "offloading", "delivered")
    with st.tx() as conn:
        dockings.advance_in(conn, d, "offloading", "offloaded", {"error": "x"})
    row = dockings.get(st, d)
    assert row["state"] == "offloaded" and row["error"] == "x"
    assert [r["id"] for r in dockings.unfinished(st)] == [d]
    assert [r["id"] for r in dockings.open_dockings(st)] == [d]
    dockings.port_emptied(st, "port-01")
    assert dockings.get(st, d)["undocked_at"] and dockings.open_dockings(st) == []


def test_a_failed_write_in_a_transaction_leaves_nothing(st: State) -> None:
    d = new_docking(st)
    add_clip(st, d, "a.mp4")
    with pytest.raises(TransitionError), st.tx() as conn:
        clips.advance_in(conn, 1, "discovered", "copied", NOW, {"sha256": "aa"})
        dockings.advance_in(conn, d, "offloaded", "signed")  # fails: the clip edge goes too
    assert clips.get(st, 1)["state"] == "discovered" and clips.get(st, 1)["sha256"] is None


def test_recount_and_known_outcome(st: State) -> None:
    d = new_docking(st)
    add_clip(st, d, "a.mp4", 10)
    add_clip(st, d, "b.mp4", 32)
    with st.tx() as conn:
        dockings.known_outcome(conn, d, 2, [7, 3])
    row = dockings.get(st, d)
    assert (row["clips_total"], row["bytes_total"], row["skipped_known"]) == (2, 42, 2)
    assert json.loads(row["earlier_pending"] or "") == [3, 7]
    with st.tx() as conn:  # a lower count never lowers it; no earlier list keeps the old one
        dockings.known_outcome(conn, d, 1, [])
    row = dockings.get(st, d)
    assert row["skipped_known"] == 2 and json.loads(row["earlier_pending"] or "") == [3, 7]


def test_port_tile_changes_only_while_it_shows_the_docking(st: State) -> None:
    d = new_docking(st)
    st.set_port("port-01", state="copying", docking_id=d)
    with st.tx() as conn:
        dockings.tile(conn, "port-01", d, {"message": "checking"})
    assert st.query_one("SELECT message FROM ports")["message"] == "checking"  # type: ignore[index]
    st.set_port("port-01", state="incomplete", message="plug it back in")
    with st.tx() as conn:
        dockings.tile(conn, "port-01", d, {"message": "delivering"})
        dockings.tile(conn, "port-01", d + 1, {"message": "other"})
    assert st.query_one("SELECT message FROM ports")["message"] == "plug it back in"  # type: ignore[index]


def test_continuity_replaces_the_gaps(st: State) -> None:
    d = new_docking(st)
    gap = {"docking_id": d, "kind": "interruption", "length_s": 3.0, "needs_review": 1}
    with st.tx() as conn:
        dockings.continuity(conn, d, [gap, gap], {"findings": []})
    with st.tx() as conn:
        dockings.continuity(conn, d, [gap], {"findings": [1]})
    assert len(st.query("SELECT * FROM gaps")) == 1
    assert json.loads(dockings.get(st, d)["continuity"] or "") == {"findings": [1]}


def test_manifest_chain_and_signed_queue(st: State) -> None:
    d = new_docking(st)
    c = add_clip(st, d, "a.mp4")
    with st.tx() as conn:
        assert dockings.last_manifest(conn, "dock") is None
        m = dockings.insert_manifest(conn, docking_id=d, dock_id="dock", sha256="s1",
                                     prev_sha256=None, key_id="k", prefix="p", created_at=NOW,
                                     body=b"{}", signature=b"sig", seq=1)
        dockings.queue_signed(conn, m, [(c, "p/a.mp4")], ["t1", "t2"])
        dockings.queue_signed(conn, m, [(c, "p/other")], ["t1"])  # kept, not replaced
        assert dockings.last_manifest(conn, "dock") == {"sha256": "s1", "seq": 1}
        assert dockings.last_manifest(conn, "other-dock") is None
        assert dockings.manifest_sha256(conn, d) == "s1"
        st.audit("clock_set", f"docking/{d}", {"offset": 3}, conn=conn)
        assert dockings.clock_set_detail(conn, d) == {"offset": 3}
        assert dockings.clock_set_detail(conn, d + 1) is None
    rows = st.query("SELECT target, state, key FROM deliveries ORDER BY target")
    assert rows == [{"target": "t1", "state": "pending", "key": "p/a.mp4"},
                    {"target": "t2", "state": "pending", "key": "p/a.mp4"}]
    assert len(st.query("SELECT * FROM manifest_deliveries")) == 2
