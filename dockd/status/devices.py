"""``dockd devices``: every recorder ever docked, its health and whether it is fit for the
next shift (R9), with clock offsets (R10); ``--serial S``: one recorder's history and trend.

``devices_data`` returns plain data (what ``--json`` prints) from the state, read-only;
``render_devices`` turns it into rich tables. The verdicts come from the pure
:func:`dockd.devices.health.fitness`. Databases from before the ``recorder_health`` table
(or recorders docked before it) fall back to the readings stored with each docking.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..cli_text import tr
from ..config import Config
from ..devices import health
from ..devices.health import HealthSample
from ..store import Reader, fleet, parse_iso
from .timefmt import local_time, zone_label, zone_of
from .views import human_bytes, human_duration

log = logging.getLogger(__name__)

VERDICT_ORDER = {"unfit": 0, "charging": 1, "fit?": 2, "fit": 3}
VERDICT_STYLES = {"unfit": "bold red", "charging": "yellow", "fit?": "yellow", "fit": "green"}
STATUS_STYLES = {health.UNFIT: "bold red", health.CHARGING: "yellow", health.UNKNOWN: "dim",
                 health.CORRECTED: "yellow", health.OK: ""}
HISTORY_LIMIT = 60
CLIP_LIMIT = 30


# --------------------------------------------------------------------------- data


def devices_data(state: Reader, cfg: Config, now: datetime, *, serial: str | None = None,
                 dock_clock: tuple[bool | None, str] | None = None) -> dict[str, Any]:
    """All recorders (or one, with its history) with their latest health and verdict."""
    fleet_ = _Fleet(state)
    out = [_recorder(state, cfg, dict(r), now, fleet_, detailed=serial is not None)
           for r in fleet.recorders(state, serial)]
    out.sort(key=lambda r: (VERDICT_ORDER.get(r["verdict"]["label"], 9), r["serial"]))
    return {
        "generated_at": now.astimezone(UTC).isoformat(timespec="seconds"),
        "tz": cfg.tz.key,
        "dock_clock": ({"ntp_synced": dock_clock[0], "detail": dock_clock[1]}
                       if dock_clock else None),
        "thresholds": {"min_battery_percent": cfg.health.min_battery_percent,
                       "charging_minutes": cfg.health.charging_minutes,
                       "min_free_percent": cfg.health.min_free_percent,
                       "max_clock_offset_s": cfg.health.max_clock_offset_s},
        "serial": serial,
        "recorders": out,
        "unfit": sum(1 for r in out if not r["verdict"]["fit"]),
    }


class _Fleet:
    """What every recorder's row needs, read once for all of them."""

    def __init__(self, state: Reader):
        self.last = fleet.last_dockings_by_serial(state)
        self.docked = fleet.docked_ports_by_serial(state)
        self.pending = fleet.pending_by_serial(state)
        self.clock_sets = fleet.clock_sets_by_serial(state)
        # the verdict weighs the newest reading and those of the same docking only
        self.health = fleet.current_health_by_serial(state)


