"""Plain data passed between layers (device -> ingest -> integrity -> delivery).

Frozen dataclasses only: no I/O, no third-party imports. Times are timezone-aware
``datetime`` in UTC unless the name says ``local``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RecorderIdentity:
    """Who the recorder is and whom it belongs to (fields of the SDK record ZFY_INFO)."""

    serial: str
    officer_no: str = ""
    officer_name: str = ""
    unit_no: str = ""
    unit_name: str = ""
    model: str = ""
    vendor: str = ""


@dataclass(frozen=True)
class RecorderHealth:
    battery_percent: int | None = None
    firmware: str = ""
    storage_total: int | None = None
    storage_free: int | None = None
    recorder_clock: datetime | None = None
    """The recorder's own clock, as read at docking (UTC-aware, derived from its local time)."""
    clock_reference: datetime | None = None
    """The dock's clock at the moment ``recorder_clock`` was read (UTC)."""

    @property
    def clock_offset_s(self) -> float | None:
        """Recorder clock minus dock clock, seconds (positive: recorder runs ahead)."""
        if self.recorder_clock is None or self.clock_reference is None:
            return None
        return (self.recorder_clock - self.clock_reference).total_seconds()


@dataclass(frozen=True)
class RecorderSnapshot:
    """Everything a driver reads off a docked recorder before any clip is copied."""

    identity: RecorderIdentity
    health: RecorderHealth
    root: Path
    profile: str
    driver: str
    raw_info: dict[str, str] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    """What was odd about the recorder's own description (info file garbage, too long or
    wrongly encoded fields, identity taken from udev): stored with the docking."""


@dataclass(frozen=True)
class Finding:
    """Something a reviewer should know. Findings are data, never exceptions."""

    kind: str  # e.g. "hostile_name", "symlink_skipped", "probe_failed", "name_mismatch"
    severity: str  # "info" | "warning" | "error"
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "message": self.message,
                "detail": dict(self.detail)}


@dataclass(frozen=True)
class ClipEntry:
    """One file found on the recorder by the scanner.

    ``rel_path`` is the path relative to the recorder root as the recorder spelt it
    (str with surrogate escapes for undecodable bytes); ``safe_name`` is what we call it in
    staging and on the target (printable, no separators, unique within the docking).
    """

    rel_path: str
    safe_name: str
    size: int
    mtime: float
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class CopyResult:
    size: int
    sha256: str
    staged_path: Path
    seconds: float


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    start: datetime | None = None
    """Start time from container metadata (UTC) when present."""
    duration_s: float | None = None
    format_name: str = ""
    video_codec: str = ""
    audio_codec: str = ""
    width: int | None = None
    height: int | None = None
    encoder: str = ""
    make: str = ""
    model: str = ""
    device_serial: str = ""
    tool: str = ""  # which tool(s) answered: "exiftool+ffprobe", "ffprobe", ...
    error: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The part of the probe that goes into the manifest."""
        return {
            "ok": self.ok,
            "start": self.start.isoformat() if self.start else None,
            "duration_s": self.duration_s,
            "format": self.format_name,
            "video_codec": self.video_codec,
            "audio_codec": self.audio_codec,
            "width": self.width,
            "height": self.height,
            "encoder": self.encoder,
            "make": self.make,
            "model": self.model,
            "device_serial": self.device_serial,
            "error": self.error,
        }
