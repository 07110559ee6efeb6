"""Stage 6: clearing — erase verified-delivered clips from a recorder still docked (R6),
and re-read its health while it charges (R9). Both run for docked recorders whose job
ended, asked for by the supervisor (never two at once for one port)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..delivery.clearing import ClearOutcome, clear_recorder, verify_with
from ..delivery.repair import repair_copies
from ..devices.health import SOURCE_REREAD, health_row, sample_from_health
from ..errors import DockdError
from ..store import dockings

if TYPE_CHECKING:
    from ..pipeline import Pipeline

log = logging.getLogger(__name__)


def clear(pipe: Pipeline, port: str, root: Path) -> ClearOutcome | None:
    """Erase verified-delivered clips from the recorder docked at ``port`` when its profile's
    policy says so (R6: only after every required target confirmed them)."""
    d = dockings.latest_on_port(pipe.state, port)
    if d is None or pipe.profile(d["profile"] or "").clear_policy != "after_delivery":
        return None
    required = [t.name for t in pipe.targets if t.required]
    try:
        out = clear_recorder(pipe.state, serial=d["serial"], root=root, port=port,
                             required_targets=required,
                             chunk_size=pipe.cfg.offload.chunk_size,
                             verify_copy=verify_with({t.name: t for t in pipe.targets}),
                             writable=pipe.writable(port, root),
                             on_mismatch=lambda c, bad: repair(pipe, c, bad, root))
    except DockdError as exc:  # e.g. the recorder could not be made writable
        log.warning("port %s serial %s: recorder not cleared: %s", port, d["serial"], exc)
        pipe.state.set_port(port, message=f"not cleared: {exc}")
        return None
    if out.cleared:
        pipe.state.set_port(port, message=f"erased {len(out.cleared)} delivered clip(s) "
                                          "from the recorder")
    return out


def repair(pipe: Pipeline, clip: dict[str, Any], bad: list[str], root: Path | None) -> None:
    """A delivered copy failed its re-check before clearing: see dockd.delivery.repair."""
    repair_copies(pipe.state, clip, bad, targets={t.name: t for t in pipe.targets},
                  staging_dir=pipe.staging_dir(clip["docking_id"]), root=root,
                  chunk_size=pipe.cfg.offload.chunk_size,
                  alert_command=pipe.cfg.delivery.alert_command)


def reread_health(pipe: Pipeline, port: str, root: Path,
                  hints: Mapping[str, str] | None = None) -> None:
    """Read battery/storage again while the recorder stays docked (charging), so the
    fit-for-next-shift verdict sees the battery it will leave with, not the one it came
    with (R9). Reading only: nothing is written to the recorder."""
    state = pipe.state
    d = dockings.latest_on_port(state, port)
    if d is None:
        return
    now = state.clock()
    hints = dict(hints or {})
    snap = pipe.registry.select(root, hints).snapshot(root, hints, now=now)
    if snap.identity.serial != d["serial"]:
        return  # another recorder: its own docking will read it
    h = snap.health
    sample = sample_from_health(h, serial=d["serial"], ts=now, docking_id=d["id"],
                                source=SOURCE_REREAD)
    with state.tx() as conn:
        dockings.health_sample(conn, health_row(sample))
        dockings.recorder_health(conn, d["serial"], h)
    log.info("port %s serial %s: health re-read: battery %s%%", port, d["serial"],
             h.battery_percent)
