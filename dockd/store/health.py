"""Recorder health readings (R9): one ``recorder_health`` row per reading.

The reads for the views are in :mod:`dockd.store.fleet`; this module stores readings.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

HEALTH_COLUMNS = ("ts", "serial", "docking_id", "source", "battery", "storage_total",
                  "storage_free", "clip_count", "oldest_clip_age_s", "fs_check", "fs_detail",
                  "firmware", "clock_offset_s")
"""The ``recorder_health`` columns a reading fills (besides the ``id`` key)."""

HEALTH_INSERT_SQL = (f"INSERT INTO recorder_health ({', '.join(HEALTH_COLUMNS)}) "
                     f"VALUES ({', '.join(':' + c for c in HEALTH_COLUMNS)})")
"""Insert one reading (named parameters: :data:`HEALTH_COLUMNS`)."""


def insert_health(conn: sqlite3.Connection, row: Mapping[str, Any]) -> int:
    """Store one reading (``dockd.devices.health.health_row``) in the caller's
    transaction; its id."""
    missing = [c for c in HEALTH_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"health reading lacks {', '.join(missing)}")
    cur = conn.execute(HEALTH_INSERT_SQL, {c: row[c] for c in HEALTH_COLUMNS})
    return int(cur.lastrowid or 0)
