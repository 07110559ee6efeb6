"""Per-clip checks and the conversions between stored rows and manifest data (pure).

Times: recorders name files in their own clock and local time. ``clip_times`` turns that into
the recorded start (as the recorder said it) and the corrected start in UTC (recorder clock
minus the offset measured at docking, R10). Findings are data (R6 tamper hints, unparsable
clips); none of them blocks delivery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

from ..config import ProfileConfig
from ..model import (
    Finding,
    ProbeResult,
    RecorderHealth,
    RecorderIdentity,
    RecorderSnapshot,
)
from .manifest import ManifestClip

#: metadata creation time and file-name time may differ this much before it is a finding
TIME_MISMATCH_S = 2.0


@dataclass(frozen=True)
class ClipTimes:
    start_recorded: str | None
    """Start as the recorder wrote it (its clock, local time, ISO with offset)."""
    start_utc: datetime | None
    """Start corrected for the recorder's clock offset, UTC."""
    duration_s: float | None
    source: str


def name_time(rel_path: str, profile: ProfileConfig, tz: ZoneInfo) -> datetime | None:
    """The start time encoded in the clip's file name (recorder clock, aware in ``tz``)."""
    m = profile.regex.match(PurePosixPath(rel_path).name)
    if not m or "start" not in m.groupdict() or not m.group("start"):
        return None
    try:
        return datetime.strptime(m.group("start"), profile.time_format).replace(tzinfo=tz)
    except ValueError:
        return None


def clip_times(rel_path: str, probe: ProbeResult, profile: ProfileConfig, tz: ZoneInfo,
               clock_offset_s: float | None, mtime: float | None) -> ClipTimes:
    recorded = name_time(rel_path, profile, tz)
    source = "file name"
    if recorded is None and probe.start is not None:
        recorded, source = probe.start.astimezone(tz), "metadata"
    if recorded is None and mtime:
        end = datetime.fromtimestamp(mtime, tz)
        recorded = end - timedelta(seconds=probe.duration_s or 0)
        source = "file mtime"
    if recorded is None:
        return ClipTimes(None, None, probe.duration_s, "unknown")
    corrected = recorded.astimezone(UTC) - timedelta(seconds=clock_offset_s or 0.0)
    return ClipTimes(recorded.isoformat(), corrected, probe.duration_s, source)


def probe_findings(probe: ProbeResult) -> list[Finding]:
    if probe.ok:
        return []
    return [Finding("probe_failed", "warning",
                    "clip could not be parsed as media; kept and delivered as evidence",
                    {"error": probe.error, "tool": probe.tool})]


def clip_findings(row: dict[str, Any], serial: str, profile: ProfileConfig) -> list[Finding]:
    """Checks that need the stored clip row (after probing)."""
    out: list[Finding] = []
    name = PurePosixPath(row["rel_path"]).name
    m = profile.regex.match(name)
    if m and m.groupdict().get("serial") and m.group("serial") != serial:
        out.append(Finding("serial_mismatch", "warning",
                           "file name carries another recorder's serial",
                           {"name_serial": m.group("serial"), "recorder_serial": serial}))
    probe = json.loads(row["probe"]) if row.get("probe") else {}
    meta_start = probe.get("start")
    if meta_start and row.get("start_recorded"):
        a = datetime.fromisoformat(meta_start)
        b = datetime.fromisoformat(row["start_recorded"])
        delta = abs((a - b).total_seconds())
        if delta > TIME_MISMATCH_S:
            out.append(Finding("time_mismatch", "warning",
                               "creation time in the metadata differs from the file name",
                               {"metadata": meta_start, "file_name": row["start_recorded"],
                                "difference_s": round(delta, 3)}))
    return out


def finding_from_dict(d: dict[str, Any]) -> Finding:
    return Finding(d.get("kind", "unknown"), d.get("severity", "info"), d.get("message", ""),
                   dict(d.get("detail") or {}))


def manifest_clip(row: dict[str, Any]) -> ManifestClip:
    start = datetime.fromisoformat(row["start_utc"]) if row.get("start_utc") else None
    dur = row.get("duration_s")
    end = start + timedelta(seconds=dur) if (start is not None and dur) else None
    return ManifestClip(
        name=row["safe_name"],
        original_path=row["rel_path"],  # made printable by ManifestClip.as_dict
        size=int(row["size"]),
        sha256=row["sha256"],
        start_recorded=row.get("start_recorded"),
        start=start.isoformat() if start else None,
        end=end.isoformat() if end else None,
        duration_s=dur,
        metadata=json.loads(row["probe"]) if row.get("probe") else {},
        findings=tuple(json.loads(row["findings"] or "[]")),
    )


# ------------------------------------------------------------------ snapshot <-> JSON


def snapshot_doc(snap: RecorderSnapshot) -> dict[str, Any]:
    i, h = snap.identity, snap.health
    return {
        "identity": {"serial": i.serial, "officer_no": i.officer_no,
                     "officer_name": i.officer_name, "unit_no": i.unit_no,
                     "unit_name": i.unit_name, "model": i.model, "vendor": i.vendor},
        "health": {"battery_percent": h.battery_percent, "firmware": h.firmware,
                   "storage_total": h.storage_total, "storage_free": h.storage_free,
                   "recorder_clock": h.recorder_clock.isoformat() if h.recorder_clock else None,
                   "clock_reference": (h.clock_reference.isoformat()
                                       if h.clock_reference else None)},
        "root": str(snap.root), "profile": snap.profile, "driver": snap.driver,
        "raw_info": dict(snap.raw_info),
    }


def snapshot_from_doc(doc: dict[str, Any]) -> RecorderSnapshot:
    from pathlib import Path

    h = doc.get("health", {})

    def dt(v: str | None) -> datetime | None:
        return datetime.fromisoformat(v) if v else None

    return RecorderSnapshot(
        identity=RecorderIdentity(**doc["identity"]),
        health=RecorderHealth(battery_percent=h.get("battery_percent"),
                              firmware=h.get("firmware", ""),
                              storage_total=h.get("storage_total"),
                              storage_free=h.get("storage_free"),
                              recorder_clock=dt(h.get("recorder_clock")),
                              clock_reference=dt(h.get("clock_reference"))),
        root=Path(doc.get("root", ".")), profile=doc.get("profile", ""),
        driver=doc.get("driver", ""), raw_info=dict(doc.get("raw_info", {})))
