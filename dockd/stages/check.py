"""Stage 3: probe and check the copied clips (in batches, as they arrive), then the
docking's continuity and spoken interruption notes (R1, R2) once its offload ended.

Both run in the finisher (:mod:`dockd.stages.finisher`), which owns the docking while it
does; neither reads the recorder (the staged copy, or the recorder only when the copy was
delivered ahead and left staging).
"""

from __future__ import annotations

import json
import logging
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ProbeError
from ..ingest.probe_pool import groups_of, probe_in_order
from ..integrity import checks
from ..integrity.continuity import ClipTiming, ContinuityParams, build_timeline
from ..integrity.notes import NoteResult, gap_finding
from ..integrity.span import attributed, recorder_clips
from ..model import Finding, ProbeResult
from ..store import clips, dockings, dumps, iso, parse_iso
from ..store.rows import ClipRow, DockingRow

if TYPE_CHECKING:
    from ..config import ProfileConfig
    from ..pipeline import Pipeline

log = logging.getLogger(__name__)

PROBE_BATCH = 64
"""Clips probed in one request to a long-lived exiftool process."""
TURN = 4
"""Batches per exiftool process probed in one hold of ``pipe.probe_lock``: another
docking's finisher waits for at most this many (a few seconds), not for a whole recorder."""


def _json_list(text: str | None) -> list[Any]:
    value = json.loads(text) if text else []
    return list(value) if isinstance(value, list) else []


def tile(pipe: Pipeline, d: DockingRow, message: str) -> None:
    """The port tile says what the finisher does, once the copy is over (while it copies,
    the tile shows the copy)."""
    if d["state"] == "offloading":
        return
    with pipe.state.tx() as conn:
        dockings.tile(conn, d["port"], d["id"], {"state": "checking", "message": message,
                                                 "updated_at": pipe.state.now()})


def process(pipe: Pipeline, docking_id: int, batch: int = PROBE_BATCH) -> int:
    """Probe every copied clip of the docking (``batch`` at a time) and check it:
    ``copied`` -> ``probed`` -> ``checked``. Returns how many clips became checked.

    Each batch is recorded in one transaction (both edges of every clip, and the port
    tile's progress), in clip order, and ``pipe.on_ready`` is told after each, so delivery
    starts while later batches are probed. With many clips waiting, ``tools.probe_processes``
    exiftool processes probe batches in parallel (:func:`probe_in_order`). A crash loses
    at most the batches not yet recorded: their clips are still ``copied`` and are probed
    again. Stops between batches when dockd stops (``pipe.cancel``), and in a finisher
    thread being stopped (:meth:`Finisher.stop_asked`). Holds the probe lock
    (the exiftool processes) for :data:`TURN` batches per process at a time."""
    state = pipe.state
    d = dockings.get(state, docking_id)
    profile = pipe.profile(d["profile"] or "")
    n = _check_probed(pipe, d)  # left 'probed' by an older dockd (one edge per transaction)
    copied = clips.of_docking(state, docking_id, "copied")
    if not copied:
        return n
    tile(pipe, d, f"checking {copied[0]['safe_name']}" if len(copied) == 1 else
         f"checking {len(copied)} clips")
    processes = pipe.cfg.tools.probe_processes
    groups = groups_of([Path(c["staged_path"] or "") for c in copied], batch, processes)
    rows = iter(copied)
    checked = 0
    for turn in range(0, len(groups), TURN * processes):
        some = groups[turn:turn + TURN * processes]
        with pipe.probe_lock, closing(probe_in_order(pipe.prober, some,
                                                     processes=processes)) as answers:
            for group in some:
                rows_of_group = [next(rows) for _ in group]
                try:
                    results = next(answers)
                except ProbeError as exc:
                    # Tools missing altogether: not the clips' fault, they stay 'copied'
                    # (retried).
                    for c in rows_of_group:
                        clips.failed(state, c["id"], str(exc))
                    log.error("port %s serial %s: cannot probe %s: %s", d["port"],
                              d["serial"], rows_of_group[0]["safe_name"], exc)
                    raise
                checked += _record(pipe, d, profile, rows_of_group, results, done=checked,
                                   of=len(copied))
                pipe.on_ready(docking_id)
                if pipe.cancel.is_set() or pipe.finisher.stop_asked():
                    return n + checked
    return n + checked


def _record(pipe: Pipeline, d: DockingRow, profile: ProfileConfig, group: list[ClipRow],
            results: list[ProbeResult], *, done: int, of: int) -> int:
    """One probed batch: each clip ``copied`` -> ``probed`` -> ``checked`` with its probe,
    times and findings, and the tile's progress, in one transaction."""
    state, port, serial = pipe.state, d["port"], d["serial"]
    moves = []
    for c, probe in zip(group, results, strict=True):
        times = checks.clip_times(c["rel_path"], probe, profile, pipe.cfg.tz,
                                  d["clock_offset_s"], c["mtime"])
        if not probe.ok:
            log.warning("port %s serial %s: %s could not be parsed (%s); kept and flagged",
                        port, serial, c["safe_name"], probe.error)
        probed: dict[str, Any] = {
            "probe": dumps(probe.summary()), "start_recorded": times.start_recorded,
            "start_utc": iso(times.start_utc), "duration_s": times.duration_s,
            "findings": dumps(_json_list(c["findings"]) +
                              [f.as_dict() for f in checks.probe_findings(probe)])}
        moves.append((c["id"], probed, _checked_fields({**c, **probed}, serial, profile)))
    with state.tx() as conn:
        now = state.now()
        for clip_id, probed, checked in moves:
            clips.advance_in(conn, clip_id, "copied", "probed", now, probed)
            clips.advance_in(conn, clip_id, "probed", "checked", now, checked)
        if d["state"] != "offloading" and of > len(group):
            dockings.tile(conn, port, d["id"], {
                "state": "checking", "message": f"checked {done + len(group)} of {of} clips",
                "updated_at": now})
    return len(moves)