def _recorder(state: Reader, cfg: Config, r: dict[str, Any], now: datetime, batch: _Fleet,
              *, detailed: bool) -> dict[str, Any]:
    serial = r["serial"]
    last_n = batch.last.get(serial)
    last: dict[str, Any] | None = dict(last_n[0]) if last_n else None
    n_dockings = last_n[1] if last_n else 0
    health_rows = (fleet.health_of(state, serial) if detailed
                   else batch.health.get(serial, []))
    dockings: list[dict[str, Any]] | None = None
    if detailed or not health_rows:
        dockings = [dict(d) for d in fleet.dockings_of(state, serial)]
    samples = _samples(serial, health_rows, dockings or [])
    latest = samples[-1] if samples else _sample_from_recorder(r)
    port = batch.docked.get(serial)
    docked_since = parse_iso(last["docked_at"]) if (port and last) else None
    clock_set = _clock_set(batch.clock_sets.get(serial))
    clock_set_at = parse_iso(clock_set["ts"]) if clock_set else None
    measured_with = _json(last.get("dock_clock")) if last else {}
    verdict = health.fitness(latest, samples, cfg.health, now, docked_since,
                             clock_set_at=clock_set_at,
                             dock_synced=measured_with.get("ntp_synced")
                             if isinstance(measured_with, dict) else None)
    out: dict[str, Any] = {
        "serial": serial,
        "officer_no": r.get("officer_no") or "", "officer_name": r.get("officer_name") or "",
        "unit_no": r.get("unit_no") or "", "unit_name": r.get("unit_name") or "",
        "vendor": r.get("vendor") or "", "model": r.get("model") or "",
        "firmware": (latest.firmware if latest else "") or r.get("firmware") or "",
        "battery_percent": latest.battery if latest else None,
        "storage_total": latest.storage_total if latest else None,
        "storage_free": latest.storage_free if latest else None,
        "free_percent": (round(latest.free_percent, 1)
                         if latest and latest.free_percent is not None else None),
        "fs_check": latest.fs_check if latest else health.FS_NOT_RUN,
        "fs_detail": latest.fs_detail if latest else "",
        "clips_on_recorder": latest.clip_count if latest else None,
        "oldest_clip_age_s": latest.oldest_clip_age_s if latest else None,
        "clock_offset_s": (last["clock_offset_s"] if last else r.get("last_clock_offset_s")),
        "clock_set": clock_set,
        "health_read_at": latest.ts.isoformat() if latest else None,
        "first_seen": r.get("first_seen"), "last_docked": r.get("last_seen"),
        "last_port": r.get("last_port"),
        "docked_now": port,
        "docked_since": docked_since.isoformat() if docked_since else None,
        "dockings": n_dockings,
        "clips_pending": batch.pending.get(serial, 0),
        "verdict": verdict.as_dict(),
    }
    if detailed:
        out["history"] = [_sample_dict(s) for s in samples[-HISTORY_LIMIT:]]
        out["trend"] = health.trend(samples)
        out["docking_list"] = [_docking_dict(d) for d in (dockings or [])[-HISTORY_LIMIT:]]
        out["clips"] = _clips(state, last["id"], cfg.tz) if last else []
    return out


def _samples(serial: str, health_rows: Sequence[Any], dockings: Sequence[dict[str, Any]]
             ) -> list[HealthSample]:
    """The recorder's health readings, oldest first; from the dockings when none are stored."""
    if health_rows:
        return [health.sample_from_row(dict(r)) for r in health_rows]
    out = []
    for d in dockings:
        snap = _json(d.get("snapshot"))
        h = snap.get("health", {}) if isinstance(snap, dict) else {}
        ts = parse_iso(d["docked_at"])
        if ts is None:
            continue
        out.append(HealthSample(ts=ts, serial=serial, docking_id=d["id"],
                                battery=h.get("battery_percent"),
                                storage_total=h.get("storage_total"),
                                storage_free=h.get("storage_free"),
                                firmware=h.get("firmware") or "",
                                clock_offset_s=d.get("clock_offset_s")))
    return out


def _sample_from_recorder(r: dict[str, Any]) -> HealthSample | None:
    ts = parse_iso(r.get("last_seen"))
    if ts is None:
        return None
    return HealthSample(ts=ts, serial=r["serial"], battery=r.get("last_battery"),
                        storage_total=r.get("last_storage_total"),
                        storage_free=r.get("last_storage_free"), firmware=r.get("firmware") or "",
                        clock_offset_s=r.get("last_clock_offset_s"))


