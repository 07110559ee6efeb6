"""The delivery lanes' group commit (``dockd.stages.deliver_commit``): records arriving
while one transaction commits share the next one; each returns only once its transaction
committed (another connection sees it); one record that raises is undone alone."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from dockd.stages.deliver_commit import GroupCommit
from dockd.store import State

pytestmark = [pytest.mark.timeout(60)]


def _state(tmp_path: Path) -> State:
    st = State(tmp_path / "state.db")
    with st.tx() as conn:
        conn.execute("CREATE TABLE landed (n INTEGER PRIMARY KEY)")
    return st


def _seen(tmp_path: Path) -> set[int]:
    other = sqlite3.connect(tmp_path / "state.db")
    try:
        return {r[0] for r in other.execute("SELECT n FROM landed")}
    finally:
        other.close()


def test_records_arriving_during_a_commit_share_the_next_transaction(tmp_path):
    st = _state(tmp_path)
    group = GroupCommit(st)
    release = threading.Event()
    results: dict[int, object] = {}

    def first(conn):
        conn.execute("INSERT INTO landed VALUES (0)")
        release.wait(10)  # the others queue up meanwhile
        return "first"

    def insert(n):
        def fn(conn):
            conn.execute("INSERT INTO landed VALUES (?)", (n,))
            return n
        return fn

    lanes = [threading.Thread(target=lambda: results.__setitem__(0, group.run(first)))]
    lanes[0].start()
    while not group._committing:
        time.sleep(0.001)
    for n in range(1, 6):
        t = threading.Thread(target=lambda n=n: results.__setitem__(n, group.run(insert(n))))
        t.start()
        lanes.append(t)
    while len(group._queue) < 5:
        time.sleep(0.001)
    release.set()
    for t in lanes:
        t.join(10)
    assert results == {0: "first", 1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
    assert (group.transactions, group.records) == (2, 6)
    assert _seen(tmp_path) == {0, 1, 2, 3, 4, 5}
    # an idle group commits a lone record at once, and it is durable when run returns
    assert group.run(insert(9)) == 9
    assert 9 in _seen(tmp_path)
    assert group.transactions == 3
    st.close()


def test_a_record_that_raises_is_undone_alone(tmp_path):
    st = _state(tmp_path)
    group = GroupCommit(st)
    release = threading.Event()
    outcome: dict[str, object] = {}

    def slow(conn):
        conn.execute("INSERT INTO landed VALUES (1)")
        release.wait(10)

    def bad(conn):
        conn.execute("INSERT INTO landed VALUES (2)")
        raise ValueError("no such clip")

    def good(conn):
        conn.execute("INSERT INTO landed VALUES (3)")

    def run(name, fn):
        try:
            group.run(fn)
            outcome[name] = "ok"
        except ValueError as exc:
            outcome[name] = str(exc)

    t1 = threading.Thread(target=run, args=("slow", slow))
    t1.start()
    while not group._committing:
        time.sleep(0.001)
    t2 = threading.Thread(target=run, args=("bad", bad))
    t3 = threading.Thread(target=run, args=("good", good))
    t2.start()
    while len(group._queue) < 1:
        time.sleep(0.001)
    t3.start()
    while len(group._queue) < 2:
        time.sleep(0.001)
    release.set()
    for t in (t1, t2, t3):
        t.join(10)
    assert outcome == {"slow": "ok", "bad": "no such clip", "good": "ok"}
    assert _seen(tmp_path) == {1, 3}
    st.close()


def test_a_failed_transaction_fails_every_record_in_it(tmp_path):
    st = _state(tmp_path)
    group = GroupCommit(st)

    class Crash(BaseException):
        pass

    def crash(conn):
        conn.execute("INSERT INTO landed VALUES (7)")
        raise Crash()

    with pytest.raises(Crash):
        group.run(crash)
    assert _seen(tmp_path) == set()
    assert not group._committing  # the next record is not stuck behind it
    group.run(lambda conn: conn.execute("INSERT INTO landed VALUES (8)"))
    assert _seen(tmp_path) == {8}
    st.close()
