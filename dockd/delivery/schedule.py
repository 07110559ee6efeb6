"""Deadline-aware delivery scheduling (pure: plain data in, plain data out).

R3: every docked clip must be on the dedicated storage within 24 h of docking. The queue is
earliest-deadline-first; the forecast assumes the measured throughput and drains the backlog
in that order, so each docking gets an estimated completion time. A docking is at
``warning`` level when its forecast completion falls later than ``deadline - margin`` or
when any of its clips has waited longer than ``warn_age``; ``alarm`` once the deadline has
passed with clips undelivered, or when a required target refuses permanently.

Bandwidth caps (``"40 MB/s"``, or a schedule ``"08:00-18:00=10 MB/s,*=80 MB/s"``) are parsed
by :mod:`dockd.config_types`; :class:`Pacer` enforces them with a thread-safe token bucket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

# the bandwidth syntax is the configuration's (config-check reports a bad one)
from ..config_types import RateRule
from ..config_types import parse_bandwidth as parse_bandwidth
from ..config_types import parse_rate as parse_rate

OK, WARNING, ALARM = "ok", "warning", "alarm"


@dataclass(frozen=True)
class Pending:
    """What is left to deliver of one docking (to the slowest required target)."""

    docking_id: int
    serial: str
    port: str
    deadline: datetime
    docked_at: datetime
    bytes_left: int
    clips_left: int
    permanent_failures: int = 0


@dataclass(frozen=True)
class Forecast:
    docking_id: int
    serial: str
    port: str
    deadline: datetime
    eta: datetime | None
    """Forecast completion at the measured throughput; None when nothing was measured yet."""
    margin_s: float | None
    """deadline - eta (negative: forecast to miss)."""
    bytes_left: int
    clips_left: int
    level: str
    reasons: tuple[str, ...] = field(default_factory=tuple)
    codes: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    """The reasons as data (``code`` and values, times in UTC ISO) for translated pages."""


def forecast(items: Sequence[Pending], now: datetime, throughput_bps: float | None, *,
             warn_margin: timedelta = timedelta(hours=6),
             warn_age: timedelta = timedelta(hours=18)) -> list[Forecast]:
    """Forecast each docking's completion, draining ``items`` earliest deadline first."""
    out: list[Forecast] = []
    cumulative = 0
    for it in sorted(items, key=lambda p: (p.deadline, p.docking_id)):
        cumulative += it.bytes_left
        eta = (now + timedelta(seconds=cumulative / throughput_bps)
               if throughput_bps and throughput_bps > 0 else None)
        margin = (it.deadline - eta).total_seconds() if eta else None
        reasons: list[str] = []
        codes: list[dict[str, Any]] = []
        level = OK
        if it.clips_left and now >= it.deadline:
            level = ALARM
            reasons.append(f"deadline {it.deadline.isoformat(timespec='minutes')} missed with "
                           f"{it.clips_left} clip(s) undelivered")
            codes.append({"code": "missed", "deadline": it.deadline.isoformat(),
                          "clips": it.clips_left})
        if it.permanent_failures:
            level = ALARM
            reasons.append(f"{it.permanent_failures} delivery(ies) failed permanently")
            codes.append({"code": "failed", "count": it.permanent_failures})
        if level != ALARM and it.clips_left:
            if eta is not None and eta > it.deadline - warn_margin:
                level = WARNING
                reasons.append(f"forecast completion {eta.isoformat(timespec='minutes')} is "
                               f"within {warn_margin} of the deadline")
                codes.append({"code": "late", "eta": eta.isoformat(),
                              "margin_h": round(warn_margin.total_seconds() / 3600, 1)})
            if now - it.docked_at > warn_age:
                level = WARNING
                reasons.append(f"clips waiting {_hours(now - it.docked_at)} since docking "
                               f"(warn after {_hours(warn_age)})")
                codes.append({"code": "waiting",
                              "hours": round((now - it.docked_at).total_seconds() / 3600, 1),
                              "warn_h": round(warn_age.total_seconds() / 3600, 1)})
        out.append(Forecast(it.docking_id, it.serial, it.port, it.deadline, eta, margin,
                            it.bytes_left, it.clips_left, level, tuple(reasons), tuple(codes)))
    return out


def _hours(td: timedelta) -> str:
    return f"{td.total_seconds() / 3600:.1f} h"


def measured_throughput(samples: Sequence[tuple[int, float]]) -> float | None:
    """Bytes per second over recent transfers ``(bytes, seconds)``; None without data."""
    total_b = sum(b for b, _ in samples)
    total_s = sum(s for _, s in samples)
    if total_b <= 0 or total_s <= 0:
        return None
    return total_b / total_s


# --------------------------------------------------------------------------- bandwidth


def rate_at(rules: Sequence[RateRule], local: datetime) -> float | None:
    """The cap in force at local time ``local`` (first matching rule; windows may wrap midnight)."""
    t = local.time()
    for r in rules:
        if r.start is None or r.end is None:
            return r.bytes_per_s
        inside = (r.start <= t < r.end) if r.start <= r.end else (t >= r.start or t < r.end)
        if inside:
            return r.bytes_per_s
    return None


class Pacer:
    """Thread-safe token bucket shared by a target's uploads. ``consume(n)`` blocks until
    ``n`` bytes may be sent under the cap in force; a burst of at most one second is allowed."""

    def __init__(self, rules: Sequence[RateRule], *, now: Callable[[], datetime],
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rules = list(rules)
        self._now = now
        self._mono = monotonic
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = monotonic()

    def consume(self, n: int) -> float:
        """Account for ``n`` bytes; returns the seconds slept."""
        if not self.rules:
            return 0.0
        slept = 0.0
        with self._lock:
            rate = rate_at(self.rules, self._now())
            if rate is None:
                return 0.0
            t = self._mono()
            self._tokens = min(rate, self._tokens + (t - self._last) * rate)
            self._last = t
            self._tokens -= n
            if self._tokens < 0:
                slept = -self._tokens / rate
        if slept:
            self._sleep(slept)
        return slept
