"""Stage 1: identify the docked recorder and register its clips.

One transaction records the recorder and opens (or resumes) its docking; a second
registers what the scan found. A clip already handled under the same name and size is
returned as *known*, for the offload stage to confirm by SHA-256 on the recorder.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import tiles
from ..devices.clock import dock_clock_doc
from ..devices.health import clip_stats, fs_check_from_hints, health_row, sample_from_health
from ..ingest.duplicates import note_duplicate_serial, still_docked
from ..ingest.scan import scan_recorder
from ..integrity import checks
from ..integrity.identity import identity_findings, usb_serial_of
from ..lifecycle import deadline_for
from ..model import ClipEntry, Finding
from ..store import clips, decode_row, dockings, dumps, iso

if TYPE_CHECKING:
    from ..pipeline import Pipeline

log = logging.getLogger(__name__)

Known = list[tuple[ClipEntry, dict[str, Any]]]
"""Clips that look already handled: the scan entry and the earlier row (with ``known``:
sha256 -> (clip id, state), and ``known_sha256``)."""


def begin_docking(pipe: Pipeline, port: str, root: Path,
                  hints: Mapping[str, str] | None = None) -> tuple[int, Known]:
    """Identify the recorder at ``root`` and register its clips. Returns the docking id and
    the clips that look already handled (same recorder, path and size)."""
    state, cfg = pipe.state, pipe.cfg
    hints = dict(hints or {})
    now = state.clock()
    driver = pipe.registry.select(root, hints)
    snap = driver.snapshot(root, hints, now=now)
    ident, health = snap.identity, snap.health
    profile = pipe.profile_for(snap)
    log.info("port %s serial %s: recorder docked (officer %s, driver %s, profile %s, "
             "clock offset %s s)", port, ident.serial, ident.officer_no, snap.driver,
             profile.name, health.clock_offset_s)
    state.set_port(port, state="identifying", serial=ident.serial, error=None,
                   message="identifying recorder")
    snapshot_doc = checks.snapshot_doc(snap)
    snapshot_doc["usb_serial"] = usb_serial_of(hints)
    twins = {r["id"] for r in dockings.offloading_elsewhere(state, ident.serial, port)
             if still_docked(pipe.registry, r["root"], ident.serial, root, now)}
    with state.tx() as conn:
        dockings.seen_recorder(conn, ident, health, port=port, now=iso(now) or "")
        docking_id = None
        for row in dockings.offloading_of_in(conn, ident.serial):
            if row["port"] == port and docking_id is None:
                docking_id = row["id"]  # same recorder, same port: the daemon restarted
            elif row["id"] in twins:
                continue  # another recorder with the same serial, still docked
            else:
                dockings.advance_in(conn, row["id"], "offloading", "interrupted",
                                    {"undocked_at": iso(now)})
        if docking_id is None:
            docking_id = dockings.insert(
                conn, serial=ident.serial, port=port, dock_id=cfg.dock.id, root=str(root),
                docked_at=iso(now) or "",
                deadline_at=iso(deadline_for(now, cfg.delivery.deadline_hours)),
                driver=snap.driver, profile=profile.name, snapshot=snapshot_doc,
                clock_offset_s=health.clock_offset_s, dock_clock=dock_clock_doc(cfg.health))
            state.audit("docked", f"docking/{docking_id}",
                        {"port": port, "serial": ident.serial,
                         "clock_offset_s": health.clock_offset_s}, conn=conn)
            tiles.resolve_by_redock(conn, ident.serial, docking_id)
            dockings.close_earlier(conn, ident.serial, docking_id, iso(now) or "")
        else:
            dockings.set_root(conn, docking_id, str(root))
            log.info("port %s serial %s: resuming docking %d", port, ident.serial, docking_id)
    scan = scan_recorder(root, profile)
    if hints.get("DOCKD_FILE_TIMES") == "unreliable":  # e.g. fusefat: dates a month off
        scan = replace(scan, entries=[replace(e, mtime=0.0) for e in scan.entries])
    fs_check, fs_detail = fs_check_from_hints(hints)
    count, oldest = clip_stats((e.mtime for e in scan.entries), now, health.clock_offset_s)
    sample = sample_from_health(health, serial=ident.serial, ts=now, docking_id=docking_id,
                                clip_count=count, oldest_clip_age_s=oldest,
                                fs_check=fs_check, fs_detail=fs_detail)
    with state.tx() as conn:
        dockings.health_sample(conn, health_row(sample))
    id_findings = identity_findings_of(pipe, docking_id, ident.serial, hints)
    known = register_clips(pipe, docking_id, ident.serial, scan.entries,
                           [*snap.findings, *scan.findings, *id_findings])
    if twins:
        both = [(r["id"], r["port"]) for r in dockings.offloading_of(state, ident.serial)
                if r["id"] in twins or r["id"] == docking_id]
        note_duplicate_serial(state, ident.serial, both,
                              alert_command=cfg.delivery.alert_command)
    return docking_id, known


def identity_findings_of(pipe: Pipeline, docking_id: int, serial: str,
                         hints: Mapping[str, str]) -> list[Finding]:
    """USB serial vs device-info serial, the recorder's history and the allow-list."""
    usb = usb_serial_of(hints)
    if usb is None:
        return []
    found = identity_findings(
        serial, usb, usb_serials_before=dockings.usb_serials_before(pipe.state, serial,
                                                                    docking_id),
        info_serials_before=dockings.info_serials_before(pipe.state, usb, docking_id),
        hints=hints, allow=pipe.cfg.allow)
    for f in found:
        log.warning("serial %s: %s", serial, f.message)
    return found


