"""The durable state machine: every edge, nothing else; one transaction per transition."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest

from dockd.errors import StateError, TransitionError
from dockd.lifecycle import CLIP_EDGES, CLIP_STATES, DOCKING_EDGES, DOCKING_STATES, retry_delay
from dockd.store import SCHEMA_VERSION, State


@pytest.fixture
def state(tmp_path):
    with State(tmp_path / "s.db") as s:
        yield s


def _docking(state: State) -> int:
    with state.tx() as conn:
        conn.execute("INSERT INTO recorders (serial) VALUES ('A1')")
        cur = conn.execute("INSERT INTO dockings (serial, port, state, docked_at) VALUES "
                           "('A1', 'port-01', 'offloading', '2026-11-23T00:00:00+00:00')")
        return int(cur.lastrowid)


def _clip(state: State, docking: int, name: str = "x.MP4", st: str = "discovered") -> int:
    with state.tx() as conn:
        cur = conn.execute("INSERT INTO clips (docking_id, serial, rel_path, safe_name, state) "
                           "VALUES (?, 'A1', ?, ?, ?)", (docking, name, name, st))
        return int(cur.lastrowid)


def test_schema_is_migrated_and_wal(state, tmp_path):
    assert state.schema_version == SCHEMA_VERSION
    mode = state.conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    # reopening does not migrate again and keeps data
    d = _docking(state)
    with State(tmp_path / "s.db") as again:
        assert again.docking(d)["port"] == "port-01"


def test_newer_schema_refused(tmp_path):
    p = tmp_path / "future.db"
    conn = sqlite3.connect(p)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StateError, match="newer than this dockd"):
        State(p)


@pytest.mark.parametrize("edge", sorted(CLIP_EDGES))
def test_every_clip_edge_is_allowed(state, edge):
    old, new = edge
    c = _clip(state, _docking(state), st=old)
    state.advance_clip(c, old, new)
    assert state.clip(c)["state"] == new


@pytest.mark.parametrize("old,new", [(a, b) for a in CLIP_STATES for b in CLIP_STATES
                                     if (a, b) not in CLIP_EDGES])
def test_every_other_clip_move_is_refused(state, old, new):
    c = _clip(state, _docking(state), st=old)
    with pytest.raises(TransitionError):
        state.advance_clip(c, old, new)
    assert state.clip(c)["state"] == old


@pytest.mark.parametrize("old,new", [(a, b) for a in DOCKING_STATES for b in DOCKING_STATES])
def test_docking_edges(state, old, new):
    d = _docking(state)
    state.conn.execute("UPDATE dockings SET state = ? WHERE id = ?", (old, d))
    if (old, new) in DOCKING_EDGES:
        state.advance_docking(d, old, new)
        assert state.docking(d)["state"] == new
    else:
        with pytest.raises(TransitionError):
            state.advance_docking(d, old, new)
        assert state.docking(d)["state"] == old


def test_stale_expected_state_is_refused(state):
    c = _clip(state, _docking(state))
    state.advance_clip(c, "discovered", "copied", sha256="ab" * 32)
    with pytest.raises(TransitionError, match="expected state 'discovered', found 'copied'"):
        state.advance_clip(c, "discovered", "copied")
    assert state.clip(c)["sha256"] == "ab" * 32


def test_transition_is_atomic_with_its_columns(state):
    """A failure inside a transaction leaves neither the new state nor its columns."""
    c = _clip(state, _docking(state))
    with pytest.raises(RuntimeError), state.tx() as conn:
        state.advance_clip_in(conn, c, "discovered", "copied", {"sha256": "cd" * 32})
        raise RuntimeError("killed mid-transaction")
    row = state.clip(c)
    assert row["state"] == "discovered" and row["sha256"] is None


def test_error_is_recorded_and_cleared_by_next_transition(state):
    c = _clip(state, _docking(state))
    state.clip_error(c, "EIO")
    assert state.clip(c)["error"] == "EIO" and state.clip(c)["attempts"] == 1
    state.advance_clip(c, "discovered", "copied")
    assert state.clip(c)["error"] is None


def test_audit_chain_detects_tampering(state):
    for i in range(3):
        state.audit("test", f"thing/{i}", {"i": i})
    assert state.verify_audit_chain() == []
    state.conn.execute("UPDATE audit SET detail = '{\"i\": 9}' WHERE id = 2")
    problems = state.verify_audit_chain()
    assert problems and "audit entry 2" in problems[0]


def test_naive_datetimes_rejected(state):
    from dockd.store import iso

    with pytest.raises(ValueError):
        iso(datetime(2026, 1, 1))
    assert iso(datetime(2026, 1, 1, tzinfo=UTC)).startswith("2026-01-01T00:00:00")


def test_retry_delay_grows_and_is_capped():
    import random

    rng = random.Random(1)
    delays = [retry_delay(n, 10, cap_s=100, rng=rng) for n in range(1, 8)]
    assert 5 <= delays[0] <= 10
    assert all(d <= 100 for d in delays)
    assert delays[3] >= 40  # 10 * 2**3 = 80 -> [40, 80]
