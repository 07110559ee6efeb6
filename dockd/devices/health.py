"""Recorder health (R9): is this recorder fit for the next shift? Pure verdicts and trends.

Every reading of a recorder's health (at docking, and at any later re-read while it sits in
the dock) is one :class:`HealthSample`; the ``recorder_health`` table keeps them all so trends
are visible. :func:`fitness` turns the latest sample (with its history) into a
:class:`Verdict`:

* **battery** below ``min_battery_percent`` once the recorder has been docked for
  ``charging_minutes`` -> unfit; before that it is *charging*, not unfit;
* **storage** nearly full (free below ``min_free_percent`` of capacity) -> unfit;
* **clock** off by more than ``max_clock_offset_s`` -> unfit, unless the dock has since set
  the recorder's clock (then *corrected*, to be confirmed at the next docking);
* **filesystem** errors found by the read-only check (in any reading of the current
  docking: errors do not heal by themselves) -> unfit.

Unknown data is never a reason to call a recorder unfit: "battery unknown" is a note, the
verdict's label says ``fit?`` so the admin knows to look (a filesystem that was not checked
is only shown: most docks have no read-only fsck for every recorder). Nothing here does I/O: callers
pass plain data, and get plain data back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config import HealthConfig
from ..model import RecorderHealth

# the ``recorder_health`` columns :func:`health_row` fills and the statement that stores one
# live in the store (re-exported for callers that insert in their own transaction)
from ..store.health import HEALTH_COLUMNS as HEALTH_COLUMNS
from ..store.health import HEALTH_INSERT_SQL as HEALTH_INSERT_SQL
from ..store.health import insert_health as insert_health

log = logging.getLogger(__name__)

OK, UNFIT, UNKNOWN, CHARGING, CORRECTED = "ok", "unfit", "unknown", "charging", "corrected"
NOT_RUN = "not_run"
"""Check status of a filesystem that was not checked: common (no fsck for a directory dock),
so it is shown but is neither a note nor a reason to doubt the verdict."""

FS_OK, FS_ERRORS, FS_NOT_RUN = "ok", "errors", "not_run"
"""Values of ``HealthSample.fs_check``."""

_FSCK_VERDICTS = {"clean": FS_OK, "ok": FS_OK, "errors": FS_ERRORS}
"""The read-only fsck's verdicts (``DOCKD_FSCK`` hint); anything else: the check did not run."""

SOURCE_DOCKING, SOURCE_REREAD = "docking", "reread"


@dataclass(frozen=True)
class HealthSample:
    """One reading of a recorder's health (a ``recorder_health`` row)."""

    ts: datetime
    serial: str
    docking_id: int | None = None
    source: str = SOURCE_DOCKING
    battery: int | None = None
    storage_total: int | None = None
    storage_free: int | None = None
    clip_count: int | None = None
    """Clips on the recorder when read (copied before or not)."""
    oldest_clip_age_s: float | None = None
    fs_check: str = FS_NOT_RUN
    fs_detail: str = ""
    firmware: str = ""
    clock_offset_s: float | None = None

    @property
    def free_percent(self) -> float | None:
        if self.storage_total is None or self.storage_free is None or self.storage_total <= 0:
            return None
        return 100.0 * self.storage_free / self.storage_total


@dataclass(frozen=True)
class Verdict:
    """Fit for the next shift? ``reasons`` say why not; ``notes`` what is unknown or pending."""

    fit: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per check (battery, storage, clock, filesystem): ``{"status": ..., "message": ...}``."""
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``unfit``, ``charging``, ``fit?`` (something unknown) or ``fit``."""
        statuses = {c["status"] for c in self.checks.values()}
        if not self.fit:
            return "unfit"
        if CHARGING in statuses:
            return "charging"
        if UNKNOWN in statuses:
            return "fit?"
        return "fit"

    def as_dict(self) -> dict[str, Any]:
        return {"fit": self.fit, "label": self.label, "reasons": list(self.reasons),
                "notes": list(self.notes), "checks": {k: dict(v) for k, v in self.checks.items()}}


# --------------------------------------------------------------------------- samples


def fs_check_from_hints(hints: Mapping[str, str]) -> tuple[str, str]:
    """``(fs_check, detail)`` from the docking hints the udev source adds (``DOCKD_FSCK``)."""
    verdict = (hints.get("DOCKD_FSCK") or "").strip().lower()
    detail = (hints.get("DOCKD_FSCK_DETAIL") or "").strip()
    if not verdict:
        return FS_NOT_RUN, detail
    mapped = _FSCK_VERDICTS.get(verdict, FS_NOT_RUN)
    if mapped == FS_NOT_RUN and not detail:
        detail = f"fsck {verdict}"
    return mapped, detail


