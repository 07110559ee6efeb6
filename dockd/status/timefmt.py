"""Times for people: in the dock's time zone, with the zone named (``2026-12-01 08:36
UTC+8``). The state, the JSON output and the manifests keep UTC ISO 8601; only what is
printed for a reader goes through here."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

from ..store import parse_iso


def zone_label(dt: datetime) -> str:
    """``UTC+8``, ``UTC-3:30``, ``UTC`` for an aware datetime."""
    off = dt.utcoffset()
    if off is None:
        return ""
    minutes = int(off.total_seconds() // 60)
    if minutes == 0:
        return "UTC"
    sign = "+" if minutes > 0 else "-"
    h, m = divmod(abs(minutes), 60)
    return f"UTC{sign}{h}" + (f":{m:02d}" if m else "")


def _aware(value: str | datetime | None) -> datetime | None:
    dt = parse_iso(value) if isinstance(value, str) else value
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def local_time(value: str | datetime | None, tz: tzinfo, *, seconds: bool = False,
               date: bool = True, zone: bool = True) -> str:
    """``value`` (UTC ISO text or an aware datetime) in ``tz`` for a reader; ``-`` if None."""
    dt = _aware(value)
    if dt is None:
        return "-"
    dt = dt.astimezone(tz)
    fmt = ("%Y-%m-%d " if date else "") + ("%H:%M:%S" if seconds else "%H:%M")
    return dt.strftime(fmt) + (f" {zone_label(dt)}" if zone else "")


def zone_of(tz: tzinfo, at: datetime | None = None) -> str:
    """The zone ``tz`` spelled for a table caption: ``Asia/Shanghai, UTC+8``."""
    now = (at or datetime.now(UTC)).astimezone(tz)
    name = getattr(tz, "key", None) or str(tz)
    return f"{name}, {zone_label(now)}"
