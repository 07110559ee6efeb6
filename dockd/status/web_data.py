"""Plain data for the web pages, the JSON API, ``dockd top`` and the metrics collector.

Built on the existing read-outs (:func:`~dockd.status.views.status_data`,
:func:`~dockd.status.queue.queue_data`, :func:`~dockd.status.report.report_data`), adding
what an officer, an equipment admin and IT staff need on top: per-port problems that need
the officer (red tile), recorder fitness with reasons (fleet view) and the staging disk.
Read-only: :func:`open_state_ro` opens the database with ``mode=ro`` and ``query_only``.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import Config, HealthConfig
from ..store import Reader, fleet
from ..store import readonly as store_ro
from ..store import status as store_status
from .queue import queue_data
from .report import report_data
from .views import backlog_view, incomplete_view, ports_view, status_data

log = logging.getLogger(__name__)

DISPLAY_STATES = ("empty", "identifying", "copying", "checking", "done", "charging",
                  "incomplete", "error")
ALERT, NOTICE = "alert", "notice"
FINDINGS_LIMIT = 50  # most recent dockings scanned for /api/findings
FLEET_LIMIT = 500  # recorders listed (bounded: the metrics labels come from here too)


ReadOnlyState = store_ro.ReadOnlyState
"""The read-only store (one class for every read-only view: see :mod:`dockd.store.readonly`)."""


def open_state_ro(path: Path | str) -> store_ro.ReadOnlyState:
    """Open the daemon's state database for read-only views (web, metrics, top)."""
    return store_ro.ReadOnlyState(path)


# --------------------------------------------------------------------------- recorders


