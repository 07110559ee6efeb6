"""Deadline forecast and bandwidth pacing (R3), pure, with an injected clock (the alerts they
raise over a real state database: tests/integration/test_queue_alerts.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockd.delivery.schedule import (
    ALARM,
    OK,
    WARNING,
    Pacer,
    Pending,
    forecast,
    measured_throughput,
    parse_bandwidth,
    parse_rate,
    rate_at,
)

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)


def pend(i: int, docked: datetime, gb: float, clips: int = 3, failed: int = 0) -> Pending:
    return Pending(i, f"S{i}", f"port-{i:02d}", docked + 24 * H, docked, int(gb * 1e9), clips,
                   failed)


def test_forecast_drains_earliest_deadline_first_at_measured_rate():
    items = [pend(2, T0, 3.6), pend(1, T0 - H, 3.6)]
    fc = forecast(items, T0, 1e6)  # 1 MB/s: 3.6 GB takes 1 h
    assert [f.docking_id for f in fc] == [1, 2]
    assert fc[0].eta == T0 + H and fc[1].eta == T0 + 2 * H
    assert fc[0].margin_s == pytest.approx((23 * H - H).total_seconds())
    assert all(f.level == OK for f in fc)


def test_warning_when_forecast_is_within_margin_and_alarm_when_missed():
    items = [pend(1, T0, 3.6 * 19)]  # 19 h of transfer at 1 MB/s; deadline in 24 h
    assert forecast(items, T0, 1e6)[0].level == WARNING  # 19 h > 24 h - 6 h
    assert forecast(items, T0, 2e6)[0].level == OK  # 9.5 h
    late = forecast(items, T0 + 24 * H, 2e6)[0]
    assert late.level == ALARM and "missed" in late.reasons[0]


def test_warning_when_clips_wait_too_long_even_without_throughput():
    fc = forecast([pend(1, T0, 0.001)], T0 + 18 * H + timedelta(minutes=1), None)[0]
    assert fc.eta is None and fc.level == WARNING and "waiting" in fc.reasons[0]
    assert forecast([pend(1, T0, 0.001)], T0 + 17 * H, None)[0].level == OK


def test_permanent_failure_is_an_alarm():
    assert forecast([pend(1, T0, 1, failed=1)], T0, 1e9)[0].level == ALARM


@given(st.lists(st.tuples(st.integers(0, 10**10), st.floats(0.001, 1e4)), min_size=1))
def test_measured_throughput_is_total_bytes_over_total_time(samples):
    bps = measured_throughput(samples)
    total_b = sum(b for b, _ in samples)
    if total_b == 0:
        assert bps is None
    else:
        assert bps == pytest.approx(total_b / sum(s for _, s in samples))


@pytest.mark.parametrize("text,bps", [("40 MB/s", 40e6), ("10MiB/s", 10 * 2**20), ("", None),
                                      ("off", None), ("1 GB/s", 1e9)])
def test_parse_rate(text, bps):
    assert parse_rate(text) == bps


@pytest.mark.parametrize("bad", ["fast", "-3 MB/s", "08:00-18:00=lots", "8-18=1MB/s"])
def test_bad_bandwidth(bad):
    with pytest.raises(ValueError):
        parse_bandwidth(bad)


def test_schedule_windows_including_midnight_wrap():
    rules = parse_bandwidth("08:00-18:00=10 MB/s,22:00-06:00=off,*=80 MB/s")
    day = datetime(2026, 11, 23, 12, 0)
    assert rate_at(rules, day) == 10e6
    assert rate_at(rules, day.replace(hour=23)) is None
    assert rate_at(rules, day.replace(hour=3)) is None
    assert rate_at(rules, day.replace(hour=19)) == 80e6


def test_pacer_holds_the_average_rate():
    clock = [0.0]
    slept = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    p = Pacer(parse_bandwidth("10 MB/s"), now=lambda: T0, monotonic=lambda: clock[0],
              sleep=sleep)
    for _ in range(100):
        p.consume(1_000_000)  # 100 MB
    assert clock[0] == pytest.approx(10.0, rel=0.02)  # 100 MB at 10 MB/s
    unlimited = Pacer([], now=lambda: T0)
    assert unlimited.consume(10**12) == 0.0
