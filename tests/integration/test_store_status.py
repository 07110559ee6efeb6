"""The status views' store functions: right answers, and at fleet scale no full scan of the
big tables (clips, deliveries, audit, transfers, alerts, health) and no query per port or
recorder."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dockd.config import Config, load
from dockd.status import web_data
from dockd.status.views import status_data
from dockd.store import ReadOnlyState, State
from dockd.store import fleet as store_fleet
from dockd.store import status as store
from dockd.store.db import FLEET_INDEXES

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("status_fleet", ROOT / "bench" /
                                                  "status_fleet.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["status_fleet"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fleet_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A small dock built by the fleet benchmark's own builder (same shapes, fewer rows)."""
    bench = _bench()
    work = tmp_path_factory.mktemp("fleet")
    (work / "config.toml").write_text(bench.config_toml(work), encoding="utf-8")
    cfg = load(work / "config.toml", workdir=work)
    bench.build(cfg.paths.database, ports=6, clips=2500)
    return cfg.paths.database, cfg


class Recording(ReadOnlyState):
    """A read-only store that keeps every statement it ran."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.sql: list[tuple[str, Any]] = []

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        self.sql.append((sql, params))
        return super().query(sql, params)


BIG = {"clips", "deliveries", "audit", "transfers", "alerts", "recorder_health", "gaps"}
PARTIAL = {name for name, spec in FLEET_INDEXES if " WHERE " in spec}


def _full_scans(ro: Recording) -> list[str]:
    """Plan lines that read a big table whole (a scan not limited to a partial index)."""
    bad = []
    aliases: dict[str, str] = {}
    for sql, params in ro.sql:
        if re.fullmatch(r"SELECT count\(\*\) AS n FROM clips", sql.strip()):
            continue  # counted from the b-tree's pages (no row is read)
        for m in re.finditer(r"\b(FROM|JOIN)\s+(\w+)(?:\s+(?!ON|WHERE|JOIN|LEFT|ORDER|GROUP)"
                             r"(\w+))?", sql):
            aliases[m.group(3) or m.group(2)] = m.group(2)
        for row in ro.conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall():
            detail = row[3]
            m = re.match(r"SCAN (\w+)", detail)
            if not m:
                continue
            table = aliases.get(m.group(1), m.group(1))
            if table in BIG and not any(f"INDEX {p}" in detail for p in PARTIAL):
                bad.append(f"{detail}  <- {sql[:90]}")
    return bad


def test_fleet_views_scan_no_big_table(fleet_db: tuple[Path, Config]) -> None:
    db, cfg = fleet_db
    now = datetime.now(UTC)
    with Recording(db) as ro:
        status_data(ro, cfg.dock.id, now)
        web_data.api_status(ro, cfg, now)
        web_data.api_ports(ro, cfg, now)
        web_data.api_queue(ro, cfg, now)
        web_data.fleet_data(ro, cfg, now)
        assert _full_scans(ro) == []


def test_query_count_does_not_grow_with_ports_or_recorders(
        fleet_db: tuple[Path, Config]) -> None:
    db, cfg = fleet_db
    now = datetime.now(UTC)
    with Recording(db) as ro:
        n_ports = len(store.ports_with_recorders(ro))
        n_recorders = len(store_fleet.recorders(ro))
        assert n_ports >= 6 and n_recorders >= 40
        ro.sql.clear()
        status_data(ro, cfg.dock.id, now)
        assert len(ro.sql) < 12  # a constant: not one query per port
        ro.sql.clear()
        web_data.fleet_data(ro, cfg, now)
        assert len(ro.sql) < 15  # not one (or five) per recorder


def test_clip_counts_match_a_plain_group_by(fleet_db: tuple[Path, Config]) -> None:
    db, _ = fleet_db
    with ReadOnlyState(db) as ro:
        plain = {r["state"]: r["n"] for r in ro.query(
            "SELECT state, count(*) AS n FROM clips GROUP BY state")}
        assert store.clip_counts_by_state(ro) == plain
        assert plain.get("cleared") and plain.get("delivered")


def _docking(conn: Any, serial: str = "A1", **cols: Any) -> int:
    conn.execute("INSERT OR IGNORE INTO recorders (serial) VALUES (?)", (serial,))
    names = ["serial", "port", "state", "docked_at", *cols]
    cur = conn.execute(f"INSERT INTO dockings ({', '.join(names)}) VALUES "
                       f"({', '.join('?' * len(names))})",
                       (serial, "port-01", "offloaded", "2026-11-23T00:00:00+00:00",
                        *cols.values()))
    return int(cur.lastrowid)


def _clips(conn: Any, docking: int, states: list[str], serial: str = "A1") -> list[int]:
    ids = []
    for i, st in enumerate(states):
        cur = conn.execute("INSERT INTO clips (docking_id, serial, rel_path, safe_name, state, "
                           "size, deadline_at) VALUES (?, ?, ?, ?, ?, 100, ?)",
                           (docking, serial, f"d{docking}/{i}".encode(), f"{i}.MP4", st,
                            f"2026-11-2{4 + i % 3}T00:00:00+00:00"))
        ids.append(int(cur.lastrowid))
    return ids


def test_delivered_counts_own_earlier_and_known(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as st:
        with st.tx() as conn:
            d1 = _docking(conn)
            old = _clips(conn, d1, ["delivered", "signed", "cleared"])
            d2 = _docking(conn, skipped_known=4)
            own = _clips(conn, d2, ["delivered", "copied"])
            # earlier clips it found again; one listed twice, one of its own, one gone
            conn.execute("UPDATE dockings SET earlier_pending = ? WHERE id = ?",
                         (json.dumps([old[0], old[1], old[1], own[0], 99999]), d2))
            d3 = _docking(conn, earlier_pending="not json")
            _clips(conn, d3, ["checked"])
            d4 = _docking(conn)  # no clips at all
        counts = store.delivered_counts(st, [d1, d2, d3, d4, d2])
        assert counts[d1] == (2, 3)
        # own 1/2, earlier 1/2 (old[0] delivered, old[1] signed), known 4/4
        assert counts[d2] == (1 + 1 + 4, 2 + 2 + 4)
        assert counts[d3] == (0, 1)
        assert counts[d4] == (0, 0)
        assert store.delivered_counts(st, []) == {}


def test_backlog_and_pending_leave_out_delivered_clips(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as st:
        with st.tx() as conn:
            d1 = _docking(conn)
            c = _clips(conn, d1, ["delivered", "cleared", "signed", "checked", "discovered"])
            d2 = _docking(conn, serial="B2")
            _clips(conn, d2, ["cleared", "delivered"], serial="B2")
            conn.execute("INSERT INTO deliveries (clip_id, target, state, last_error, attempts) "
                         "VALUES (?, 'primary', 'delivered', NULL, 1), "
                         "(?, 'primary', 'failed', 'disk full', 3), "
                         "(?, 'primary', 'pending', 'reset', 1), "
                         "(?, 'primary', 'delivered', 'old error', 2)", (c[2], c[3], c[4], c[0]))
        backlog = store.backlog_by_docking(st)
        assert [(b["docking_id"], b["clips"], b["bytes"]) for b in backlog] == [(d1, 3, 300)]
        assert sorted(backlog[0]["states"].split(",")) == ["checked", "discovered", "signed"]
        pending = store.pending_on_target(st, "primary")
        assert [(p["id"], p["n"], p["failed"]) for p in pending] == [(d1, 2, 1)]
        errors = store.delivery_errors(st)
        assert [(e["clip_id"], e["state"]) for e in errors] == [(c[3], "failed"),
                                                                (c[4], "pending")]
        assert store_fleet.pending_by_serial(st) == {"A1": 3}
        assert Counter(store.clip_counts_by_state(st)) == Counter(
            {"delivered": 2, "cleared": 2, "signed": 1, "checked": 1, "discovered": 1})


def test_current_health_is_the_newest_docking_s_readings(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as st:
        with st.tx() as conn:
            d1 = _docking(conn)
            d2 = _docking(conn)
            rows = [("2026-11-20T00:00:00+00:00", "A1", d1, 90),
                    ("2026-11-22T00:00:00+00:00", "A1", d2, 40),
                    ("2026-11-22T01:00:00+00:00", "A1", d2, 60),
                    ("2026-11-21T00:00:00+00:00", "A1", d1, 80),
                    ("2026-11-22T00:00:00+00:00", "C3", None, 10)]
            conn.execute("INSERT INTO recorders (serial) VALUES ('C3'), ('D4')")
            for ts, serial, dk, battery in rows:
                conn.execute("INSERT INTO recorder_health (ts, serial, docking_id, battery) "
                             "VALUES (?, ?, ?, ?)", (ts, serial, dk, battery))
        cur = store_fleet.current_health_by_serial(st)
        assert [h["battery"] for h in cur["A1"]] == [40, 60]
        assert [h["battery"] for h in cur["C3"]] == [10]
        assert "D4" not in cur