def _num(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _reasons_from(value: Any) -> list[dict[str, Any]]:
    """Reasons stored by the health check (a JSON list of strings or objects, or text)."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [{"code": "other", "value": r.strip()} for r in value.split(";") if r.strip()]
    if isinstance(value, dict):
        value = [value]
    out = []
    for r in value if isinstance(value, list) else [value]:
        if isinstance(r, dict):
            out.append({"code": str(r.get("code") or r.get("kind") or "other"),
                        "value": r.get("message") or r.get("value") or r.get("detail")})
        else:
            out.append({"code": "other", "value": str(r)})
    return out


def storage_free_percent(row: dict[str, Any]) -> float | None:
    total, free = _num(row.get("last_storage_total")), _num(row.get("last_storage_free"))
    if not total or free is None:
        return None
    return round(100.0 * free / total, 1)


def recorder_health(row: dict[str, Any], health: HealthConfig) -> dict[str, Any]:
    """Fit for the next shift, and why not (R9).

    A verdict stored by the health check (columns ``health_verdict``/``fit`` and
    ``health_reasons``/``unfit_reasons``, when that schema exists) wins; otherwise the last
    readings are held against the ``[health]`` thresholds here.
    """
    verdict = row.get("health_verdict", row.get("verdict"))
    fit_col = row.get("fit")
    if verdict not in (None, "") or fit_col is not None:
        fit = (str(verdict).lower() in ("fit", "ok", "1", "true") if verdict not in (None, "")
               else bool(fit_col))
        stored = _reasons_from(row.get("health_reasons", row.get("unfit_reasons")))
        return {"fit": fit, "reasons": stored, "source": "verdict"}
    reasons: list[dict[str, Any]] = []
    battery = _num(row.get("last_battery"))
    free_pct = storage_free_percent(row)
    offset = _num(row.get("last_clock_offset_s"))
    if battery is not None and battery < health.min_battery_percent:
        reasons.append({"code": "battery_low", "value": f"{battery:.0f}%"})
    if free_pct is not None and free_pct < health.min_free_percent:
        reasons.append({"code": "storage_low", "value": f"{free_pct:.1f}%"})
    if offset is not None and abs(offset) > health.max_clock_offset_s:
        reasons.append({"code": "clock_off", "value": f"{offset:+.1f} s"})
    if battery is None and free_pct is None and offset is None:
        return {"fit": None, "reasons": [{"code": "no_data", "value": None}],
                "source": "thresholds"}
    return {"fit": not reasons, "reasons": reasons, "source": "thresholds"}


def recorders_by_serial(state: Reader) -> dict[str, dict[str, Any]]:
    return {r["serial"]: dict(r) for r in fleet.recent_recorders(state, FLEET_LIMIT)}


def recorder_view(row: dict[str, Any], health: HealthConfig) -> dict[str, Any]:
    h = recorder_health(row, health)
    return {
        "serial": row["serial"], "officer_no": row.get("officer_no"),
        "officer_name": row.get("officer_name"), "unit_no": row.get("unit_no"),
        "unit_name": row.get("unit_name"), "model": row.get("model"),
        "firmware": row.get("firmware"), "last_seen": row.get("last_seen"),
        "last_port": row.get("last_port"), "battery_percent": _num(row.get("last_battery")),
        "storage_total": row.get("last_storage_total"),
        "storage_free": row.get("last_storage_free"),
        "storage_free_percent": storage_free_percent(row),
        "clock_offset_s": _num(row.get("last_clock_offset_s")),
        "registered": is_registered(row),
        "fit": h["fit"], "reasons": h["reasons"], "verdict_source": h["source"],
    }


def is_registered(row: dict[str, Any] | None) -> bool:
    """A recorder is registered when it is known with an officer (or flagged so explicitly)."""
    if row is None:
        return False
    if "registered" in row and row["registered"] is not None:
        return bool(row["registered"])
    return bool((row.get("officer_no") or "").strip())


CHECK_CODES = {"battery": "battery_low", "storage": "storage_low", "clock": "clock_off",
               "filesystem": "filesystem"}


def _check_value(name: str, check: dict[str, Any]) -> str | None:
    value = check.get("value")
    if isinstance(value, bool) or value is None:
        return str(check.get("message") or "") or None
    if name == "battery":
        return f"{value}%"
    if name == "storage":
        return f"{value}%"
    if name == "clock" and isinstance(value, int | float):
        return f"{value:+.1f} s"
    return str(check.get("message") or value)


def _from_devices(r: dict[str, Any]) -> dict[str, Any]:
    """One recorder of :func:`dockd.status.devices.devices_data`, in the API's shape."""
    v = r["verdict"]
    reasons = []
    for name, check in (v.get("checks") or {}).items():
        if check.get("status") == "unfit":
            reasons.append({"code": CHECK_CODES.get(name, "other"),
                            "value": _check_value(name, check)})
        elif check.get("status") == "charging":
            reasons.append({"code": "charging", "value": _check_value(name, check)})
    note_codes = [{"code": f"{check.get('status')}", "check": name,
                   "value": _check_value(name, check)}
                  for name, check in (v.get("checks") or {}).items()
                  if check.get("status") in ("unknown", "charging", "corrected")]
    if any("NTP" in str(n) for n in v.get("notes") or []):
        note_codes.append({"code": "dock_not_ntp", "check": "clock", "value": None})
    label = v.get("label") or ("fit" if v.get("fit") else "unfit")
    return {
        "serial": r["serial"], "officer_no": r.get("officer_no") or None,
        "officer_name": r.get("officer_name") or None, "unit_no": r.get("unit_no") or None,
        "unit_name": r.get("unit_name") or None, "model": r.get("model") or None,
        "firmware": r.get("firmware") or None, "last_seen": r.get("last_docked"),
        "last_port": r.get("last_port"), "battery_percent": _num(r.get("battery_percent")),
        "storage_total": r.get("storage_total"), "storage_free": r.get("storage_free"),
        "storage_free_percent": _num(r.get("free_percent")),
        "clock_offset_s": _num(r.get("clock_offset_s")),
        "registered": bool((r.get("officer_no") or "").strip()),
        "fit": None if label in ("fit?", "unknown") else bool(v.get("fit")), "label": label,
        "reasons": reasons, "notes": [str(n) for n in v.get("notes") or []],
        "note_codes": note_codes, "verdict_source": "verdict",
    }


def fleet_data(state: Reader, cfg: Config, now: datetime) -> dict[str, Any]:
    """The fleet, unfit first. Verdicts from ``dockd devices`` (the health check) when
    available; otherwise the last readings against the ``[health]`` thresholds."""
    try:
        from .devices import devices_data

        recs = [_from_devices(r) for r in devices_data(state, cfg, now)["recorders"]]
    except (ImportError, KeyError, TypeError, AttributeError) as exc:
        log.warning("fleet: health verdicts unavailable (%s); using thresholds", exc)
        recs = []
        for row in recorders_by_serial(state).values():
            rv = recorder_view(row, cfg.health)
            rv["label"] = {True: "fit", False: "unfit", None: "unknown"}[rv["fit"]]
            rv["notes"] = []
            rv["note_codes"] = []
            recs.append(rv)
    incomplete: dict[str, list[int]] = {}
    for i in incomplete_view(state):
        incomplete.setdefault(i["serial"], []).append(i["docking_id"])
    for r in recs:
        r["incomplete_dockings"] = incomplete.get(r["serial"], [])
    order = {"unfit": 0, "charging": 1, "fit?": 2, "unknown": 2, "fit": 3}
    recs.sort(key=lambda r: (order.get(r["label"], 2), r["serial"]))
    recs = recs[:FLEET_LIMIT]
    h = cfg.health
    return {
        "generated_at": now.isoformat(),
        "thresholds": {"min_battery_percent": h.min_battery_percent,
                       "min_free_percent": h.min_free_percent,
                       "max_clock_offset_s": h.max_clock_offset_s,
                       "charging_minutes": h.charging_minutes},
        "unfit": sum(1 for r in recs if r["fit"] is False),
        "incomplete": sum(1 for r in recs if r["incomplete_dockings"]),
        "recorders": recs,
        "cases": labelled_dockings(state),
    }


def labelled_dockings(state: Reader, limit: int = 50) -> list[dict[str, Any]]:
    """The newest dockings with case labels (R4), as their newest revision states them."""
    from ..integrity.revisions import latest_labels, parse_revision

    out = []
    for r in fleet.labelled_revisions(state, limit):
        labels = latest_labels(parse_revision(bytes(r["document"])))
        d = labels["docking"]
        if not d and not labels["clips"]:
            continue
        out.append({"docking_id": r["docking_id"], "serial": r["serial"],
                    "officer_no": r["officer_no"], "officer_name": r["officer_name"],
                    "docked_at": r["docked_at"], "case_no": d.get("case_no"),
                    "party": d.get("party"), "handler": d.get("handler"),
                    "note": d.get("note"), "clips_labelled": len(labels["clips"])})
    return out


# --------------------------------------------------------------------------- ports (kiosk)


def _display(port: dict[str, Any]) -> tuple[str, int | None]:
    st = port["state"]
    if st == "copying":
        total = port["bytes_total"] or 0
        pct = int(100 * port["bytes_done"] / total) if total else 0
        return "copying", max(0, min(pct, 99 if port["bytes_done"] < total else 100))
    if st == "done" and not port["clips_total"]:
        return "charging", None
    return (st if st in DISPLAY_STATES else "error"), None


# what went wrong on a port, as a code the pages translate (the text is the daemon's, English)
PORT_ERROR_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stopped", ("stopped", "stop requested", "shutting down", "shutdown")),
    ("removed", ("removed", "is gone", "unplugged", "no such device", "no such file")),
    ("disk_full", ("no space", "enospc", "disk full", "min_free", "staging disk")),
    ("io_error", ("i/o error", "input/output", "eio")),
    ("mount_failed", ("mount",)),
    ("permission", ("permission", "not permitted", "eacces", "eperm")),
    ("timeout", ("timed out", "timeout")),
)


