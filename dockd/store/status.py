"""Reads behind the status views: ports, backlog, delivery errors, incomplete copies, the
queue forecast's inputs, open alerts and the metrics' aggregates.

Written for a dock with years of history (100 000 clips and more): every query is served
by an index (the fleet-status migration in :mod:`dockd.store.db` adds those that were
missing), the undelivered clips are selected by their states (``state IN``, an index
range) rather than by excluding the delivered ones (a full scan), and what is needed per
port or per target is read in one query for all of them, not one query each.
"""

from __future__ import annotations

import json
from typing import Any, cast

from .readonly import Reader
from .rows import (
    AlertBriefRow,
    BacklogRow,
    DeliveryErrorRow,
    IncompleteRow,
    PendingRow,
    PortViewRow,
)

# clip states before ``delivered`` (dockd.lifecycle.CLIP_STATES); a clip in one of these is
# still to be delivered
PENDING_STATES = ("discovered", "copied", "probed", "checked", "signed")
DONE_STATES = ("delivered", "cleared")
PENDING_SQL = "(" + ", ".join(f"'{s}'" for s in PENDING_STATES) + ")"

# a docking listed as incomplete: closed with clips left, not re-docked, not acknowledged
OPEN_INCOMPLETE_SQL = ("incomplete > 0 AND resolved_by IS NULL AND acked_at IS NULL AND "
                       "state != 'offloading'")


def earlier_pending(value: Any) -> list[int]:
    """The clip ids in a docking's ``earlier_pending`` column (bad JSON: none)."""
    try:
        ids = json.loads(value) if value else []
    except ValueError:
        return []
    return [int(i) for i in ids if isinstance(i, int)] if isinstance(ids, list) else []


# --------------------------------------------------------------------------- ports


def ports_with_recorders(r: Reader) -> list[PortViewRow]:
    """Every port with the officer and battery of the recorder on it."""
    return cast(list[PortViewRow], r.query(
        "SELECT p.*, r.officer_no, r.officer_name, r.unit_name, r.last_battery "
        "FROM ports p LEFT JOIN recorders r ON r.serial = p.serial ORDER BY p.port"))


