"""The read-only store: what ``dockd status/queue/report/devices/top``, the web and kiosk
views and the custody read commands open.

:class:`ReadOnlyState` opens the daemon's database file read-only (a ``mode=ro`` URI and
``PRAGMA query_only``): it never migrates, never writes, and reads a consistent snapshot
per query while the daemon writes (WAL). A database of another schema version than this
dockd understands is refused with a clear error instead of being upgraded behind the
daemon's back. :class:`Reader` is what the read functions of the store take: a
:class:`~dockd.store.db.State` (a writer) serves as well.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ..errors import StateError
from .db import SCHEMA_VERSION, Connection, Params, utcnow

BUSY_TIMEOUT_MS = 10_000


class Reader(Protocol):
    """Anything that answers queries: :class:`ReadOnlyState` or a writing ``State``."""

    clock: Callable[[], datetime]

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]: ...

    def query_one(self, sql: str, params: Params = ()) -> dict[str, Any] | None: ...

    def now(self) -> str: ...


class ReadOnlyState(Connection):
    """The state database opened read-only. Thread-safe (one connection, one lock)."""

    def __init__(self, path: Path | str, *, clock: Callable[[], datetime] = utcnow):
        self.path = Path(path)
        self.clock = clock
        if not self.path.is_file():
            raise StateError(f"{path}: no state database (has the daemon or an ingest run yet?)")
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True,
                                   check_same_thread=False, isolation_level=None,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA query_only = ON")
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the state database read-only: {exc}") from exc
        self.conn = conn
        try:
            self._check_version(version)
        except StateError:
            conn.close()
            raise

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: database schema version {version} is newer than this dockd "
                f"understands ({SCHEMA_VERSION}); upgrade dockd")
        if version == 0:
            raise StateError(f"{self.path}: not a dockd state database (schema version 0)")
        if version < SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: database schema version {version} is older than this dockd "
                f"({SCHEMA_VERSION}); a read-only view does not upgrade it: restart the daemon "
                "(or run any writing dockd command) once, then try again")


def open_readonly(path: Path | str, *,
                  clock: Callable[[], datetime] = utcnow) -> ReadOnlyState:
    """Open the state database for a read-only view (status, report, web) from any process."""
    return ReadOnlyState(path, clock=clock)


def require_database(path: Path | str) -> None:
    """A clear error when there is no state database at ``path`` (before a writer opens it,
    which would create an empty one; the writer migrates an older schema itself)."""
    if not Path(path).is_file():
        raise StateError(f"{path}: no state database (has the daemon or an ingest run yet?)")