def port_error_reason(text: str | None) -> str:
    """The kind of a port's error (``stopped``, ``removed``, ``disk_full``, ...; ``other``)."""
    low = (text or "").lower()
    for code, needles in PORT_ERROR_REASONS:
        if any(n in low for n in needles):
            return code
    return "other"


def docking_problems(state: Reader, docking_id: int) -> list[dict[str, Any]]:
    """What the officer of this docking must be told (gaps needing review, errors found)."""
    data = report_data(state, docking_id=docking_id, limit=1)["dockings"]
    out: list[dict[str, Any]] = []
    if not data:
        return out
    d = data[0]
    review = [g for g in d["gaps"] if g["needs_review"]]
    no_note = [g for g in review if g["verdict"] == "no_note"]
    if no_note:
        out.append({"code": "gap_no_note", "severity": ALERT, "count": len(no_note),
                    "detail": ", ".join(f"{g['start'][11:19]}Z +{g['length_s']:.0f}s"
                                        for g in no_note if g["start"])})
    if len(review) > len(no_note):
        out.append({"code": "gap_review", "severity": ALERT, "count": len(review) - len(no_note),
                    "detail": ", ".join(sorted({str(g["verdict"]) for g in review
                                                if g["verdict"] != "no_note"}))})
    errors = [f for f in _docking_findings(state, docking_id) + d["findings"]
              if f.get("severity") == "error" and not str(f.get("kind", "")).startswith("interr")]
    if errors:
        out.append({"code": "finding_error", "severity": ALERT, "count": len(errors),
                    "detail": "; ".join(str(f.get("message", f.get("kind"))) for f in errors[:3])})
    return out


def _docking_findings(state: Reader, docking_id: int) -> list[dict[str, Any]]:
    text = fleet.docking_findings(state, docking_id)
    try:
        found = json.loads(text) if text else []
    except ValueError:
        return []
    return [f for f in found if isinstance(f, dict)]