def delivered_counts(r: Reader, docking_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Per docking: (clips verified on the targets, clips it stands for), counting its own
    clips, those an earlier docking copied that it found again (``earlier_pending``) and
    those verified before it (``skipped_known``). Three queries for any number of dockings."""
    if not docking_ids:
        return {}
    ids = json.dumps(sorted(set(docking_ids)))
    docks = r.query("SELECT id, earlier_pending, skipped_known FROM dockings "
                    "WHERE id IN (SELECT value FROM json_each(?))", (ids,))
    own = {row["docking_id"]: (row["done"] or 0, row["total"]) for row in r.query(
        "SELECT docking_id, count(*) AS total, "
        "sum(state IN ('delivered', 'cleared')) AS done FROM clips "
        "WHERE docking_id IN (SELECT value FROM json_each(?)) GROUP BY docking_id", (ids,))}
    earlier = {d["id"]: earlier_pending(d["earlier_pending"]) for d in docks}
    wanted = sorted({c for cs in earlier.values() for c in cs})
    found = {row["id"]: (row["docking_id"], row["state"]) for row in r.query(
        "SELECT id, docking_id, state FROM clips WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(wanted),))} if wanted else {}
    out: dict[int, tuple[int, int]] = {}
    for d in docks:
        done, total = own.get(d["id"], (0, 0))
        for cid in set(earlier[d["id"]]):
            hit = found.get(cid)
            if hit is None or hit[0] == d["id"]:
                continue  # gone, or one of its own (counted above)
            total += 1
            done += hit[1] in DONE_STATES
        known = d["skipped_known"] or 0
        out[d["id"]] = (done + known, total + known)
    return out


# --------------------------------------------------------------------------- clips


def clip_counts_by_state(r: Reader) -> dict[str, int]:
    """How many clips are in each state (states with none left out).

    ``cleared`` grows with the dock's whole history, so its rows are not counted one by one:
    it is the total (SQLite counts a table's rows from its b-tree pages) less the other
    states, which two range scans of the state index count (below and above ``cleared``)."""
    counts: dict[str, int] = {}
    for where in ("state < 'cleared'", "state > 'cleared'"):
        for row in r.query(f"SELECT state, count(*) AS n FROM clips WHERE {where} "
                           "GROUP BY state"):
            counts[row["state"]] = row["n"]
    total = r.query_one("SELECT count(*) AS n FROM clips")
    cleared = (total["n"] if total else 0) - sum(counts.values())
    if cleared:
        counts["cleared"] = cleared
    return dict(sorted(counts.items()))


def clips_in_state(r: Reader, docking_id: int, state: str) -> int:
    """How many clips of a docking are in ``state``."""
    row = r.query_one("SELECT count(*) AS n FROM clips WHERE docking_id = ? AND state = ?",
                      (docking_id, state))
    return int(row["n"]) if row else 0


def backlog_by_docking(r: Reader) -> list[BacklogRow]:
    """Each docking with undelivered clips: how many, how big, their states, the deadline."""
    return cast(list[BacklogRow], r.query(
        "SELECT c.docking_id, d.serial, d.port, d.docked_at, min(c.deadline_at) AS deadline_at, "
        "count(*) AS clips, sum(c.size) AS bytes, group_concat(DISTINCT c.state) AS states "
        f"FROM clips c JOIN dockings d ON d.id = c.docking_id WHERE c.state IN {PENDING_SQL} "
        "GROUP BY c.docking_id ORDER BY deadline_at, c.docking_id"))


def delivery_errors(r: Reader) -> list[DeliveryErrorRow]:
    """Deliveries that failed at least once and are not delivered (retrying or failed)."""
    return cast(list[DeliveryErrorRow], r.query(
        "SELECT clip_id, target, attempts, last_error, state, next_try_at FROM deliveries "
        "WHERE last_error IS NOT NULL AND state != 'delivered' ORDER BY clip_id, target"))


def open_incomplete(r: Reader) -> list[IncompleteRow]:
    """Dockings closed with clips left on the recorder, not re-docked, not acknowledged."""
    where = ("d.incomplete > 0 AND d.resolved_by IS NULL AND d.acked_at IS NULL AND "
             "d.state != 'offloading'")  # OPEN_INCOMPLETE_SQL, qualified
    return cast(list[IncompleteRow], r.query(
        "SELECT d.id, d.serial, d.port, d.docked_at, d.undocked_at, d.incomplete, "
        "d.clips_total, d.error, r.officer_no, r.officer_name FROM dockings d LEFT JOIN "
        f"recorders r ON r.serial = d.serial WHERE {where} ORDER BY d.id"))


# --------------------------------------------------------------------------- queue


def recent_transfers(r: Reader, target: str, limit: int) -> list[tuple[int, float]]:
    """(bytes, seconds) of the newest ``limit`` transfers to ``target``."""
    return [(row["bytes"], row["seconds"]) for row in r.query(
        "SELECT bytes, seconds FROM transfers WHERE target = ? ORDER BY id DESC LIMIT ?",
        (target, limit))]


def pending_on_target(r: Reader, target: str) -> list[PendingRow]:
    """Each docking's clips not yet verified on ``target`` (clips not signed yet count too:
    they will have to be delivered)."""
    return cast(list[PendingRow], r.query(
        "SELECT d.id, d.serial, d.port, d.docked_at, min(c.deadline_at) AS deadline, "
        "count(c.id) AS n, coalesce(sum(c.size), 0) AS b, "
        "sum(CASE WHEN dl.state = 'failed' THEN 1 ELSE 0 END) AS failed "
        "FROM clips c JOIN dockings d ON d.id = c.docking_id "
        "LEFT JOIN deliveries dl ON dl.clip_id = c.id AND dl.target = ? "
        f"WHERE c.state IN {PENDING_SQL} "
        "AND (dl.state IS NULL OR dl.state != 'delivered') "
        "GROUP BY d.id", (target,)))


def open_alerts_by_time(r: Reader) -> list[AlertBriefRow]:
    """The open alerts, oldest first (what the queue view lists)."""
    return cast(list[AlertBriefRow], r.query(
        "SELECT ts, level, kind, subject, message FROM alerts WHERE resolved_at IS NULL "
        "ORDER BY ts"))


# --------------------------------------------------------------------------- metrics


def transfer_totals(r: Reader) -> list[tuple[str, int, float]]:
    """(target, bytes, seconds) delivered over the dock's life."""
    return [(row["target"], row["b"], row["s"]) for row in r.query(
        "SELECT target, coalesce(sum(bytes), 0) AS b, coalesce(sum(seconds), 0) AS s "
        "FROM transfers GROUP BY target")]


def open_alert_counts(r: Reader) -> list[tuple[str, str, int]]:
    """(level, kind, how many) of the open alerts."""
    return [(row["level"], row["kind"], row["n"]) for row in r.query(
        "SELECT level, kind, count(*) AS n FROM alerts WHERE resolved_at IS NULL "
        "GROUP BY level, kind")]
