"""Continuity across dockings (R1, R2): a recorder's timeline does not end where a docking
does. A recorder pulled mid-copy leaves clip 3 in one docking and clip 4 in the next; the
interruption between them is found when the second docking is judged, on the clips of both.

Rule: each docking is judged on its own clips plus the clips of the same recorder's dockings
already judged; a gap (or finding) is attached to the docking being judged when it touches
one of its clips. Whichever of two dockings is judged last completes the gap between them,
so every gap is attached exactly once, also when dockings finish out of order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from ..store import Reader, fleet
from .continuity import Gap, Timeline

_JUDGED = ("checked", "signed", "delivered", "cleared")
_CLIP_KEYS = ("clip", "before_clip", "after_clip")


def recorder_clips(state: Reader, serial: str, docking_id: int) -> list[dict[str, Any]]:
    """Clips of ``serial`` from its other dockings whose timeline is already judged."""
    return [dict(c) for c in fleet.judged_clips_elsewhere(state, serial, docking_id, _JUDGED)]


def _touches(gap: Gap, own: Collection[Any]) -> bool:
    return gap.before_clip in own or gap.after_clip in own


def _finding_touches(finding: dict[str, Any], own: Collection[Any]) -> bool:
    detail = finding.get("detail") or {}
    ids = [detail.get(k) for k in _CLIP_KEYS if detail.get(k) is not None]
    return not ids or any(i in own for i in ids)


def attributed(timeline: Timeline, own: Collection[Any]) -> Timeline:
    """``timeline`` (built on the recorder's clips) with only the gaps, session breaks and
    findings that touch the clips in ``own``; the sessions stay whole (the true picture)."""
    return dataclasses.replace(
        timeline,
        gaps=[g for g in timeline.gaps if _touches(g, own)],
        session_breaks=[g for g in timeline.session_breaks if _touches(g, own)],
        findings=[f for f in timeline.findings if _finding_touches(f, own)])
