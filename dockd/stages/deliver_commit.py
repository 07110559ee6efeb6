"""Group commit for landed copies: the lanes of every target record what landed in shared
write transactions (#13: a 20 000-clip recorder lands hundreds of clips a second, and each
transaction is an fsync of the WAL, all serialised on the state's one lock).

A lane hands its record over (:meth:`GroupCommit.run`, a function of the connection) and
waits until the transaction holding it has committed, so nothing looks delivered before it
durably is, and whatever the lane does after the record (remove the staged copy, log) comes
after the commit. Whoever finds no transaction under way commits at once, alone: an idle
dock waits for nothing. Records arriving while one commits are committed together by one of
them next (the first in line leads, then hands over), so under load one fsync covers as many
landings as arrived meanwhile.

Each record runs in its own savepoint: one that raises is undone alone and its error goes to
its own lane; the others commit. A failure of the transaction itself (the database) goes to
every record in it, and nothing of it is applied.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from ..store import State


class _Record:
    __slots__ = ("fn", "result", "error", "finished", "lead", "event")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]):
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False
        self.lead = False
        self.event = threading.Event()


class GroupCommit:
    def __init__(self, state: State):
        self.state = state
        self._lock = threading.Lock()
        self._queue: list[_Record] = []
        self._committing = False
        self.transactions = 0
        """Transactions committed so far (tests and benchmarks)."""
        self.records = 0
        """Records committed so far."""

    def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` inside a write transaction, possibly shared with other lanes'
        records, and return its result once that transaction has committed (or raise what
        ``fn`` raised: then nothing of it is applied)."""
        rec = _Record(fn)
        with self._lock:
            self._queue.append(rec)
            lead = not self._committing
            self._committing = True
        if not lead:
            rec.event.wait()
            if not rec.finished:  # handed the lead: rec is still queued
                lead = True
        if lead:
            self._lead()
        if rec.error is not None:
            raise rec.error
        return rec.result

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        finally:
            for r in batch:
                r.finished = True
                r.event.set()
            with self._lock:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.event.set()
                else:
                    self._committing = False

    def _commit(self, batch: list[_Record]) -> None:
        try:
            with self.state.tx() as conn:
                for r in batch:
                    conn.execute("SAVEPOINT landed")
                    try:
                        r.result = r.fn(conn)
                    except Exception as exc:  # this record alone is undone
                        conn.execute("ROLLBACK TO landed")
                        r.error = exc
                    conn.execute("RELEASE landed")
        except BaseException as exc:  # the transaction failed: nothing of it was applied
            for r in batch:  # each lane raises it (a simulated crash ends them all)
                if r.error is None:
                    r.error = exc
                    r.result = None
            return
        self.transactions += 1
        self.records += len(batch)
