"""Read-only views of the state: what each port is doing, the backlog and its deadlines.

``status_data`` returns plain data (what ``--json`` prints); ``render_status`` turns it into
rich tables for the terminal (rich is imported there: ``dockd status --json``, polled by
monitoring, does not pay for it). Nothing here writes.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from ..cli_text import tr
from ..store import Reader, parse_iso
from ..store import status as store
from .timefmt import local_time

if TYPE_CHECKING:
    from rich.console import Group

PORT_LABELS = {
    "empty": "empty",
    "identifying": "identifying",
    "copying": "copying",
    "checking": "checking",
    "done": "done - safe to unplug",
    "incomplete": "COPY INCOMPLETE - plug it back in",
    "error": "ERROR",
}


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h}h{m:02d}m" if h else f"{sign}{m}m{s:02d}s"


def ports_view(state: Reader) -> list[dict[str, Any]]:
    rows = store.ports_with_recorders(state)
    delivered_of = store.delivered_counts(
        state, [d for r in rows if (d := r["docking_id"])])
    out = []
    for r in rows:
        rate = r.get("rate_bps") or None
        left = (r.get("bytes_total") or 0) - (r.get("bytes_done") or 0)
        eta = left / rate if (rate and r["state"] == "copying" and left > 0) else None
        delivered = None
        docking_id = r["docking_id"]
        counts = delivered_of.get(docking_id) if docking_id else None
        if counts is not None:
            # its own clips and those an earlier docking copied that it found again: only a
            # verified delivery counts
            delivered = {"done": counts[0], "total": counts[1]}
        out.append({
            "port": r["port"], "state": r["state"], "label": PORT_LABELS.get(r["state"], r["state"]),
            "serial": r.get("serial"), "officer_no": r.get("officer_no"),
            "officer_name": r.get("officer_name"), "battery_percent": r.get("last_battery"),
            "docking_id": r.get("docking_id"),
            "clips_done": r.get("clips_done") or 0, "clips_total": r.get("clips_total") or 0,
            "bytes_done": r.get("bytes_done") or 0, "bytes_total": r.get("bytes_total") or 0,
            "rate_bps": rate, "eta_s": eta, "delivered": delivered,
            "message": r.get("message"), "error": r.get("error"), "updated_at": r.get("updated_at"),
        })
    return out


def backlog_view(state: Reader, now: datetime) -> dict[str, Any]:
    items = []
    for r in store.backlog_by_docking(state):
        deadline = parse_iso(r["deadline_at"])
        items.append({
            "docking_id": r["docking_id"], "serial": r["serial"], "port": r["port"],
            "docked_at": r["docked_at"], "deadline_at": r["deadline_at"],
            "remaining_s": (deadline - now).total_seconds() if deadline else None,
            "overdue": bool(deadline and deadline < now),
            "clips": r["clips"], "bytes": r["bytes"] or 0,
            "states": sorted((r["states"] or "").split(",")),
        })
    return {
        "clips": sum(i["clips"] for i in items),
        "bytes": sum(i["bytes"] for i in items),
        "oldest_deadline_at": items[0]["deadline_at"] if items else None,
        "dockings": items,
        "delivery_errors": store.delivery_errors(state),
    }


def incomplete_view(state: Reader) -> list[dict[str, Any]]:
    """Dockings closed with clips left on the recorder, not re-docked, not acknowledged."""
    return [{"docking_id": r["id"], "serial": r["serial"], "port": r["port"],
             "officer_no": r["officer_no"], "officer_name": r["officer_name"],
             "docked_at": r["docked_at"], "undocked_at": r["undocked_at"],
             "uncopied": r["incomplete"], "clips_total": r["clips_total"],
             "why": r["error"]} for r in store.open_incomplete(state)]


def status_data(state: Reader, dock_id: str, now: datetime) -> dict[str, Any]:
    return {
        "dock": dock_id,
        "generated_at": now.isoformat(),
        "ports": ports_view(state),
        "clips_by_state": store.clip_counts_by_state(state),
        "backlog": backlog_view(state, now),
        "incomplete": incomplete_view(state),
    }


def _state_style(state: str) -> str:
    return {"done": "bold green", "copying": "bold cyan", "checking": "cyan",
            "identifying": "cyan", "error": "bold red", "empty": "dim",
            "incomplete": "bold yellow"}.get(state, "")


def render_status(data: dict[str, Any], *, show_empty: bool = True, width: int = 120,
                  tz: tzinfo = UTC) -> Group:
    """Rich tables for the terminal; below 110 columns a compact port table is used. Times
    are shown in ``tz`` (the dock's zone) with the zone named."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    compact = width < 110
    ports = Table(title=tr("status.ports", dock=data["dock"]), expand=False)
    cols = (("port", "recorder", "state", "copied", "delivered") if compact
            else ("port", "recorder", "officer", "state", "clips", "bytes", "rate", "eta",
                  "delivered", "note"))
    for col in cols:
        ports.add_column(tr(f"col.{col}"),
                         no_wrap=col in ("port", "recorder", "copied", "delivered"),
                         overflow="fold" if col in ("note", "state") else "ellipsis")
    for p in data["ports"]:
        if not show_empty and p["state"] == "empty":
            continue
        deliv = p["delivered"]
        label = tr(f"port.{p['state']}") if p["state"] in PORT_LABELS else p["label"]
        state = Text(label, style=_state_style(p["state"]))
        note = Text(p["error"] or p["message"] or "", style="red" if p["error"] else "")
        delivered = f"{deliv['done']}/{deliv['total']}" if deliv else "-"
        if compact:
            who = "\n".join(x for x in (p["serial"], p["officer_name"] or p["officer_no"]) if x)
            copied = f"{p['clips_done']}/{p['clips_total']}" if p["clips_total"] else "-"
            if p["state"] == "copying" and p["rate_bps"]:
                copied += f"\n{human_bytes(p['rate_bps'])}/s"
            if note.plain:
                state.append("\n")
                state.append_text(note if p["error"] else Text(note.plain, style="dim"))
            ports.add_row(p["port"], who or "-", state, copied, delivered)
            continue
        officer = " ".join(x for x in (p["officer_no"], p["officer_name"]) if x) or "-"
        ports.add_row(
            p["port"], p["serial"] or "-", officer, state,
            f"{p['clips_done']}/{p['clips_total']}" if p["clips_total"] else "-",
            f"{human_bytes(p['bytes_done'])}/{human_bytes(p['bytes_total'])}"
            if p["bytes_total"] else "-",
            f"{human_bytes(p['rate_bps'])}/s" if p["rate_bps"] else "-",
            human_duration(p["eta_s"]), delivered, note)
    backlog = data["backlog"]
    bl = Table(title=tr("status.backlog", clips=backlog["clips"],
                        size=human_bytes(backlog["bytes"])), expand=False)
    for col in ("docking", "recorder", "port", "clips", "bytes", "states", "deadline", "left"):
        bl.add_column(tr(f"col.{col}"))
    for d in backlog["dockings"]:
        bl.add_row(str(d["docking_id"]), d["serial"], d["port"], str(d["clips"]),
                   human_bytes(d["bytes"]), ",".join(d["states"]),
                   local_time(d["deadline_at"], tz),
                   Text(human_duration(d["remaining_s"]),
                        style="bold red" if d["overdue"] else ""))
    parts: list[Any] = [ports, bl if backlog["dockings"] else
                        Text(tr("status.backlog_empty"), style="green")]
    if data.get("incomplete"):
        inc = Table(title="INCOMPLETE copies: recorder pulled before every clip was copied "
                          "(plug it back in, or `dockd ack PORT`)", expand=False)
        for col in ("docking", "recorder", "officer", "port", "not copied", "undocked"):
            inc.add_column(col)
        for i in data["incomplete"]:
            inc.add_row(str(i["docking_id"]), i["serial"],
                        " ".join(x for x in (i["officer_no"], i["officer_name"]) if x) or "-",
                        i["port"], f"{i['uncopied']}/{i['clips_total']}",
                        i["undocked_at"] or "-", style="yellow")
        parts.append(inc)
    if backlog["delivery_errors"]:
        errs = Table(title=tr("status.errors"), expand=False)
        for col in ("clip", "target", "attempts", "state", "error"):
            errs.add_column(tr(f"col.{col}"))
        for e in backlog["delivery_errors"]:
            errs.add_row(str(e["clip_id"]), e["target"], str(e["attempts"]), e["state"],
                         Text(e["last_error"] or "", style="red"))
        parts.append(errs)
    return Group(*parts)
