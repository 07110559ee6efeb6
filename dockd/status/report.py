"""``dockd report``: each docking's recording timeline (R1), its gaps and the spoken notes
found at every resumption (R2), for supervisors' review (R11). Read-only over the state."""

from __future__ import annotations

import json
from datetime import UTC, tzinfo
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..cli_text import tr
from ..store import Reader, fleet
from .timefmt import local_time, zone_of
from .views import human_duration

VERDICT_LABELS = {
    "note": "spoken note",
    "no_reason": "speech but no reason given",
    "speech_unclassified": "speech found, reason unknown (no ASR model)",
    "no_note": "NO NOTE",
    "error": "could not check",
    "not_checked": "not checked (notes disabled)",
}


def _referenced_clips(cont: dict[str, Any] | None, gaps: list[Any]) -> set[int]:
    """The clip ids a docking's timeline and gaps name (a gap may start at a clip of an
    earlier docking of the same recorder: R1 spans dockings)."""
    ids = {c for g in gaps for c in (g["before_clip"], g["after_clip"]) if isinstance(c, int)}
    if cont:
        for s in cont.get("timeline", {}).get("sessions", []):
            for r in s.get("runs", []):
                ids.update(c for c in r.get("clips", []) if isinstance(c, int))
    return ids


def report_data(state: Reader, *, docking_id: int | None = None, serial: str | None = None,
                limit: int = 20) -> dict[str, Any]:
    out = []
    for d in fleet.report_dockings(state, docking_id=docking_id, serial=serial, limit=limit):
        cont = json.loads(d["continuity"]) if d.get("continuity") else None
        stored_gaps = fleet.gaps_of(state, d["id"])
        # names come from the recorder's clips, only those the report shows
        clips: dict[int | None, Any] = dict(fleet.clips_by_id(state, d["serial"],
                                                  _referenced_clips(cont, stored_gaps)).items())
        notes_by_clip = {  # the note check behind each interruption: why it needs review
            f["detail"]["gap"]["after_clip"]: f["detail"].get("note", {})
            for f in (cont.get("findings", []) if cont else [])
            if f.get("kind", "").startswith("interruption") and "gap" in f.get("detail", {})}
        gaps = []
        for g in stored_gaps:
            gaps.append({
                "kind": g["kind"], "start": g["start"], "end": g["end"],
                "length_s": g["length_s"],
                "before_clip": clips.get(g["before_clip"], {}).get("safe_name"),
                "after_clip": clips.get(g["after_clip"], {}).get("safe_name"),
                "verdict": g["verdict"], "reason": g["reason"], "transcript": g["transcript"],
                "speech_start_s": g["speech_start_s"], "speech_end_s": g["speech_end_s"],
                "confidence": g["confidence"], "needs_review": bool(g["needs_review"]),
                "error": g["error"],
                "review": notes_by_clip.get(g["after_clip"], {}).get("review", []),
                "heard_as": notes_by_clip.get(g["after_clip"], {}).get("heard_as", []),
            })
        sessions = []
        if cont:
            own = {c for c, row in clips.items() if row["docking_id"] == d["id"]}
            for s in cont["timeline"].get("sessions", []):
                if not any(c in own for r in s.get("runs", []) for c in r["clips"]):
                    continue  # recorded before this docking: in the earlier docking's report
                sessions.append({
                    "start": s.get("start"), "end": s.get("end"),
                    "runs": [{"start": r["start"], "end": r["end"], "length_s": r["length_s"],
                              "clips": [clips.get(c, {}).get("safe_name", c)
                                        for c in r["clips"]]} for r in s.get("runs", [])],
                })
        out.append({
            "docking_id": d["id"], "serial": d["serial"], "port": d["port"],
            "officer_no": d.get("officer_no"), "officer_name": d.get("officer_name"),
            "docked_at": d["docked_at"], "state": d["state"],
            "clock_offset_s": d["clock_offset_s"],
            "analyzed": cont is not None,
            "sessions": sessions, "gaps": gaps,
            "needs_review": sum(g["needs_review"] for g in gaps),
            "findings": [*_identity(d), *(cont.get("findings", []) if cont else [])],
            "labels": _labels(state, d["id"]),
            "incomplete": _incomplete(d),
        })
    return {"dockings": out}


def _labels(state: Reader, docking_id: int) -> dict[str, Any]:
    """Case labels (R4) from the docking's newest signed revision."""
    from ..integrity.revisions import latest_labels, parse_revision

    doc = fleet.newest_revision_document(state, docking_id)
    return latest_labels(parse_revision(doc) if doc is not None else None)


def _label_text(labels: dict[str, Any]) -> str:
    names = {"case_no": "case", "party": "party", "handler": "handler", "note": "note"}
    parts = [f"{names[k]} {v}" for k, v in labels.items() if k in names and v]
    return ", ".join(parts)