def clip_stats(mtimes: Iterable[float], now: datetime, clock_offset_s: float | None
               ) -> tuple[int, float | None]:
    """``(count, age of the oldest clip in seconds)``. File times are in the recorder's clock,
    so the age is corrected by its offset where known."""
    values = list(mtimes)
    if not values:
        return 0, None
    known = [v for v in values if v]  # 0: the file time is not known (not trusted)
    if not known:
        return len(values), None
    oldest = min(known) - (clock_offset_s or 0.0)
    return len(values), max(0.0, now.timestamp() - oldest)


def sample_from_health(health: RecorderHealth, *, serial: str, ts: datetime,
                       docking_id: int | None = None, source: str = SOURCE_DOCKING,
                       clip_count: int | None = None, oldest_clip_age_s: float | None = None,
                       fs_check: str = FS_NOT_RUN, fs_detail: str = "") -> HealthSample:
    """A sample from what a driver read off the recorder (``RecorderSnapshot.health``)."""
    return HealthSample(ts=ts, serial=serial, docking_id=docking_id, source=source,
                        battery=health.battery_percent, storage_total=health.storage_total,
                        storage_free=health.storage_free, clip_count=clip_count,
                        oldest_clip_age_s=oldest_clip_age_s, fs_check=fs_check,
                        fs_detail=fs_detail, firmware=health.firmware,
                        clock_offset_s=health.clock_offset_s)


def health_row(sample: HealthSample) -> dict[str, Any]:
    """The ``recorder_health`` row for a sample (column -> value, in :data:`HEALTH_COLUMNS`)."""
    if sample.ts.tzinfo is None:
        raise ValueError("naive datetime in a health sample")
    return {
        "ts": sample.ts.astimezone(UTC).isoformat(timespec="microseconds"),
        "serial": sample.serial, "docking_id": sample.docking_id, "source": sample.source,
        "battery": sample.battery, "storage_total": sample.storage_total,
        "storage_free": sample.storage_free, "clip_count": sample.clip_count,
        "oldest_clip_age_s": sample.oldest_clip_age_s, "fs_check": sample.fs_check,
        "fs_detail": sample.fs_detail, "firmware": sample.firmware,
        "clock_offset_s": sample.clock_offset_s,
    }


def sample_from_row(row: Mapping[str, Any]) -> HealthSample:
    """The inverse of :func:`health_row` (a row as read back from the state)."""
    return HealthSample(
        ts=_parse(row["ts"]), serial=row["serial"], docking_id=row.get("docking_id"),
        source=row.get("source") or SOURCE_DOCKING, battery=row.get("battery"),
        storage_total=row.get("storage_total"), storage_free=row.get("storage_free"),
        clip_count=row.get("clip_count"), oldest_clip_age_s=row.get("oldest_clip_age_s"),
        fs_check=row.get("fs_check") or FS_NOT_RUN, fs_detail=row.get("fs_detail") or "",
        firmware=row.get("firmware") or "", clock_offset_s=row.get("clock_offset_s"))


def _parse(value: str | datetime) -> datetime:
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- the verdict


def fitness(latest: HealthSample | None, history: Sequence[HealthSample], cfg: HealthConfig,
            now: datetime, docked_since: datetime | None, *,
            clock_set_at: datetime | None = None, dock_synced: bool | None = None) -> Verdict:
    """Is the recorder fit for the next shift?

    ``history``: earlier samples of the same recorder (any order; ``latest`` may be among
    them). ``docked_since``: when the current docking began, None when not docked now.
    ``clock_set_at``: when the dock last wrote the recorder's time-set file.
    ``dock_synced``: whether the dock's own clock is NTP-synchronised (None: unknown).
    """
    if latest is None:
        checks = {name: {"status": UNKNOWN, "message": "no health reading"}
                  for name in ("battery", "storage", "clock", "filesystem")}
        return Verdict(True, [], checks, ["no health reading yet"])
    current = [s for s in history
               if latest.docking_id is not None and s.docking_id == latest.docking_id]
    checks = {
        "battery": _battery(latest, current, cfg, now, docked_since),
        "storage": _storage(latest, cfg),
        "clock": _clock(latest, cfg, clock_set_at),
        "filesystem": _filesystem(latest, current),
    }
    reasons = [c["message"] for c in checks.values() if c["status"] == UNFIT]
    notes = [c["message"] for c in checks.values() if c["status"] in (UNKNOWN, CHARGING,
                                                                       CORRECTED)]
    if dock_synced is False and latest.clock_offset_s is not None:
        notes.append("dock clock not NTP-synchronised: the clock offset may be wrong")
    return Verdict(not reasons, reasons, checks, notes)


