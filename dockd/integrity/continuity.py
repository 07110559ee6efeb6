"""A recorder's timeline: runs of continuous recording, the gaps between them, sessions.

Rules R1/R2: on-site recording is continuous from arrival to the end of the activity; when it
stops for an objective reason the officer states the reason by voice when recording resumes.
This module finds every place where it stopped. It is pure: plain data in, plain data out,
no I/O and no third-party imports.

Terms (all spacings are seconds from the end of the recording so far to the start of the
next clip, after the recorder's clock offset has been corrected by the caller):

- **split**: ``|spacing| <= split_tolerance_s``. Recorders (GA/T 947) cut long recordings
  into segments without loss; measured spacing is well under 0.1 s. Same run.
- **interruption**: ``split_tolerance_s < spacing <= session_break_s``. Recording stopped
  and resumed at the same site: a :class:`Gap` that needs a spoken note (R2).
- **session break**: ``spacing > session_break_s``. A new place or time, which the rules
  allow; a new :class:`Session` starts.
- **overlap** (finding): ``spacing < -split_tolerance_s``. Two clips claim the same time:
  a clock jump or tampering. The clip stays in the run.
- **out_of_order** (finding): sorted by start time, a clip's name sorts before the one
  before it (names compared with digit runs as numbers). Clock jump or tampering.
- **unknown_duration** (finding): a clip without a duration is assumed to last until the
  next clip starts, so no gap can be detected after it.

Times in the output are UTC ``datetime``; lengths are float seconds computed from the clip
starts and durations without rounding through ``timedelta``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..model import Finding

log = logging.getLogger(__name__)

GAP_INTERRUPTION = "interruption"
GAP_SESSION_BREAK = "session_break"

_DIGITS = re.compile(r"(\d+)")
_EPS = 1e-7
"""Slack for float rounding in comparisons: a tenth of ``datetime``'s microsecond."""


@dataclass(frozen=True)
class ClipTiming:
    """When one clip was recorded. ``start`` is timezone-aware UTC, clock offset corrected."""

    clip_id: str | int
    name: str
    start: datetime
    duration_s: float | None


@dataclass(frozen=True)
class ContinuityParams:
    split_tolerance_s: float = 1.0
    """Spacing (either sign) up to this is a lossless recorder split, not a gap."""
    session_break_s: float = 1800.0
    """Spacing above this starts a new session (new place/time, allowed by R1)."""

    def __post_init__(self) -> None:
        if not (self.split_tolerance_s >= 0 and math.isfinite(self.split_tolerance_s)):
            raise ValueError("split_tolerance_s must be a finite number >= 0")
        if not (self.session_break_s > self.split_tolerance_s):
            raise ValueError("session_break_s must be greater than split_tolerance_s")


@dataclass(frozen=True)
class Run:
    """Clips recorded back to back (split by the recorder, not interrupted)."""

    clips: tuple[ClipTiming, ...]
    start: datetime
    end: datetime

    @property
    def length_s(self) -> float:
        return (self.end - self.start).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "length_s": round(self.length_s, 6),
            "clips": [c.clip_id for c in self.clips],
        }


@dataclass(frozen=True)
class Gap:
    """Recording stopped after ``before_clip`` and resumed with ``after_clip``."""

    kind: str  # GAP_INTERRUPTION | GAP_SESSION_BREAK
    before_clip: str | int
    after_clip: str | int
    start: datetime
    end: datetime
    length_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "before_clip": self.before_clip,
            "after_clip": self.after_clip,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "length_s": round(self.length_s, 6),
        }


@dataclass(frozen=True)
class Session:
    """Recording at one place/time: runs separated by interruptions (``gaps``)."""

    runs: tuple[Run, ...]
    gaps: tuple[Gap, ...]

    @property
    def start(self) -> datetime:
        return self.runs[0].start

    @property
    def end(self) -> datetime:
        return self.runs[-1].end

    @property
    def clips(self) -> tuple[ClipTiming, ...]:
        return tuple(c for r in self.runs for c in r.clips)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "runs": [r.to_dict() for r in self.runs],
            "gaps": [g.to_dict() for g in self.gaps],
        }