def _identity(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The docking's identity-binding findings (USB serial vs device-info serial, R6)."""
    try:
        found = json.loads(d.get("findings") or "[]")
    except ValueError:
        return []
    return [f for f in found if isinstance(f, dict) and
            str(f.get("kind", "")).startswith("identity_")]


def _incomplete(d: dict[str, Any]) -> dict[str, Any] | None:
    """Clips left on the recorder when this docking closed; ``open`` until the recorder is
    re-docked (``resolved_by``) or someone acknowledged it (``acked_at``)."""
    if not d.get("incomplete"):
        return None
    return {"uncopied": d["incomplete"], "resolved_by": d.get("resolved_by"),
            "acked_at": d.get("acked_at"), "acked_by": d.get("acked_by"),
            "open": not d.get("resolved_by") and not d.get("acked_at"),
            "why": d.get("error")}


def render_report(data: dict[str, Any], tz: tzinfo = UTC) -> Group:
    """The timelines as tables; times in ``tz`` (the dock's zone), the zone in each title."""
    parts: list[Any] = []

    def hms(iso_text: str | None) -> str:
        return local_time(iso_text, tz, seconds=True, date=False, zone=False)

    for d in data["dockings"]:
        officer = " ".join(x for x in (d["officer_no"], d["officer_name"]) if x)
        offset = d["clock_offset_s"]
        title = tr("report.title", docking=d["docking_id"], serial=d["serial"], officer=officer,
                   port=d["port"], docked=local_time(d["docked_at"], tz),
                   clock=f"{offset:+.1f} s" if offset is not None else tr("unknown"))
        inc = d.get("incomplete")
        if inc:
            state = ("OPEN - plug the recorder back in, or `dockd ack`" if inc["open"] else
                     f"re-docked (docking {inc['resolved_by']})" if inc["resolved_by"] else
                     f"acknowledged {inc['acked_at'][:16]}Z")
            parts.append(Text(f"docking {d['docking_id']}: COPY INCOMPLETE, {inc['uncopied']} "
                              f"clip(s) left on the recorder: {state}",
                              style="bold yellow" if inc["open"] else "yellow"))
        lab = d.get("labels") or {}
        if not d["analyzed"]:
            parts.append(Text(tr("report.not_analysed", title=title, state=d["state"]),
                              style="dim"))
            continue
        t = Table(title=title, expand=False, title_justify="left")
        t.add_column(tr("report.from", zone=zone_of(tz).split(", ")[-1]), no_wrap=True)
        t.add_column(tr("report.to"), no_wrap=True)
        t.add_column(tr("report.length"), no_wrap=True)
        t.add_column(tr("report.what"), no_wrap=True)
        t.add_column(tr("report.note"), ratio=1, overflow="fold")
        events: list[tuple[str, list[Any]]] = []
        for i, s in enumerate(d["sessions"], 1):
            for r in s["runs"]:
                events.append((r["start"], [hms(r["start"]), hms(r["end"]),
                                            human_duration(r["length_s"]),
                                            tr("report.recording", i=i, n=len(r["clips"])),
                                            ""]))
        for g in d["gaps"]:
            if g["kind"] == "session_break":
                events.append((g["start"], [hms(g["start"]), hms(g["end"]),
                                            human_duration(g["length_s"]),
                                            Text(tr("report.new_session"), style="dim"),
                                            Text(tr("report.no_note_needed"),
                                                 style="dim")]))
                continue
            label = (tr(f"verdict.{g['verdict']}") if g["verdict"] in VERDICT_LABELS
                     else g["verdict"])
            note = label
            if g["reason"]:
                note += f": {g['reason']}"
            if g["transcript"]:
                note += f" \u201c{g['transcript']}\u201d"
            if g.get("review"):
                note += f" (review: {'; '.join(g['review'])})"
            style = "green" if not g["needs_review"] else "bold red"
            events.append((g["start"], [hms(g["start"]), hms(g["end"]),
                                        human_duration(g["length_s"]),
                                        Text(tr("report.gap"), style="bold"),
                                        Text(note + ("" if not g["needs_review"]
                                                     else tr("report.review")),
                                             style=style)]))
        for _, row in sorted(events, key=lambda e: e[0]):
            t.add_row(*row)
        parts.append(t)
        if d["needs_review"]:
            parts.append(Text(tr("report.need_review", n=d["needs_review"]),
                              style="bold red"))
        if lab.get("docking"):
            parts.append(Text(f"  labels: {_label_text(lab['docking'])}", style="cyan"))
        for name, cl in sorted((lab.get("clips") or {}).items()):
            parts.append(Text(f"  label {name}: {_label_text(cl)}", style="cyan"))
        other = [f for f in d["findings"] if not f["kind"].startswith("interruption")]
        for f in other:
            parts.append(Text(tr("report.finding", kind=f["kind"], message=f["message"]),
                              style="yellow"))
    if not parts:
        parts.append(Text(tr("report.none")))
    return Group(*parts)