def kiosk_ports(state: Reader, cfg: Config) -> list[dict[str, Any]]:
    """One entry per port: who, what state, progress, battery/storage, problems."""
    recs = recorders_by_serial(state)
    out = []
    for p in ports_view(state):
        rec = recs.get(p["serial"]) if p["serial"] else None
        if p["serial"] and rec is None:
            one = fleet.recorder(state, p["serial"])
            rec = dict(one) if one is not None else None
        display, percent = _display(p)
        problems: list[dict[str, Any]] = []
        if p["state"] == "incomplete":
            left = max(0, (p["clips_total"] or 0) - (p["clips_done"] or 0))
            problems.append({"code": "copy_incomplete", "severity": ALERT, "count": left,
                             "detail": str(left)})
        elif p["state"] == "error" or p["error"]:
            detail = p["error"] or p["message"] or ""
            problems.append({"code": "port_error", "severity": ALERT, "count": 1,
                             "reason": port_error_reason(detail), "detail": detail})
        if p["serial"] and p["state"] != "identifying" and not is_registered(rec):
            problems.append({"code": "not_registered", "severity": ALERT, "count": 1,
                             "detail": p["serial"]})
        if p["docking_id"] and p["state"] not in ("empty", "incomplete"):
            problems.extend(docking_problems(state, p["docking_id"]))
        rv = recorder_view(rec, cfg.health) if rec else None
        out.append({
            **p, "display": display, "percent": percent,
            "unit_name": rv["unit_name"] if rv else None,
            "storage_total": rv["storage_total"] if rv else None,
            "storage_free": rv["storage_free"] if rv else None,
            "storage_free_percent": rv["storage_free_percent"] if rv else None,
            "clock_offset_s": rv["clock_offset_s"] if rv else None,
            "fit": rv["fit"] if rv else None,
            "attention": any(x["severity"] == ALERT for x in problems),
            "problems": problems,
        })
    return out


# --------------------------------------------------------------------------- IT, findings


def disk_data(cfg: Config) -> dict[str, Any]:
    path = cfg.paths.staging_dir
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        du = shutil.disk_usage(probe)
    except OSError as exc:
        log.warning("cannot read free space of %s: %s", path, exc)
        return {"path": str(path), "total": None, "used": None, "free": None,
                "free_percent": None, "min_free": int(cfg.offload.min_free), "low": None}
    return {"path": str(path), "total": du.total, "used": du.used, "free": du.free,
            "free_percent": round(100.0 * du.free / du.total, 1) if du.total else None,
            "min_free": int(cfg.offload.min_free), "low": du.free < int(cfg.offload.min_free)}


def api_status(state: Reader, cfg: Config, now: datetime) -> dict[str, Any]:
    data = status_data(state, cfg.dock.id, now)
    q = queue_data(state, cfg, now)
    return {**data, "dock_name": cfg.dock.name, "level": q["level"], "disk": disk_data(cfg),
            "alerts_open": len(q["alerts"])}


def api_ports(state: Reader, cfg: Config, now: datetime) -> dict[str, Any]:
    return {"dock": cfg.dock.id, "dock_name": cfg.dock.name, "generated_at": now.isoformat(),
            "ports": kiosk_ports(state, cfg)}


def api_queue(state: Reader, cfg: Config, now: datetime) -> dict[str, Any]:
    q = queue_data(state, cfg, now)
    b = backlog_view(state, now)
    return {**q, "dock": cfg.dock.id, "disk": disk_data(cfg),
            "backlog": {"clips": b["clips"], "bytes": b["bytes"],
                        "oldest_deadline_at": b["oldest_deadline_at"]},
            "delivery_errors": b["delivery_errors"],
            "incomplete": incomplete_view(state),
            "clips_by_state": store_status.clip_counts_by_state(state)}


def api_findings(state: Reader, cfg: Config, now: datetime,
                 limit: int = FINDINGS_LIMIT) -> dict[str, Any]:
    """Gaps that need a supervisor's review and the findings of recent dockings."""
    gaps, findings = [], []
    for d in report_data(state, limit=limit)["dockings"]:
        who = {"docking_id": d["docking_id"], "serial": d["serial"], "port": d["port"],
               "officer_no": d["officer_no"], "officer_name": d["officer_name"],
               "docked_at": d["docked_at"]}
        for g in d["gaps"]:
            if g["needs_review"]:
                gaps.append({**who, **{k: g[k] for k in (
                    "kind", "start", "end", "length_s", "verdict", "reason", "transcript",
                    "before_clip", "after_clip", "error")}})
        for f in _docking_findings(state, d["docking_id"]) + d["findings"]:
            if str(f.get("kind", "")).startswith("interruption"):
                continue  # shown as gaps
            findings.append({**who, "kind": str(f.get("kind", "")),
                             "severity": str(f.get("severity", "info")),
                             "message": str(f.get("message", ""))})
    return {"generated_at": now.isoformat(), "gaps_needing_review": gaps,
            "findings": findings}