@dataclass(frozen=True)
class Timeline:
    sessions: list[Session]
    gaps: list[Gap]
    """Every interruption, in time order; each needs a spoken note (R2)."""
    findings: list[dict[str, Any]]
    """``Finding.as_dict()`` entries: overlap, out_of_order, unknown_duration."""
    session_breaks: list[Gap] = field(default_factory=list)
    """Spacings long enough to start a new session (kind ``session_break``); no note needed."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessions": [s.to_dict() for s in self.sessions],
            "gaps": [g.to_dict() for g in self.gaps],
            "session_breaks": [g.to_dict() for g in self.session_breaks],
            "findings": [dict(f) for f in self.findings],
        }


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that compares digit runs as numbers: ``clip_9`` < ``clip_10``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _DIGITS.split(name) if p)


def _finding(kind: str, severity: str, message: str, **detail: Any) -> dict[str, Any]:
    return Finding(kind=kind, severity=severity, message=message, detail=detail).as_dict()


def _known_duration(clip: ClipTiming) -> float | None:
    d = clip.duration_s
    if d is None or isinstance(d, bool) or not math.isfinite(d) or d < 0:
        return None
    return float(d)


def build_timeline(
    clips: list[ClipTiming] | tuple[ClipTiming, ...],
    params: ContinuityParams | None = None,
) -> Timeline:
    """Order ``clips`` by start time and split them into sessions, runs and gaps."""
    params = params or ContinuityParams()
    if not clips:
        return Timeline(sessions=[], gaps=[], findings=[])
    for c in clips:
        if c.start.tzinfo is None or c.start.utcoffset() is None:
            raise ValueError(f"clip {c.clip_id!r}: start must be timezone-aware (UTC)")
    names = {id(c): natural_key(c.name) for c in clips}  # once per clip, not per comparison
    ordered = sorted(clips, key=lambda c: (c.start, names[id(c)], str(c.clip_id)))
    name_keys = [names[id(c)] for c in ordered]
    ref = ordered[0].start
    tol = params.split_tolerance_s + _EPS
    findings: list[dict[str, Any]] = []

    def at(offset_s: float) -> datetime:
        return ref + timedelta(seconds=offset_s)

    # Start/end of every clip as float seconds from ``ref`` (exact to the microsecond).
    starts = [(c.start - ref).total_seconds() for c in ordered]
    ends: list[float] = []
    for i, c in enumerate(ordered):
        d = _known_duration(c)
        if d is None:
            following = starts[i + 1] if i + 1 < len(ordered) else starts[i]
            ends.append(max(following, starts[i]))
            findings.append(_finding(
                "unknown_duration", "warning",
                f"{c.name}: duration unknown; assumed to last until the next clip starts, "
                "so a gap after it cannot be detected",
                clip=c.clip_id, name=c.name, start=c.start.isoformat(),
                duration_s=c.duration_s, assumed_end=at(ends[-1]).isoformat(),
            ))
        else:
            ends.append(starts[i] + d)

    sessions: list[Session] = []
    gaps: list[Gap] = []
    breaks: list[Gap] = []
    runs: list[Run] = []
    session_gaps: list[Gap] = []
    run_clips: list[ClipTiming] = [ordered[0]]
    run_start = starts[0]
    run_end = ends[0]
    last = ordered[0]  # the clip whose end is ``run_end``

    def close_run() -> None:
        runs.append(Run(clips=tuple(run_clips), start=at(run_start), end=at(run_end)))

    def close_session() -> None:
        sessions.append(Session(runs=tuple(runs), gaps=tuple(session_gaps)))
        runs.clear()
        session_gaps.clear()

    for i in range(1, len(ordered)):
        prev, clip = ordered[i - 1], ordered[i]
        if name_keys[i] < name_keys[i - 1]:
            findings.append(_finding(
                "out_of_order", "warning",
                f"{clip.name} starts after {prev.name} but its name sorts before it: "
                "possible clock jump or tampering",
                before_clip=prev.clip_id, after_clip=clip.clip_id,
                before_name=prev.name, after_name=clip.name,
                before_start=prev.start.isoformat(), after_start=clip.start.isoformat(),
            ))
        spacing = starts[i] - run_end
        if spacing < -tol:
            findings.append(_finding(
                "overlap", "warning",
                f"{clip.name} starts {-spacing:.3f} s before the recording so far ends: "
                "possible clock jump or tampering",
                before_clip=prev.clip_id, after_clip=clip.clip_id,
                before_name=prev.name, after_name=clip.name,
                overlap_s=round(-spacing, 6), start=clip.start.isoformat(),
            ))
        if spacing <= tol:
            run_clips.append(clip)
            if ends[i] >= run_end:
                run_end, last = ends[i], clip
            continue
        close_run()
        kind = GAP_INTERRUPTION if spacing <= params.session_break_s + _EPS else GAP_SESSION_BREAK
        gap = Gap(kind=kind, before_clip=last.clip_id, after_clip=clip.clip_id,
                  start=at(run_end), end=clip.start, length_s=spacing)
        if kind == GAP_INTERRUPTION:
            gaps.append(gap)
            session_gaps.append(gap)
            log.debug("interruption of %.3f s between %s and %s", spacing, last.name, clip.name)
        else:
            breaks.append(gap)
            close_session()
        run_clips = [clip]
        run_start, run_end, last = starts[i], ends[i], clip
    close_run()
    close_session()
    log.debug("timeline: %d clips, %d sessions, %d interruptions, %d findings",
              len(ordered), len(sessions), len(gaps), len(findings))
    return Timeline(sessions=sessions, gaps=gaps, findings=findings, session_breaks=breaks)
