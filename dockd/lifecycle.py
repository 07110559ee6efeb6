"""The per-clip and per-docking state machines (pure: no I/O, no sqlite).

A clip moves ``discovered → copied → probed → checked → signed → delivered`` (``cleared``
comes with recorder clearing). Each edge is one atomic transaction in :mod:`dockd.store`.
Only the edges listed here exist; anything else is a bug and raises ``TransitionError``.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from .errors import TransitionError

CLIP_STATES: tuple[str, ...] = (
    "discovered", "copied", "probed", "checked", "signed", "delivered", "cleared",
)

CLIP_EDGES: frozenset[tuple[str, str]] = frozenset({
    ("discovered", "copied"),
    ("copied", "probed"),
    ("probed", "checked"),
    ("checked", "signed"),
    ("signed", "delivered"),
    ("delivered", "cleared"),
    # a delivered copy that no longer verifies (re-checked before clearing): not delivered
    ("delivered", "signed"),
})

# A docking (one plug-in) is ``offloading`` while clips are copied; ``offloaded`` once every
# clip is copied, ``interrupted`` when the recorder left (or the daemon died) first; then
# ``signed`` when its manifest is made and ``delivered`` when clips and manifest are on
# every required target.
DOCKING_STATES: tuple[str, ...] = ("offloading", "offloaded", "interrupted", "signed", "delivered")

DOCKING_EDGES: frozenset[tuple[str, str]] = frozenset({
    ("offloading", "offloaded"),
    ("offloading", "interrupted"),
    ("offloaded", "signed"),
    ("interrupted", "signed"),
    ("signed", "delivered"),
    ("delivered", "signed"),  # one of its copies no longer verifies: sent again
})


def check_clip_edge(old: str, new: str) -> None:
    if (old, new) not in CLIP_EDGES:
        raise TransitionError(f"clip state {old!r} cannot move to {new!r}")


def check_docking_edge(old: str, new: str) -> None:
    if (old, new) not in DOCKING_EDGES:
        raise TransitionError(f"docking state {old!r} cannot move to {new!r}")


def deadline_for(docked_at: datetime, hours: float) -> datetime:
    """R3: footage must reach dedicated storage within ``hours`` of the recorder's return."""
    return docked_at + timedelta(hours=hours)


def retry_delay(attempts: int, base_s: float, *, cap_s: float = 3600.0,
                rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter in [delay/2, delay] (like rclone's pacer)."""
    delay = min(cap_s, base_s * 2.0 ** max(0, attempts - 1))
    r = rng.random() if rng is not None else random.random()
    return delay / 2 + r * delay / 2