def _battery(s: HealthSample, current: Sequence[HealthSample], cfg: HealthConfig,
             now: datetime, docked_since: datetime | None) -> dict[str, Any]:
    if s.battery is None:
        return {"status": UNKNOWN, "message": "battery unknown", "value": None}
    need = cfg.min_battery_percent
    if s.battery >= need:
        return {"status": OK, "message": f"battery {s.battery}%", "value": s.battery}
    window = timedelta(minutes=cfg.charging_minutes)
    if docked_since is not None and now - docked_since < window:
        left = window - (now - docked_since)
        return {"status": CHARGING, "value": s.battery,
                "message": f"charging: battery {s.battery}% (needs {need}%, "
                           f"{_minutes(left)} of charging time left)"}
    message = f"battery {s.battery}% < {need}%"
    if docked_since is not None:
        message += f" after {_minutes(now - docked_since)} docked"
        first = min((x for x in current if x.battery is not None), key=lambda x: x.ts,
                    default=None)
        if first is not None and first.battery is not None and first.ts < s.ts \
                and s.battery <= first.battery:
            message += " (not charging?)"
    return {"status": UNFIT, "message": message, "value": s.battery}


def _storage(s: HealthSample, cfg: HealthConfig) -> dict[str, Any]:
    pct = s.free_percent
    if pct is None:
        return {"status": UNKNOWN, "message": "storage unknown", "value": None}
    if pct < cfg.min_free_percent:
        return {"status": UNFIT, "value": round(pct, 1),
                "message": f"storage nearly full: {pct:.1f}% free (< {cfg.min_free_percent:g}%)"}
    return {"status": OK, "message": f"storage {pct:.0f}% free", "value": round(pct, 1)}


def _clock(s: HealthSample, cfg: HealthConfig, clock_set_at: datetime | None
           ) -> dict[str, Any]:
    off = s.clock_offset_s
    if off is None:
        return {"status": UNKNOWN, "message": "clock offset unknown", "value": None}
    if abs(off) <= cfg.max_clock_offset_s:
        return {"status": OK, "message": f"clock {format_offset(off)}", "value": off}
    if clock_set_at is not None and clock_set_at >= s.ts:
        return {"status": CORRECTED, "value": off,
                "message": f"clock was off by {format_offset(off)}; set by the dock at "
                           f"{clock_set_at.astimezone(UTC):%Y-%m-%d %H:%M}Z "
                           "(confirmed at the next docking)"}
    return {"status": UNFIT, "message": f"clock off by {format_offset(off)}", "value": off}


def _filesystem(s: HealthSample, current: Sequence[HealthSample]) -> dict[str, Any]:
    errors = [x for x in (s, *current) if x.fs_check == FS_ERRORS]
    if errors:
        detail = next((x.fs_detail for x in errors if x.fs_detail), "")
        return {"status": UNFIT, "message": "filesystem errors" + (f": {detail}" if detail else ""),
                "value": FS_ERRORS}
    if s.fs_check == FS_OK:
        return {"status": OK, "message": "filesystem clean", "value": FS_OK}
    return {"status": NOT_RUN, "value": FS_NOT_RUN,
            "message": "filesystem not checked" + (f" ({s.fs_detail})" if s.fs_detail else "")}


def format_offset(seconds: float) -> str:
    """``+86400 s``, ``-3 s``, ``+0.4 s``: whole seconds once it is more than a few."""
    return f"{seconds:+.0f} s" if abs(seconds) >= 10 else f"{seconds:+.1f} s"


def _minutes(delta: timedelta) -> str:
    total = max(0, int(delta.total_seconds() // 60))
    hours, minutes = divmod(total, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


# --------------------------------------------------------------------------- trends


def per_docking(history: Iterable[HealthSample]) -> list[HealthSample]:
    """The last reading of each docking, oldest docking first (re-reads supersede the reading
    at docking). Samples without a docking each stand alone."""
    best: dict[object, HealthSample] = {}
    for s in sorted(history, key=lambda x: x.ts):
        key: object = s.docking_id if s.docking_id is not None else ("ts", s.ts)
        best[key] = s
    return sorted(best.values(), key=lambda x: x.ts)


def trend(history: Iterable[HealthSample]) -> dict[str, Any]:
    """Battery and storage per docking over time, and how they changed from first to last."""
    points = per_docking(history)

    def series(attr: str) -> list[Any]:
        return [getattr(p, attr) for p in points]

    def change(values: list[Any]) -> Any:
        known = [v for v in values if v is not None]
        return known[-1] - known[0] if len(known) >= 2 else None

    free_pct = [None if p.free_percent is None else round(p.free_percent, 1) for p in points]
    return {
        "dockings": len(points),
        "ts": [p.ts.isoformat() for p in points],
        "battery": series("battery"),
        "free_percent": free_pct,
        "clock_offset_s": series("clock_offset_s"),
        "battery_change": change(series("battery")),
        "free_percent_change": (None if change(free_pct) is None
                                else round(change(free_pct), 1)),
        "firmware_changes": sum(1 for a, b in zip(points, points[1:], strict=False)
                                if a.firmware and b.firmware and a.firmware != b.firmware),
    }
