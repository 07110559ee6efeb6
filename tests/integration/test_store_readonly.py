"""The read-only store: opens the daemon's database without changing it (no migration, no
write possible), refuses other schema versions clearly, reads while the daemon writes."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlite_utils

from dockd.config import for_workdir
from dockd.errors import StateError
from dockd.status.views import status_data
from dockd.status.web_data import api_ports, api_queue, api_status, fleet_data
from dockd.store import MIGRATIONS, SCHEMA_VERSION, ReadOnlyState, State, open_readonly, utcnow


def _seed(path: Path) -> None:
    with State(path) as st, st.tx() as conn:
        conn.execute("INSERT INTO recorders (serial, officer_no) VALUES ('A1', '007')")
        cur = conn.execute("INSERT INTO dockings (serial, port, state, docked_at) VALUES "
                           "('A1', 'port-01', 'offloading', '2026-11-23T00:00:00+00:00')")
        conn.execute("INSERT INTO clips (docking_id, serial, rel_path, safe_name, state, size, "
                     "deadline_at) VALUES (?, 'A1', X'41', 'A.MP4', 'copied', 10, "
                     "'2026-11-24T00:00:00+00:00')", (cur.lastrowid,))
        conn.execute("INSERT INTO ports (port, state, serial, docking_id) VALUES "
                     "('port-01', 'copying', 'A1', ?)", (cur.lastrowid,))


def _fingerprint(path: Path) -> tuple[str, int, int]:
    """(content hash, mtime_ns, user_version) of the database file."""
    data = path.read_bytes()
    return (hashlib.sha256(data).hexdigest(), path.stat().st_mtime_ns,
            int.from_bytes(data[60:64], "big"))


def _old_database(path: Path, version: int) -> None:
    """A database as an older dockd left it: the first ``version`` migrations."""
    db = sqlite_utils.Database(path)
    for m in MIGRATIONS[:version]:
        m(db)
    db.execute(f"PRAGMA user_version = {version}")
    db.conn.commit()
    db.close()


def test_reading_never_changes_the_file(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _seed(db)
    before = _fingerprint(db)
    assert before[2] == SCHEMA_VERSION
    cfg = for_workdir(tmp_path / "w")
    with ReadOnlyState(db) as ro:
        now = utcnow()
        data = status_data(ro, "dock-01", now)
        assert data["ports"][0]["serial"] == "A1"
        assert data["clips_by_state"] == {"copied": 1}
        api_status(ro, cfg, now)
        api_ports(ro, cfg, now)
        api_queue(ro, cfg, now)
        fleet_data(ro, cfg, now)
        assert ro.schema_version == SCHEMA_VERSION
    assert _fingerprint(db) == before


def test_writes_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _seed(db)
    before = _fingerprint(db)
    with open_readonly(db) as ro:
        for sql in ("INSERT INTO recorders (serial) VALUES ('B2')",
                    "UPDATE clips SET state = 'cleared'", "DELETE FROM clips",
                    "CREATE TABLE x (a)", "PRAGMA user_version = 99"):
            with pytest.raises(sqlite3.OperationalError):
                ro.query(sql)
        # switching query_only off does not help: the file itself is opened read-only
        ro.conn.execute("PRAGMA query_only = OFF")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.query("DELETE FROM clips")
        assert not hasattr(ro, "tx") and not hasattr(ro, "audit")
    assert _fingerprint(db) == before


def test_older_schema_is_refused_not_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _old_database(db, SCHEMA_VERSION - 1)
    before = _fingerprint(db)
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION - 1} is older"):
        ReadOnlyState(db)
    assert _fingerprint(db) == before
    # a writer (the daemon) migrates it; then the read-only view opens it
    State(db).close()
    with ReadOnlyState(db) as ro:
        assert ro.schema_version == SCHEMA_VERSION


def test_newer_or_foreign_database_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StateError, match="newer than this dockd"):
        ReadOnlyState(newer)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StateError, match="not a dockd state database"):
        ReadOnlyState(empty)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(StateError, match="cannot open the state database read-only"):
        ReadOnlyState(garbage)


def test_missing_database_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "state" / "dockd.db"
    with pytest.raises(StateError, match="no state database"):
        ReadOnlyState(db)
    assert not db.exists() and not db.parent.exists()


def test_reads_a_consistent_snapshot_while_the_daemon_writes(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _seed(db)
    with State(db) as writer, ReadOnlyState(db) as ro:
        entered, release = threading.Event(), threading.Event()

        def long_write() -> None:
            with writer.tx() as conn:
                conn.execute("INSERT INTO recorders (serial) VALUES ('B2')")
                entered.set()
                release.wait(10)

        t = threading.Thread(target=long_write)
        t.start()
        assert entered.wait(10)
        # the writer holds its transaction open: the reader neither blocks nor sees it
        assert [r["serial"] for r in ro.query("SELECT serial FROM recorders")] == ["A1"]
        release.set()
        t.join(10)
        assert sorted(r["serial"] for r in ro.query("SELECT serial FROM recorders")) == [
            "A1", "B2"]
