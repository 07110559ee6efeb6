"""Pure fit-for-next-shift verdicts (R9): each reason, unknowns, the charging window, trends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dockd.config import HealthConfig
from dockd.devices import health
from dockd.devices.health import HealthSample, fitness
from dockd.model import RecorderHealth

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CFG = HealthConfig(min_battery_percent=80, charging_minutes=120, min_free_percent=10,
                   max_clock_offset_s=10)
GB = 1 << 30


def sample(**kw: object) -> HealthSample:
    base: dict[str, object] = dict(ts=NOW - timedelta(minutes=5), serial="A1", docking_id=1,
                                   battery=95, storage_total=64 * GB, storage_free=40 * GB,
                                   fs_check="ok", firmware="V2", clock_offset_s=0.4)
    base.update(kw)
    return HealthSample(**base)  # type: ignore[arg-type]


def test_healthy_recorder_is_fit() -> None:
    v = fitness(sample(), [], CFG, NOW, None)
    assert v.fit and v.reasons == [] and v.notes == [] and v.label == "fit"
    assert {c["status"] for c in v.checks.values()} == {"ok"}


def test_low_battery_while_charging_is_not_unfit() -> None:
    s = sample(battery=40)
    v = fitness(s, [s], CFG, NOW, docked_since=NOW - timedelta(minutes=30))
    assert v.fit and v.label == "charging"
    assert v.checks["battery"]["status"] == "charging"
    assert "1 h 30 min of charging time left" in v.notes[0]


def test_low_battery_after_charging_time_is_unfit() -> None:
    first = sample(battery=40, ts=NOW - timedelta(minutes=150))
    later = sample(battery=40, ts=NOW - timedelta(minutes=1), source="reread")
    v = fitness(later, [first, later], CFG, NOW, docked_since=NOW - timedelta(minutes=150))
    assert not v.fit and v.label == "unfit"
    assert v.reasons == ["battery 40% < 80% after 2 h 30 min docked (not charging?)"]


def test_low_battery_of_an_undocked_recorder_is_unfit() -> None:
    v = fitness(sample(battery=79), [], CFG, NOW, docked_since=None)
    assert not v.fit and v.reasons == ["battery 79% < 80%"]


def test_storage_nearly_full() -> None:
    v = fitness(sample(storage_free=3 * GB), [], CFG, NOW, None)
    assert not v.fit
    assert v.reasons == ["storage nearly full: 4.7% free (< 10%)"]


def test_clock_one_day_off() -> None:
    v = fitness(sample(clock_offset_s=86400.0), [], CFG, NOW, None)
    assert not v.fit and v.reasons == ["clock off by +86400 s"]
    v = fitness(sample(clock_offset_s=-12.0), [], CFG, NOW, None)
    assert v.reasons == ["clock off by -12 s"]
    assert fitness(sample(clock_offset_s=-9.6), [], CFG, NOW, None).fit


def test_clock_set_after_the_reading_is_corrected_not_unfit() -> None:
    s = sample(clock_offset_s=86400.0)
    v = fitness(s, [s], CFG, NOW, None, clock_set_at=s.ts + timedelta(minutes=2))
    assert v.fit and v.checks["clock"]["status"] == "corrected"
    assert "clock was off by +86400 s" in v.notes[0]
    # a later reading that is still off: the setting did not take
    v = fitness(s, [s], CFG, NOW, None, clock_set_at=s.ts - timedelta(days=1))
    assert not v.fit and v.reasons == ["clock off by +86400 s"]


def test_filesystem_errors_in_any_reading_of_the_docking() -> None:
    bad = sample(fs_check="errors", fs_detail="dirty bit set", ts=NOW - timedelta(minutes=9))
    now_ok = sample(fs_check="not_run")
    v = fitness(now_ok, [bad, now_ok], CFG, NOW, None)
    assert not v.fit and v.reasons == ["filesystem errors: dirty bit set"]
    # errors of an earlier docking do not count against this one
    old = sample(fs_check="errors", docking_id=0, ts=NOW - timedelta(days=3))
    assert fitness(sample(), [old], CFG, NOW, None).fit


def test_unknowns_are_notes_not_reasons() -> None:
    s = sample(battery=None, storage_total=None, storage_free=None, clock_offset_s=None,
               fs_check="not_run")
    v = fitness(s, [], CFG, NOW, None)
    assert v.fit and v.reasons == [] and v.label == "fit?"
    assert v.notes == ["battery unknown", "storage unknown", "clock offset unknown"]
    assert v.checks["filesystem"] == {"status": "not_run", "value": "not_run",
                                      "message": "filesystem not checked"}
    v = fitness(sample(fs_check="not_run"), [], CFG, NOW, None)
    assert v.label == "fit" and v.notes == []
    assert fitness(sample(storage_total=0, storage_free=0), [], CFG, NOW, None).fit


def test_no_reading_at_all() -> None:
    v = fitness(None, [], CFG, NOW, None)
    assert v.fit and v.label == "fit?" and v.notes == ["no health reading yet"]


def test_several_reasons_and_dock_not_synced() -> None:
    s = sample(battery=10, storage_free=0, clock_offset_s=-3600.0, fs_check="errors")
    v = fitness(s, [], CFG, NOW, None, dock_synced=False)
    assert [r.split(" ")[0] for r in v.reasons] == ["battery", "storage", "clock", "filesystem"]
    assert "dock clock not NTP-synchronised" in v.notes[-1]
    assert v.as_dict()["label"] == "unfit"


@pytest.mark.parametrize(("hints", "expected"), [
    ({}, ("not_run", "")),
    ({"DOCKD_FSCK": "clean"}, ("ok", "")),
    ({"DOCKD_FSCK": "errors", "DOCKD_FSCK_DETAIL": "x"}, ("errors", "x")),
    ({"DOCKD_FSCK": "unsupported"}, ("not_run", "fsck unsupported")),
    ({"DOCKD_FSCK": "failed", "DOCKD_FSCK_DETAIL": "timeout"}, ("not_run", "timeout")),
])
def test_fs_check_from_hints(hints: dict[str, str], expected: tuple[str, str]) -> None:
    assert health.fs_check_from_hints(hints) == expected


def test_samples_rows_and_clip_stats() -> None:
    h = RecorderHealth(battery_percent=70, firmware="V9", storage_total=100, storage_free=20,
                       recorder_clock=NOW + timedelta(seconds=5), clock_reference=NOW)
    count, oldest = health.clip_stats([NOW.timestamp() - 100 + 5, NOW.timestamp()], NOW, 5.0)
    assert (count, oldest) == (2, 100.0)
    assert health.clip_stats([], NOW, None) == (0, None)
    assert health.clip_stats([0.0, 0.0], NOW, None) == (2, None)  # times not trusted
    assert health.clip_stats([0.0, NOW.timestamp() - 60], NOW, None) == (2, 60.0)
    s = health.sample_from_health(h, serial="A1", ts=NOW, docking_id=3, clip_count=count,
                                  oldest_clip_age_s=oldest, fs_check="ok")
    row = health.health_row(s)
    assert tuple(row) == health.HEALTH_COLUMNS
    assert row["clock_offset_s"] == 5.0 and row["ts"].startswith("2026-11-23T12:00:00")
    assert health.sample_from_row(row) == s
    with pytest.raises(ValueError):
        health.health_row(sample(ts=datetime(2026, 1, 1)))


def test_trend_per_docking() -> None:
    day = timedelta(days=1)
    hist = [
        sample(docking_id=1, ts=NOW - 3 * day, battery=90, storage_free=40 * GB),
        sample(docking_id=1, ts=NOW - 3 * day + timedelta(hours=2), battery=100,
               storage_free=40 * GB, source="reread"),
        sample(docking_id=2, ts=NOW - 2 * day, battery=85, storage_free=30 * GB),
        sample(docking_id=3, ts=NOW - day, battery=None, storage_free=20 * GB, firmware="V3"),
    ]
    assert [s.docking_id for s in health.per_docking(reversed(hist))] == [1, 2, 3]
    t = health.trend(hist)
    assert t["dockings"] == 3
    assert t["battery"] == [100, 85, None]
    assert t["battery_change"] == -15
    assert t["free_percent"] == [62.5, 46.9, 31.2]
    assert t["free_percent_change"] == pytest.approx(-31.3)
    assert t["firmware_changes"] == 1


def test_format_offset() -> None:
    assert health.format_offset(86400) == "+86400 s"
    assert health.format_offset(-0.44) == "-0.4 s"
    assert health.format_offset(9.96) == "+10.0 s"
