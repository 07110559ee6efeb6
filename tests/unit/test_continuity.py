"""Timeline, gaps and sessions (dockd.integrity.continuity): rules R1/R2, pure code."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockd.integrity.continuity import (
    GAP_INTERRUPTION,
    GAP_SESSION_BREAK,
    ClipTiming,
    ContinuityParams,
    build_timeline,
    natural_key,
)

T0 = datetime(2026, 5, 4, 8, 30, tzinfo=UTC)
PARAMS = ContinuityParams()
TOL_US = int(PARAMS.split_tolerance_s * 1_000_000)
BREAK_US = int(PARAMS.session_break_s * 1_000_000)


def clip(i: int, start_s: float, duration_s: float | None, name: str | None = None) -> ClipTiming:
    return ClipTiming(clip_id=i, name=name or f"AB1234_0012345_20260504_{i:04d}.MP4",
                      start=T0 + timedelta(seconds=start_s), duration_s=duration_s)


def kinds(findings: list[dict]) -> list[str]:
    return [f["kind"] for f in findings]


# --- examples ---------------------------------------------------------------------------

def test_empty() -> None:
    tl = build_timeline([])
    assert tl.sessions == [] and tl.gaps == [] and tl.findings == []


def test_recorder_splits_are_not_gaps() -> None:
    # Reference recorder: 10 s segments, 10.005-10.028 s apart.
    clips, t = [], 0.0
    for i, step in enumerate([10.005, 10.028, 10.012, 10.02]):
        clips.append(clip(i, t, 10.0))
        t += step
    tl = build_timeline(clips)
    assert tl.gaps == [] and tl.findings == []
    assert len(tl.sessions) == 1 and len(tl.sessions[0].runs) == 1
    assert [c.clip_id for c in tl.sessions[0].clips] == [0, 1, 2, 3]


def test_interruption_and_session_break() -> None:
    clips = [clip(0, 0, 600), clip(1, 600.01, 300), clip(2, 960, 120),   # 60 s interruption
             clip(3, 1080 + 3600, 60)]                                   # 1 h later: new session
    tl = build_timeline(clips)
    assert len(tl.gaps) == 1
    gap = tl.gaps[0]
    assert (gap.kind, gap.before_clip, gap.after_clip) == (GAP_INTERRUPTION, 1, 2)
    assert gap.length_s == pytest.approx(59.99, abs=1e-6)
    assert gap.start == T0 + timedelta(seconds=900.01) and gap.end == T0 + timedelta(seconds=960)
    assert len(tl.sessions) == 2
    assert [len(s.runs) for s in tl.sessions] == [2, 1]
    assert tl.sessions[0].gaps == (gap,)
    assert [(b.kind, b.before_clip, b.after_clip) for b in tl.session_breaks] == [
        (GAP_SESSION_BREAK, 2, 3)]
    assert tl.session_breaks[0].length_s == pytest.approx(3600)


def test_spacing_at_the_limits() -> None:
    p = ContinuityParams(split_tolerance_s=1.0, session_break_s=1800)
    assert build_timeline([clip(0, 0, 10), clip(1, 11.0, 5)], p).gaps == []
    assert len(build_timeline([clip(0, 0, 10), clip(1, 11.001, 5)], p).gaps) == 1
    tl = build_timeline([clip(0, 0, 10), clip(1, 1810, 5)], p)
    assert len(tl.gaps) == 1 and len(tl.sessions) == 1
    tl = build_timeline([clip(0, 0, 10), clip(1, 1810.001, 5)], p)
    assert tl.gaps == [] and len(tl.sessions) == 2


def test_small_negative_spacing_is_a_split() -> None:
    tl = build_timeline([clip(0, 0, 10.5), clip(1, 10.0, 10)])
    assert tl.gaps == [] and tl.findings == []


def test_overlap_is_a_finding() -> None:
    tl = build_timeline([clip(0, 0, 60), clip(1, 30, 60), clip(2, 95, 10)])
    assert kinds(tl.findings) == ["overlap"]
    f = tl.findings[0]
    assert f["severity"] == "warning" and f["detail"]["overlap_s"] == pytest.approx(30)
    assert (f["detail"]["before_clip"], f["detail"]["after_clip"]) == (0, 1)
    # The run ends at the later end (90 s): the next clip 5 s later is an interruption.
    assert [(g.before_clip, g.after_clip, round(g.length_s, 6)) for g in tl.gaps] == [(1, 2, 5.0)]


def test_gap_measured_from_latest_end_of_run() -> None:
    # Clip 1 lies inside clip 0; the gap before clip 2 starts where clip 0 ends.
    tl = build_timeline([clip(0, 0, 100), clip(1, 10, 20), clip(2, 130, 10)])
    assert kinds(tl.findings) == ["overlap"]
    assert [(g.before_clip, g.after_clip, g.length_s) for g in tl.gaps] == [(0, 2, 30.0)]


def test_out_of_order_names() -> None:
    clips = [clip(0, 0, 10, "REC_0002.MP4"), clip(1, 10, 10, "REC_0001.MP4")]
    tl = build_timeline(clips)
    assert kinds(tl.findings) == ["out_of_order"]
    assert tl.findings[0]["detail"]["before_name"] == "REC_0002.MP4"


def test_names_compare_digit_runs_as_numbers() -> None:
    clips = [clip(0, 0, 10, "REC_9.MP4"), clip(1, 10, 10, "REC_10.MP4")]
    assert build_timeline(clips).findings == []
    assert natural_key("a_9") < natural_key("a_10") < natural_key("b_1")


def test_input_order_does_not_matter() -> None:
    clips = [clip(i, i * 10 + (30 if i >= 3 else 0), 10) for i in range(6)]
    shuffled = clips[:]
    random.Random(4).shuffle(shuffled)
    assert build_timeline(shuffled).to_dict() == build_timeline(clips).to_dict()


def test_unknown_duration_uses_next_start() -> None:
    tl = build_timeline([clip(0, 0, None), clip(1, 45, 10), clip(2, 100, float("nan"))])
    assert tl.gaps[0].before_clip == 1 and tl.gaps[0].length_s == pytest.approx(45)
    assert kinds(tl.findings) == ["unknown_duration", "unknown_duration"]
    assert [f["detail"]["clip"] for f in tl.findings] == [0, 2]
    assert tl.sessions[0].runs[0].end == T0 + timedelta(seconds=55)
    assert tl.sessions[0].runs[-1].length_s == 0


def test_other_time_zones_are_accepted() -> None:
    beijing = timezone(timedelta(hours=8))
    a = ClipTiming(1, "a_1", datetime(2026, 5, 4, 16, 30, tzinfo=beijing), 10)
    b = ClipTiming(2, "a_2", datetime(2026, 5, 4, 8, 30, 40, tzinfo=UTC), 10)
    tl = build_timeline([a, b])
    assert tl.gaps[0].length_s == 30


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_timeline([ClipTiming(1, "x", datetime(2026, 1, 1), 10)])


@pytest.mark.parametrize("kwargs", [{"split_tolerance_s": -1}, {"session_break_s": 0.5},
                                    {"split_tolerance_s": float("inf")}])
def test_params_are_validated(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ContinuityParams(**kwargs)


def test_to_dict_is_json() -> None:
    tl = build_timeline([clip(0, 0, 60), clip(1, 50, 10), clip(2, 100, 10),
                         clip(3, 5000, None)])
    d = json.loads(json.dumps(tl.to_dict()))
    assert set(d) == {"sessions", "gaps", "session_breaks", "findings"}
    assert d["gaps"][0] == {"kind": "interruption", "before_clip": 1, "after_clip": 2,
                            "start": "2026-05-04T08:31:00+00:00",
                            "end": "2026-05-04T08:31:40+00:00", "length_s": 40.0}
    assert d["sessions"][0]["runs"][0]["clips"] == [0, 1]
    assert kinds(d["findings"]) == ["unknown_duration", "overlap"]


# --- properties -------------------------------------------------------------------------
# Times are whole microseconds so that "true length" is exact; lengths must match to 1e-6.

durations_us = st.integers(min_value=1_000_000, max_value=1_800_000_000)   # 1 s .. 30 min
split_us = st.integers(min_value=-TOL_US, max_value=TOL_US)
interruption_us = st.integers(min_value=TOL_US + 1, max_value=BREAK_US)
break_us = st.integers(min_value=BREAK_US + 1, max_value=3 * 86_400_000_000)
starts = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1),
                      timezones=st.just(UTC))


def make_clips(t0: datetime, durs: list[int], spacings: list[int]) -> list[ClipTiming]:
    out, t = [], 0
    for i, d in enumerate(durs):
        out.append(ClipTiming(clip_id=f"c{i}", name=f"REC_{i:05d}.MP4",
                              start=t0 + timedelta(microseconds=t), duration_s=d / 1e6))
        if i < len(spacings):
            t += d + spacings[i]
    return out


@settings(max_examples=200, deadline=None)
@given(t0=starts, data=st.data(), durs=st.lists(durations_us, min_size=1, max_size=40))
def test_property_continuous_recording_has_no_gap(t0: datetime, data: st.DataObject,
                                                   durs: list[int]) -> None:
    spacings = data.draw(st.lists(split_us, min_size=len(durs) - 1, max_size=len(durs) - 1))
    clips = make_clips(t0, durs, spacings)
    tl = build_timeline(data.draw(st.permutations(clips)))
    assert tl.gaps == [] and tl.session_breaks == [] and tl.findings == []
    assert len(tl.sessions) == 1 and len(tl.sessions[0].runs) == 1
    assert tl.sessions[0].clips == tuple(clips)


@settings(max_examples=200, deadline=None)
@given(t0=starts, data=st.data(), durs=st.lists(durations_us, min_size=2, max_size=30))
def test_property_inserted_gap_found_once_with_true_length(t0: datetime, data: st.DataObject,
                                                          durs: list[int]) -> None:
    spacings = data.draw(st.lists(split_us, min_size=len(durs) - 1, max_size=len(durs) - 1))
    k = data.draw(st.integers(min_value=1, max_value=len(durs) - 1))
    gap_us = data.draw(interruption_us)
    spacings[k - 1] = gap_us
    clips = make_clips(t0, durs, spacings)
    tl = build_timeline(clips)
    assert len(tl.gaps) == 1 and tl.findings == [] and len(tl.sessions) == 1
    gap = tl.gaps[0]
    assert (gap.kind, gap.before_clip, gap.after_clip) == (GAP_INTERRUPTION, f"c{k - 1}", f"c{k}")
    assert abs(gap.length_s - gap_us / 1e6) <= 1e-6
    assert gap.end == clips[k].start
    assert abs((gap.end - gap.start).total_seconds() - gap_us / 1e6) <= 1e-6
    assert [len(r.clips) for r in tl.sessions[0].runs] == [k, len(durs) - k]


@settings(max_examples=200, deadline=None)
@given(t0=starts, data=st.data(), durs=st.lists(durations_us, min_size=1, max_size=30))
def test_property_mixed_gaps_and_session_breaks(t0: datetime, data: st.DataObject,
                                                durs: list[int]) -> None:
    n = len(durs) - 1
    kinds_ = data.draw(st.lists(st.sampled_from(["split", "gap", "break"]), min_size=n,
                                max_size=n))
    spacings = [data.draw({"split": split_us, "gap": interruption_us, "break": break_us}[k])
                for k in kinds_]
    clips = make_clips(t0, durs, spacings)
    tl = build_timeline(clips)
    want_gaps = [(f"c{i}", f"c{i + 1}", s) for i, (k, s) in enumerate(zip(kinds_, spacings,
                 strict=True)) if k == "gap"]
    assert [(g.before_clip, g.after_clip) for g in tl.gaps] == [w[:2] for w in want_gaps]
    for g, (_, _, s) in zip(tl.gaps, want_gaps, strict=True):
        assert abs(g.length_s - s / 1e6) <= 1e-6
    assert len(tl.sessions) == kinds_.count("break") + 1
    assert len(tl.session_breaks) == kinds_.count("break")
    assert sum(len(s.gaps) for s in tl.sessions) == len(tl.gaps)
    assert sum(len(s.runs) for s in tl.sessions) == n + 1 - kinds_.count("split")
    assert tuple(c for s in tl.sessions for c in s.clips) == tuple(clips)
    assert tl.findings == []
