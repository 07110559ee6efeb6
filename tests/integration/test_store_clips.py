"""dockd.store.clips: the clip rows of the docking stages, on a real SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockd.errors import TransitionError
from dockd.model import ClipEntry
from dockd.store import State, clips, dockings
from tests.integration.test_store_dockings import NOW, add_clip, entry, new_docking


@pytest.fixture
def st(tmp_path: Path) -> Iterator[State]:
    with State(tmp_path / "state.db") as s:
        yield s

def test_clip_rows_by_name_take_over_and_growth(st: State) -> None:
    old = new_docking(st)
    c = add_clip(st, old, "a.mp4", 10)
    with st.tx() as conn:
        dockings.advance_in(conn, old, "offloading", "interrupted")
    new = new_docking(st)
    with st.tx() as conn:
        same = clips.same_name(conn, "A1", "DCIM/a.mp4")
        assert [(r["id"], r["docking_state"]) for r in same] == [(c, "interrupted")]
        assert clips.same_name(conn, "B2", "DCIM/a.mp4") == []
        clips.take_over(conn, c, new, entry("a.mp4", 12), NOW)
        clips.regrown(conn, c, 20, 5.0, NOW)
        assert clips.exists_in(conn, new, "DCIM/a.mp4")
        assert not clips.exists_in(conn, old, "DCIM/a.mp4")
    row = clips.get(st, c)
    assert (row["docking_id"], row["first_docking_id"], row["size"]) == (new, old, 20)
    assert clips.paths_of_serial(st, "A1") == {("DCIM/a.mp4", 20)}


def test_odd_bytes_in_a_path_survive(st: State) -> None:
    d = new_docking(st)
    name = "DCIM/\udcff\udcfe.mp4"  # not UTF-8 on the recorder
    with st.tx() as conn:
        clips.insert(conn, docking_id=d, serial="A1", entry=ClipEntry(name, "x.mp4", 1, 1.0),
                     findings_json="[]", deadline=NOW, now=NOW, retention_class="std")
        assert clips.exists_in(conn, d, name)
        assert clips.same_name(conn, "A1", name)[0]["rel_path"] == name


def test_clip_edges_counts_and_batches(st: State) -> None:
    d = new_docking(st)
    a, b = add_clip(st, d, "a.mp4", 10), add_clip(st, d, "b.mp4", 5)
    clips.advance(st, a, "discovered", "copied", {"sha256": "aa", "staged_path": "/s/a"})
    with pytest.raises(TransitionError):
        clips.advance(st, a, "discovered", "copied")
    assert clips.count(st, d, ("discovered",)) == 1
    assert clips.copied_so_far(st, d) == {"n": 1, "b": 10}
    assert [c["id"] for c in clips.of_docking(st, d, "copied")] == [a]
    with pytest.raises(TransitionError):  # b is not copied: the whole batch stays
        clips.advance_many(st, [(a, {"probe": "{}"}), (b, {"probe": "{}"})], "copied",
                           "probed")
    assert clips.get(st, a)["state"] == "copied"
    assert clips.advance_many(st, [(a, {"probe": "{}"})], "copied", "probed") == 1
    assert clips.advance_many(st, [], "probed", "checked") == 0
    clips.failed(st, b, "boom")
    row = clips.get(st, b)
    assert row["error"] == "boom" and row["attempts"] == 1
    with st.tx() as conn:
        assert [r["id"] for r in clips.all_in(conn, d)] == [a, b]
        assert clips.names_of(conn, json.dumps([b, a])) == [
            {"safe_name": "a.mp4", "docking_id": d}, {"safe_name": "b.mp4", "docking_id": d}]
        assert clips.names_of(conn, None) == []
        assert clips.drop_discovered(conn, a) is False  # copied: never dropped
        assert clips.drop_discovered(conn, b) is True


def test_copies_elsewhere_and_staged_elsewhere(st: State) -> None:
    d1 = new_docking(st)
    a = add_clip(st, d1, "a.mp4", 10)
    clips.advance(st, a, "discovered", "copied", {"sha256": "aa", "staged_path": "/s/a"})
    d2 = new_docking(st, port="port-02")
    b = add_clip(st, d2, "a.mp4", 10)
    assert clips.copies_elsewhere(st, b, "DCIM/a.mp4", 10) == [{"id": a, "sha256": "aa"}]
    assert clips.copies_elsewhere(st, b, "DCIM/a.mp4", 11) == []
    assert clips.copies_elsewhere(st, a, "DCIM/a.mp4", 10) == []  # b is not copied
    assert clips.staged_elsewhere(st, d2) == ["/s/a"]
    assert clips.staged_elsewhere(st, d1) == []
