"""The OpenAPI 3.1 description of the dock's JSON API (served at ``/api/openapi.json``).

Built from Python so that it stays next to the code; component schemas are JSON Schema
2020-12 (what OpenAPI 3.1 uses), and the test suite validates every API response against
them. Objects allow extra properties (clients must ignore what they do not know); the
properties listed as required are the contract.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import __version__

log = logging.getLogger(__name__)

S = dict[str, Any]


def _t(kind: str, nullable: bool = False, **kw: Any) -> S:
    return {"type": [kind, "null"] if nullable else kind, **kw}


def _obj(required: dict[str, S], optional: dict[str, S] | None = None, **kw: Any) -> S:
    return {"type": "object", "required": sorted(required),
            "properties": {**required, **(optional or {})}, **kw}


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def _arr(item: S) -> S:
    return {"type": "array", "items": item}


STR, NSTR = _t("string"), _t("string", True)
INT, NINT = _t("integer"), _t("integer", True)
NUM, NNUM = _t("number"), _t("number", True)
BOOL, NBOOL = _t("boolean"), _t("boolean", True)
LEVEL = {"type": "string", "enum": ["ok", "warning", "alarm"]}
PORT_STATE = {"type": "string",
              "enum": ["empty", "identifying", "copying", "checking", "done", "error"]}
DISPLAY = {"type": "string", "enum": ["empty", "identifying", "copying", "checking", "done",
                                      "charging", "error"]}


def _schemas() -> dict[str, S]:
    delivered = {"oneOf": [{"type": "null"}, _obj({"done": INT, "total": INT})]}
    port_base = {
        "port": STR, "state": PORT_STATE, "label": STR, "serial": NSTR, "officer_no": NSTR,
        "officer_name": NSTR, "battery_percent": NNUM, "docking_id": NINT,
        "clips_done": INT, "clips_total": INT, "bytes_done": INT, "bytes_total": INT,
        "rate_bps": NNUM, "eta_s": NNUM, "delivered": delivered, "message": NSTR,
        "error": NSTR, "updated_at": NSTR,
    }
    problem = _obj({"code": {"type": "string", "enum": [
        "not_registered", "gap_no_note", "gap_review", "port_error", "finding_error"]},
        "severity": {"type": "string", "enum": ["alert", "notice"]}, "count": INT,
        "detail": NSTR}, {"reason": {"type": "string", "enum": [
            "stopped", "removed", "disk_full", "io_error", "mount_failed", "permission",
            "timeout", "other"], "description": "port_error only: what kind of error "
                                                "(`detail` is the daemon's English text)"}},
        description="Something the officer must be told (red tile).")
    reason = _obj({"code": STR}, {"value": NSTR})
    disk = _obj({"path": STR, "total": NINT, "used": NINT, "free": NINT,
                 "free_percent": NNUM, "min_free": INT, "low": NBOOL},
                description="Staging disk space (shutil.disk_usage).")
    backlog_docking = _obj({"docking_id": INT, "serial": STR, "port": STR, "docked_at": STR,
                            "deadline_at": NSTR, "remaining_s": NNUM, "overdue": BOOL,
                            "clips": INT, "bytes": INT, "states": _arr(STR)})
    delivery_error = _obj({"clip_id": INT, "target": STR, "attempts": NINT,
                           "last_error": NSTR, "state": NSTR, "next_try_at": NSTR})
    alert = _obj({"ts": STR, "level": STR, "kind": STR, "subject": STR, "message": NSTR})
    forecast = _obj({"docking_id": INT, "serial": STR, "port": STR, "deadline_at": STR,
                     "remaining_s": NUM, "eta": NSTR, "margin_s": NNUM, "bytes_left": INT,
                     "clips_left": INT, "level": LEVEL, "reasons": _arr(STR)},
                    {"reason_codes": _arr(_obj({"code": {"type": "string", "enum": [
                        "missed", "failed", "late", "waiting"]}}, {
                        "deadline": STR, "clips": INT, "count": INT, "eta": STR,
                        "margin_h": NUM, "hours": NUM, "warn_h": NUM}))})
    target = _obj({"required": BOOL, "throughput_bps": NNUM, "clips_left": INT,
                   "bytes_left": INT})
    who = {"docking_id": INT, "serial": STR, "port": STR, "officer_no": NSTR,
           "officer_name": NSTR, "docked_at": STR}
    return {
        "Error": _obj({"error": STR}),
        "Problem": problem,
        "Port": _obj(port_base, description="Live state of one port (as `dockd status`)."),
        "KioskPort": {"allOf": [_ref("Port"), _obj({
            "display": DISPLAY, "percent": NINT, "unit_name": NSTR, "storage_total": NINT,
            "storage_free": NINT, "storage_free_percent": NNUM, "clock_offset_s": NNUM,
            "fit": NBOOL, "attention": BOOL, "problems": _arr(_ref("Problem"))})],
            "description": "A port tile: `display` is the big state, `attention` turns it red."},
        "Ports": _obj({"dock": STR, "dock_name": STR, "generated_at": STR,
                       "ports": _arr(_ref("KioskPort"))}),
        "Disk": disk,
        "Alert": alert,
        "DeliveryError": delivery_error,
        "Backlog": _obj({"clips": INT, "bytes": INT, "oldest_deadline_at": NSTR,
                         "dockings": _arr(backlog_docking),
                         "delivery_errors": _arr(_ref("DeliveryError"))}),
        "Status": _obj({"dock": STR, "dock_name": STR, "generated_at": STR,
                        "ports": _arr(_ref("Port")),
                        "clips_by_state": {"type": "object", "additionalProperties": INT},
                        "backlog": _ref("Backlog"), "level": LEVEL, "disk": _ref("Disk"),
                        "alerts_open": INT}),
        "Reason": reason,
        "Recorder": _obj({
            "serial": STR, "officer_no": NSTR, "officer_name": NSTR, "unit_no": NSTR,
            "unit_name": NSTR, "model": NSTR, "firmware": NSTR, "last_seen": NSTR,
            "last_port": NSTR, "battery_percent": NNUM, "storage_total": NINT,
            "storage_free": NINT, "storage_free_percent": NNUM, "clock_offset_s": NNUM,
            "registered": BOOL, "fit": NBOOL, "reasons": _arr(_ref("Reason")),
            "label": {"type": "string", "enum": ["fit", "unfit", "charging", "fit?", "unknown"]},
            "notes": _arr(STR),
            "note_codes": _arr(_obj({"code": {"type": "string", "enum": [
                "unknown", "charging", "corrected", "dock_not_ntp"]}, "check": STR},
                {"value": NSTR})),
            "verdict_source": {"type": "string", "enum": ["verdict", "thresholds"]}},
            description="`fit` null: not enough readings to decide (`label` fit? or unknown)."),
        "Recorders": _obj({
            "generated_at": STR, "unfit": INT, "recorders": _arr(_ref("Recorder")),
            "cases": _arr(_obj({
                "docking_id": INT, "serial": STR, "officer_no": NSTR, "officer_name": NSTR,
                "docked_at": STR, "case_no": NSTR, "party": NSTR, "handler": NSTR,
                "note": NSTR, "clips_labelled": INT})),
            "thresholds": _obj({"min_battery_percent": NUM, "min_free_percent": NUM,
                                "max_clock_offset_s": NUM, "charging_minutes": NUM})},
            description="The fleet: recorders not fit for the next shift first (R9)."),
        "Forecast": forecast,
        "Target": target,
        "Queue": _obj({
            "dock": STR, "generated_at": STR, "level": LEVEL,
            "dockings": _arr(_ref("Forecast")),
            "targets": {"type": "object", "additionalProperties": _ref("Target")},
            "alerts": _arr(_ref("Alert")), "disk": _ref("Disk"),
            "backlog": _obj({"clips": INT, "bytes": INT, "oldest_deadline_at": NSTR}),
            "delivery_errors": _arr(_ref("DeliveryError")),
            "clips_by_state": {"type": "object", "additionalProperties": INT}},
            description="Delivery backlog with deadline forecast (R3)."),
        "GapFinding": _obj({**who, "kind": STR, "start": NSTR, "end": NSTR,
                            "length_s": NNUM, "verdict": NSTR, "reason": NSTR,
                            "transcript": NSTR, "before_clip": NSTR, "after_clip": NSTR,
                            "error": NSTR}),
        "DockingFinding": _obj({**who, "kind": STR, "severity": STR, "message": STR}),
        "Findings": _obj({"generated_at": STR,
                          "gaps_needing_review": _arr(_ref("GapFinding")),
                          "findings": _arr(_ref("DockingFinding"))},
                         description="Gaps needing a supervisor (R2) and docking findings."),
    }


PATHS = {
    "/api/status": ("Status", "Ports, clips by state, backlog, deadline level, staging disk"),
    "/api/ports": ("Ports", "One tile per port for the kiosk page"),
    "/api/recorders": ("Recorders", "The recorder fleet, unfit first, with reasons"),
    "/api/queue": ("Queue", "Backlog, deadline forecast, targets, alerts"),
    "/api/findings": ("Findings", "Gaps needing review and docking findings"),
}


def openapi_spec() -> dict[str, Any]:
    """The whole OpenAPI document."""
    err = {"content": {"application/json": {"schema": _ref("Error")}}}
    paths: dict[str, Any] = {}
    for path, (schema, summary) in PATHS.items():
        paths[path] = {"get": {
            "summary": summary, "operationId": path.rsplit("/", 1)[1],
            "responses": {
                "200": {"description": "OK",
                        "content": {"application/json": {"schema": _ref(schema)}}},
                "401": {"description": "Bearer token missing or wrong (non-loopback client)",
                        **err},
                "403": {"description": "Non-loopback client and no token configured", **err},
                "503": {"description": "State database not readable yet", **err},
            }}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "dockd status API", "version": __version__,
                 "description": "Read-only status of one docking station. Loopback clients "
                                "are served; others need `Authorization: Bearer <token>` "
                                "(web.token), or are refused when no token is configured."},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }


def response_schema(path: str) -> dict[str, Any]:
    """A standalone JSON Schema for the 200 response of ``path`` (refs resolve inside)."""
    spec = openapi_spec()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **_ref(PATHS[path][0]), "components": spec["components"]}