def _clock_set(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    detail = _json(row["detail"])
    return {"ts": row["ts"], "subject": row["subject"],
            **(detail if isinstance(detail, dict) else {})}


def _sample_dict(s: HealthSample) -> dict[str, Any]:
    d = health.health_row(s)
    d["free_percent"] = round(s.free_percent, 1) if s.free_percent is not None else None
    return d


def _docking_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {"docking_id": d["id"], "port": d["port"], "state": d["state"],
            "docked_at": d["docked_at"], "undocked_at": d.get("undocked_at"),
            "clock_offset_s": d.get("clock_offset_s"), "clips_total": d.get("clips_total"),
            "dock_clock": _json(d.get("dock_clock")) or None}


def _clips(state: Reader, docking_id: int, tz: ZoneInfo) -> list[dict[str, Any]]:
    """The docking's clips with their start as recorded (recorder clock) and corrected."""
    rows = fleet.docking_clips(state, docking_id, CLIP_LIMIT)
    out = []
    for c in rows:
        utc = parse_iso(c["start_utc"])
        out.append({"name": c["safe_name"], "state": c["state"],
                    "start_recorded": c["start_recorded"], "start_utc": c["start_utc"],
                    "start_corrected_local": utc.astimezone(tz).isoformat() if utc else None,
                    "duration_s": c["duration_s"]})
    return out


def _json(text: str | None) -> Any:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {}


# --------------------------------------------------------------------------- rendering


def _local(iso_text: str | None, tz: ZoneInfo) -> str:
    """In the dock's zone; the zone is named once, in the table's title (see _zone_note)."""
    return local_time(iso_text, tz, zone=False)


def _zone_note(tz: ZoneInfo) -> str:
    return tr("devices.zone", zone=zone_of(tz))


def _offset(value: float | None) -> str:
    return health.format_offset(value) if value is not None else "?"


def _clock_line(dock: dict[str, Any] | None) -> Text:
    if dock is None:
        return Text(tr("clock.not_checked"), style="dim")
    if dock["ntp_synced"] is True:
        return Text(tr("clock.synced", detail=dock["detail"]), style="green")
    if dock["ntp_synced"] is False:
        return Text(tr("clock.not_synced", detail=dock["detail"]), style="bold red")
    return Text(tr("clock.unknown", detail=dock["detail"]), style="yellow")


def render_devices(data: dict[str, Any]) -> Group:
    tz = ZoneInfo(data["tz"])
    parts: list[Any] = [_clock_line(data["dock_clock"])]
    recs = data["recorders"]
    if not recs:
        parts.append(Text(tr("devices.none") if data["serial"] is None
                          else tr("devices.no_such", serial=data["serial"])))
        return Group(*parts)
    t = Table(title=tr("devices.title", n=len(recs), unfit=data["unfit"], zone=_zone_note(tz)),
              title_justify="left", box=box.SIMPLE, show_lines=True)
    t.add_column(tr("col.fit"), no_wrap=True)
    t.add_column(tr("col.recorder"), no_wrap=True)
    t.add_column(tr("col.officer_unit"), ratio=1, overflow="fold")
    t.add_column(tr("col.batt"), justify="right", no_wrap=True)
    t.add_column(tr("col.storage"), no_wrap=True)
    t.add_column(tr("col.clock"), justify="right", no_wrap=True)
    t.add_column(tr("col.last_docked"), no_wrap=True)
    t.add_column(tr("col.pending"), justify="right", no_wrap=True)
    for r in recs:
        t.add_row(*_row_cells(r, tz))
    parts.append(t)
    for r in recs:
        why = _why(r)
        if why is not None:
            parts.append(why)
    for r in recs:
        if "history" in r:
            parts.extend(_render_history(r, tz))
    return Group(*parts)


def _row_cells(r: dict[str, Any], tz: ZoneInfo) -> list[Any]:
    v = r["verdict"]
    checks = v["checks"]
    officer = " ".join(x for x in (r["officer_no"], r["officer_name"]) if x) or "-"
    unit = r["unit_name"] or r["unit_no"]
    battery = f"{r['battery_percent']}%" if r["battery_percent"] is not None else "?"
    if r["free_percent"] is not None:
        storage = f"{r['free_percent']:.0f}% free\nof {human_bytes(r['storage_total'])}"
    else:
        storage = "?"
    if r["fs_check"] != health.FS_NOT_RUN:
        storage += f"\nfs {r['fs_check']}"
    last = _local(r["last_docked"], tz).replace(" ", "\n", 1) + (
        f" in {r['docked_now']}" if r["docked_now"] else "")
    recorder = "\n".join(x for x in (r["serial"], r["model"], r["firmware"]) if x)
    return [Text(v["label"], style=VERDICT_STYLES.get(v["label"], "")), recorder,
            officer + (f"\n{unit}" if unit else ""),
            _styled(battery, checks.get("battery")), _styled(storage, checks.get("storage")),
            _styled(_offset(r["clock_offset_s"]), checks.get("clock")), last,
            str(r["clips_pending"])]


def _styled(text: str, check: dict[str, Any] | None) -> Text:
    return Text(text, style=STATUS_STYLES.get(check["status"], "") if check else "")


def _why(r: dict[str, Any]) -> Text | None:
    v = r["verdict"]
    if not v["reasons"] and not v["notes"]:
        return None
    who = " ".join(x for x in (r["officer_no"], r["officer_name"]) if x)
    line = Text(f"{r['serial']}" + (f" ({who})" if who else "") + ": ",
                style=VERDICT_STYLES.get(v["label"], ""))
    line.append("; ".join(v["reasons"]), style="red")
    if v["reasons"] and v["notes"]:
        line.append("; ")
    line.append("; ".join(v["notes"]), style="dim")
    return line


def _render_history(r: dict[str, Any], tz: ZoneInfo) -> list[Any]:
    parts: list[Any] = []
    ntp = {d["docking_id"]: (d["dock_clock"] or {}).get("ntp_synced")
           for d in r["docking_list"]}
    h = Table(title=f"{r['serial']}: health per reading (dock.: docking, NTP: the dock's clock "
                    f"then; {_zone_note(tz)})", title_justify="left", box=box.SIMPLE)
    for col in ("read at", "dock.", "batt.", "free", "clips", "oldest", "fs", "clock", "NTP",
                "fw"):
        h.add_column(col, no_wrap=True)
    for s in r["history"]:
        synced = ntp.get(s["docking_id"])
        h.add_row(_local(s["ts"], tz), str(s["docking_id"] or "-"),
                  f"{s['battery']}%" if s["battery"] is not None else "?",
                  f"{s['free_percent']:.0f}%" if s["free_percent"] is not None else "?",
                  str(s["clip_count"]) if s["clip_count"] is not None else "?",
                  human_duration(s["oldest_clip_age_s"]),
                  "-" if s["fs_check"] == health.FS_NOT_RUN else s["fs_check"],
                  _offset(s["clock_offset_s"]),
                  Text("yes" if synced else "NO" if synced is False else "?",
                       style="red" if synced is False else ""),
                  s["firmware"] or "-")
    parts.append(h)
    tr = r["trend"]
    if tr["dockings"] >= 2:
        bits = []
        if tr["battery_change"] is not None:
            bits.append(f"battery at docking {tr['battery_change']:+d} points")
        if tr["free_percent_change"] is not None:
            bits.append(f"free storage {tr['free_percent_change']:+.1f} points")
        if tr["firmware_changes"]:
            bits.append(f"{tr['firmware_changes']} firmware change(s)")
        parts.append(Text(f"trend over {tr['dockings']} dockings: " + (", ".join(bits) or
                                                                        "no data")))
    if r["clock_set"]:
        cs = r["clock_set"]
        parts.append(Text(f"clock set by the dock at {local_time(cs['ts'], tz)} to "
                          f"{cs.get('new_time_local')} (was {_offset(cs.get('old_offset_s'))})",
                          style="yellow"))
    if r["clips"]:
        c = Table(title=f"{r['serial']}: clips of the last docking (start as recorded and "
                        "corrected by the clock offset)", title_justify="left")
        for col in ("clip", "recorded", "corrected", "state"):
            c.add_column(col, no_wrap=col != "clip")
        for clip in r["clips"]:
            c.add_row(clip["name"], _short(clip["start_recorded"]),
                      _short(clip["start_corrected_local"]), clip["state"])
        parts.append(c)
    return parts


def _short(iso_text: str | None) -> str:
    """A time that carries its own offset (the recorder's spelling), with that zone shown."""
    dt = parse_iso(iso_text) if iso_text else None
    if dt is None or dt.tzinfo is None:
        return iso_text[:19].replace("T", " ") if iso_text else "-"
    return f"{dt:%Y-%m-%d %H:%M:%S} {zone_label(dt)}"


# --------------------------------------------------------------------------- command line


def cmd_devices(cfg: Config, args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..devices.clock import dock_clock_synced
    from ..store import open_readonly, utcnow

    dock_clock = dock_clock_synced()
    with open_readonly(cfg.paths.database) as state:
        data = devices_data(state, cfg, utcnow(), serial=args.serial, dock_clock=dock_clock)
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        Console().print(render_devices(data))
    if args.serial and not data["recorders"]:
        return 1
    return 0
