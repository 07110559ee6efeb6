"""Alerts (R3): one open alert per (kind, subject) until resolved; escalation closes the
lower level and opens the higher one."""

from __future__ import annotations

import sqlite3
from typing import cast

from .readonly import Reader
from .rows import AlertRow


def open_alert(conn: sqlite3.Connection, kind: str, subject: str) -> AlertRow | None:
    """The open alert for (kind, subject), inside the caller's transaction."""
    row = conn.execute("SELECT * FROM alerts WHERE kind = ? AND subject = ? AND "
                       "resolved_at IS NULL ORDER BY id DESC LIMIT 1",
                       (kind, subject)).fetchone()
    return cast(AlertRow, dict(row)) if row is not None else None


def insert_alert(conn: sqlite3.Connection, *, ts: str, level: str, kind: str, subject: str,
                 message: str) -> int:
    """A new open alert; its id."""
    cur = conn.execute("INSERT INTO alerts (ts, level, kind, subject, message) VALUES "
                       "(?, ?, ?, ?, ?)", (ts, level, kind, subject, message))
    return int(cur.lastrowid or 0)


def resolve_alert_id(conn: sqlite3.Connection, alert_id: int, now: str) -> None:
    conn.execute("UPDATE alerts SET resolved_at = ? WHERE id = ?", (now, alert_id))


def resolve(conn: sqlite3.Connection, kind: str, subject: str, now: str) -> int:
    """Resolve the open alerts for (kind, subject); how many."""
    cur = conn.execute("UPDATE alerts SET resolved_at = ? WHERE kind = ? AND subject = ? "
                       "AND resolved_at IS NULL", (now, kind, subject))
    return cur.rowcount


def set_hook_status(conn: sqlite3.Connection, alert_id: int, status: str) -> None:
    conn.execute("UPDATE alerts SET hook_status = ? WHERE id = ?", (status, alert_id))


def open_alerts(r: Reader) -> list[AlertRow]:
    """Every open alert, alarms first, then oldest first."""
    return cast(list[AlertRow], r.query("SELECT * FROM alerts WHERE resolved_at IS NULL "
                                        "ORDER BY level = 'alarm' DESC, ts"))


def open_subjects(r: Reader, kind: str) -> list[str]:
    """Subjects of the open alerts of one kind."""
    return [row["subject"] for row in r.query(
        "SELECT subject FROM alerts WHERE kind = ? AND resolved_at IS NULL", (kind,))]


def open_kinds(conn: sqlite3.Connection, subject: str, kinds: tuple[str, ...]) -> set[str]:
    """Which of ``kinds`` have an open alert on ``subject``, inside the caller's transaction
    (read through the partial index of open alerts: as cheap as the open set is small)."""
    marks = ", ".join("?" for _ in kinds)
    return {r[0] for r in conn.execute(
        f"SELECT DISTINCT kind FROM alerts WHERE resolved_at IS NULL AND subject = ? AND "
        f"kind IN ({marks})", (subject, *kinds))}