def register_clips(pipe: Pipeline, docking_id: int, serial: str, entries: Sequence[ClipEntry],
                   scan_findings: Sequence[Finding]) -> Known:
    """Register the scanned clips in the docking; returns the known ones (see module)."""
    known: Known = []
    state = pipe.state
    now = state.now()
    with state.tx() as conn:
        docking = dockings.get_in(conn, docking_id)
        dockings.set_findings(conn, docking_id, [f.as_dict() for f in scan_findings])
        for e in entries:
            same_path = clips.same_name(conn, serial, e.rel_path)
            rows = [r for r in same_path if r["size"] == e.size]
            mine = [r for r in same_path if r["docking_id"] == docking_id
                    and (r["size"] == e.size or r["state"] == "discovered")]
            if mine:
                if mine[0]["state"] == "discovered" and mine[0]["size"] != e.size:
                    # still being written when first seen: copy what is there now
                    clips.regrown(conn, mine[0]["id"], e.size, e.mtime, now)
                continue  # already registered in this docking (resumed)
            # A clip still waiting in another *active* docking belongs to another recorder
            # reporting the same serial: never take it over (its identity is its content,
            # unknown until copied); only an ended docking hands over — whatever its size
            # now (a file that grew since must not leave an orphan).
            pending = [r for r in same_path if r["state"] == "discovered"
                       and r["docking_state"] != "offloading"]
            handled = [r for r in rows if r["state"] != "discovered"]
            if pending:
                # Left uncopied by an earlier docking that was interrupted: continue it
                # here, keeping the deadline of the docking that first saw it (R3).
                clips.take_over(conn, pending[0]["id"], docking_id, e, now)
                continue
            if handled:
                prior = decode_row(dict(handled[0]))
                # every copy under this name and size is a candidate: two recorders
                # reporting one serial each have their own (identity is the content)
                prior["known_sha256"] = [r["sha256"] for r in handled]
                # sha256 -> (clip id, state), a delivered copy winning over one that is
                # not delivered yet
                prior["known"] = {r["sha256"]: (r["id"], r["state"]) for r in sorted(
                    handled, key=lambda r: r["state"] in ("delivered", "cleared"))}
                known.append((e, prior))
                continue
            insert_clip(pipe, conn, docking_id, serial, e, docking["deadline_at"], now)
        dockings.recount(conn, docking_id)
    return known


def insert_clip(pipe: Pipeline, conn: sqlite3.Connection, docking_id: int, serial: str,
                e: ClipEntry, deadline: str | None, now: str,
                extra_findings: Sequence[Finding] = ()) -> int:
    """A newly seen clip, ``discovered``, with the findings of its scan entry."""
    findings = [f.as_dict() for f in (*e.findings, *extra_findings)]
    return clips.insert(conn, docking_id=docking_id, serial=serial, entry=e,
                        findings_json=dumps(findings), deadline=deadline, now=now,
                        retention_class=pipe.cfg.retention.default_class)