def _checked_fields(row: dict[str, Any], serial: str, profile: ProfileConfig
                    ) -> dict[str, Any]:
    """The ``probed`` -> ``checked`` columns: the checks that need the stored clip row."""
    return {"findings": dumps(_json_list(row["findings"]) + [
        f.as_dict() for f in checks.clip_findings(row, serial, profile)])}


def _check_probed(pipe: Pipeline, d: DockingRow) -> int:
    """Clips left ``probed`` (recorded by an older dockd, whose crash came between the
    two edges): checked now, in one transaction."""
    probed = clips.of_docking(pipe.state, d["id"], "probed")
    if not probed:
        return 0
    profile = pipe.profile(d["profile"] or "")
    return clips.advance_many(pipe.state, [
        (c["id"], _checked_fields(dict(c), d["serial"], profile)) for c in probed],
        "probed", "checked")


def analyze_continuity(pipe: Pipeline, docking_id: int) -> dict[str, Any]:
    """Build the docking's timeline, listen to the start of every clip that resumes after an
    interruption, and store one row per gap. Idempotent: done once per docking."""
    state, cfg = pipe.state, pipe.cfg
    d = dockings.get(state, docking_id)
    if d.get("continuity"):
        return dict(json.loads(d["continuity"] or "{}"))
    checked = clips.of_docking(state, docking_id, "checked")
    params = ContinuityParams(cfg.continuity.split_tolerance_s, cfg.continuity.session_break_s)
    # R1/R2 on the recorder's whole timeline: clips of its earlier (judged) dockings take
    # part, and a gap belongs to the docking that completes it
    earlier = recorder_clips(state, d["serial"], docking_id)
    own = {c["id"] for c in checked}
    every: list[dict[str, Any]] = [*map(dict, checked), *earlier]
    timings = [ClipTiming(c["id"], c["safe_name"], parse_iso(c["start_utc"]),  # type: ignore[arg-type]
                          c["duration_s"]) for c in every if c["start_utc"]]
    untimed = [c["safe_name"] for c in checked if not c["start_utc"]]
    timeline = attributed(build_timeline(timings, params), own)
    by_id = {c["id"]: c for c in every}
    rows: list[dict[str, Any]] = []
    findings = list(timeline.findings)
    if untimed:
        findings.append(Finding("untimed_clips", "warning",
                                "clips without a start time are left out of the timeline",
                                {"clips": untimed}).as_dict())
    for gap in timeline.gaps:
        result = listen(pipe, by_id[gap.after_clip], d)
        if result is not None:
            findings.append(gap_finding(gap, result))
        rows.append({
            "docking_id": docking_id, "kind": gap.kind, "before_clip": gap.before_clip,
            "after_clip": gap.after_clip, "start": iso(gap.start), "end": iso(gap.end),
            "length_s": gap.length_s,
            "verdict": result.verdict if result else "not_checked",
            "speech_start_s": result.speech_start_s if result else None,
            "speech_end_s": result.speech_end_s if result else None,
            "transcript": result.transcript if result else "",
            "reason": result.reason if result else None,
            "confidence": result.confidence if result else None,
            "language": result.language if result else None,
            "needs_review": 1 if (result is None or result.needs_review) else 0,
            "error": result.error if result else "",
            "analyzed_at": state.now(),
        })
    for brk in timeline.session_breaks:
        rows.append({"docking_id": docking_id, "kind": brk.kind,
                     "before_clip": brk.before_clip, "after_clip": brk.after_clip,
                     "start": iso(brk.start), "end": iso(brk.end),
                     "length_s": brk.length_s, "needs_review": 0,
                     "analyzed_at": state.now()})
    notes = pipe.notes
    doc: dict[str, Any] = {
        "params": {"split_tolerance_s": params.split_tolerance_s,
                   "session_break_s": params.session_break_s},
        "timeline": timeline.to_dict(), "findings": findings,
        "earlier_clips": sorted(c["id"] for c in earlier),
        "notes": {"model": notes.model_dir.name  # the model in use, if any
                  if notes and notes.model_dir else None,
                  "enabled": cfg.notes.enabled}}
    with state.tx() as conn:
        dockings.continuity(conn, docking_id, rows, doc)
        state.audit("findings", f"docking/{docking_id}",
                    {"kinds": sorted({str(f.get("kind")) for f in findings}),
                     "count": len(findings),
                     "needs_review": sum(r["needs_review"] for r in rows)}, conn=conn)
    unnoted = sum(r["needs_review"] for r in rows if r["kind"] != "session_break")
    log.info("port %s serial %s: docking %d timeline: %d session(s), %d interruption(s), "
             "%d need review", d["port"], d["serial"], docking_id,
             len(timeline.sessions), len(timeline.gaps), unnoted)
    return doc


def listen(pipe: Pipeline, clip: ClipRow | dict[str, Any], docking: DockingRow
           ) -> NoteResult | None:
    """The spoken note at the start of ``clip`` (None without a note analyser)."""
    if pipe.notes is None:
        return None
    tile(pipe, docking, f"listening for a spoken note in {clip['safe_name']}")
    path = str(clip["staged_path"] or "")
    if not Path(path).is_file() and docking.get("root"):
        path = str(Path(docking["root"] or "") / clip["rel_path"])  # delivered to make room
    return pipe.notes.analyze(path, label=f"port {docking['port']} serial "
                              f"{docking['serial']} {clip['safe_name']}")
