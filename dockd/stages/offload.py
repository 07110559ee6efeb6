"""Stage 2: offload — copy only.

The port's job reads every registered clip once from the recorder into staging (hashing
as it goes) and moves it to ``copied``; probing, notes and signing are the finisher's
(:mod:`dockd.stages.finisher`), told through ``pipe.arrived`` as each clip lands, so a
transcription never holds a copy slot. When staging is full the copy waits for room (the
clips already here are checked and delivered, and leave staging once on every target)
and goes on; only when nothing can leave staging does it stop with ``StagingFull``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import tiles
from ..alerts import raise_alert
from ..delivery.early import make_room
from ..devices.clock import set_clock_after_offload
from ..errors import CopyError, RecorderGone, SourceChanged, StagingFull, StateError
from ..ingest.offload import copy_clip, hash_file
from ..ingest.settle import copy_settled, recorder_present
from ..model import ClipEntry, CopyResult, Finding
from ..store import clips, dockings, dumps
from ..store.rows import ClipRow
from .register import insert_clip

if TYPE_CHECKING:
    from ..pipeline import DockingOutcome, Pipeline

log = logging.getLogger(__name__)

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


def _no_progress(event: str, **info: Any) -> None:
    """The default ``Pipeline.on_progress``: nobody in the foreground is watching."""


def offload(pipe: Pipeline, out: DockingOutcome, root: Path,
            known: Sequence[tuple[ClipEntry, dict[str, Any]]] = (),
            should_stop: StopFn = _never) -> DockingOutcome:
    """Copy the docking's clips (confirming the known ones by hash first)."""
    state, cfg = pipe.state, pipe.cfg
    docking_id = out.docking_id
    d = dockings.get(state, docking_id)
    port, serial = d["port"], d["serial"]
    chunk = cfg.offload.chunk_size
    current: list[ClipEntry] = []  # the clip being read when the recorder failed
    copied_bytes = 0
    try:
        _confirm_known(pipe, out, root, known, should_stop, current)
        pending = clips.of_docking(state, docking_id, "discovered")
        done = clips.copied_so_far(state, docking_id)
        total_n = done["n"] + len(pending)
        total_b = done["b"] + sum(c["size"] or 0 for c in pending)
        bytes_done = done["b"]
        started = time.monotonic()
        state.set_port(port, state="copying", docking_id=docking_id, serial=serial,
                       clips_done=done["n"], clips_total=total_n, bytes_done=bytes_done,
                       bytes_total=total_b, message="copying")
        staging = pipe.staging_dir(docking_id)
        staging.mkdir(parents=True, exist_ok=True)
        last_report = [0.0]
        notify = pipe.on_progress or _no_progress
        notify("begin", clips_total=total_n, bytes_total=total_b, clips_done=done["n"],
               bytes_done=bytes_done)
        unsettled: list[str] = []
        for i, c in enumerate(pending):
            entry = ClipEntry(c["rel_path"], c["safe_name"], c["size"] or 0, c["mtime"] or 0.0)
            current[:] = [entry]
            if already_handled(pipe, c, root, chunk, f"port {port} serial {serial}"):
                out.skipped_known += 1
                continue
            notify("clip", name=c["safe_name"], size=c["size"])

            def progress(n: int, base: int = bytes_done, before: int = copied_bytes,
                         name: str = c["safe_name"]) -> None:
                notify("advance", name=name, done=n)
                now_m = time.monotonic()
                if now_m - last_report[0] >= 0.5:
                    last_report[0] = now_m
                    rate = (before + n) / max(1e-3, now_m - started)
                    state.set_port(port, bytes_done=base + n, rate_bps=rate)

            try:
                res, changed = _copy_with_room(pipe, docking_id, root, entry, staging,
                                               progress, should_stop, f"port {port} serial "
                                               f"{serial}: ")
            except SourceChanged as exc:
                if should_stop() or not recorder_present(root, entry):
                    raise
                unsettled.append(str(exc))  # the others first; this one later
                clips.failed(state, c["id"], str(exc))
                continue
            extra = {"findings": dumps(_json_list(c["findings"]) +
                                       [f.as_dict() for f in changed])} if changed else {}
            clips.advance(state, c["id"], "discovered", "copied",
                          {"sha256": res.sha256, "size": res.size,
                           "staged_path": str(res.staged_path), "copied_at": state.now(),
                           **extra})
            out.copied += 1
            notify("copied", name=c["safe_name"], size=res.size)
            bytes_done += res.size
            copied_bytes += res.size
            rate = copied_bytes / max(1e-3, time.monotonic() - started)
            state.set_port(port, clips_done=done["n"] + i + 1, bytes_done=bytes_done,
                           rate_bps=rate)
            log.info("port %s serial %s: copied %s (%d bytes, sha256 %s)", port, serial,
                     c["safe_name"], res.size, res.sha256)
            pipe.arrived(docking_id)  # the finisher probes it while the rest copies
        if unsettled:
            raise CopyError(f"{len(unsettled)} clip(s) changed while copying and did not "
                            f"settle; retried later: {'; '.join(unsettled)}")
    except RecorderGone as exc:
        if current and not should_stop() and recorder_present(root, current[0]):
            # the recorder is still there (a failing read, a stall): not a removal; the
            # daemon retries the offload, an Undocked event interrupts it if it left
            log.error("port %s serial %s: read error on the recorder: %s", port, serial, exc)
            out.errors.append(str(exc))
            state.set_port(port, state="error", error=str(exc))
            raise CopyError(f"read error on the recorder: {exc}") from exc
        log.warning("port %s serial %s: recorder gone during offload: %s", port, serial, exc)
        out.interrupted = True
        out.errors.append(str(exc))
        mark_interrupted(pipe, docking_id, f"recorder removed during copy: {exc}")
        return out
    except (StagingFull, CopyError) as exc:
        out.errors.append(str(exc))
        if should_stop():  # removed or dockd stopping: the caller says which
            log.info("port %s serial %s: offload stopped: %s", port, serial, exc)
            raise
        log.error("port %s serial %s: offload stopped: %s", port, serial, exc)
        state.set_port(port, state="error", error=str(exc))
        raise
    with state.tx() as conn:
        left = clips.count_in(conn, docking_id, ("discovered",))
        if left == 0 and dockings.get_in(conn, docking_id)["state"] == "offloading":
            dockings.advance_in(conn, docking_id, "offloading", "offloaded")
        state.audit("copied", f"docking/{docking_id}",
                    {"clips": out.copied, "bytes": copied_bytes, "left": left,
                     "skipped_known": out.skipped_known}, conn=conn)
    if left == 0:
        set_clock_after_offload(state, cfg, docking_id, root, pipe.profile(d["profile"] or ""),
                                writable=pipe.writable(port, root))
    return out


def _confirm_known(pipe: Pipeline, out: DockingOutcome, root: Path,
                   known: Sequence[tuple[ClipEntry, dict[str, Any]]], should_stop: StopFn,
                   current: list[ClipEntry]) -> None:
    """Clips that look handled already: hash them on the recorder. The same content is
    skipped (or listed as copied earlier, not delivered yet); changed content is a new clip."""
    state = pipe.state
    docking_id = out.docking_id
    d = dockings.get(state, docking_id)
    earlier: list[int] = []
    for entry, prior in known:
        if should_stop():
            raise CopyError("stopped")
        current[:] = [entry]
        try:
            size, digest = hash_file(root / entry.rel_path, pipe.cfg.offload.chunk_size)
        except OSError as exc:
            raise RecorderGone(f"{entry.safe_name}: cannot re-read it on the recorder: "
                               f"{exc.strerror or exc}") from exc
        hit = prior.get("known", {}).get(digest) if size == prior["size"] else None
        if hit is not None:
            # only a verified delivery counts as delivered: a clip an earlier docking copied
            # but could not deliver yet is listed as such, not as handled
            if hit[1] in ("delivered", "cleared"):
                out.skipped_known += 1
            else:
                earlier.append(hit[0])
            continue
        log.warning("port %s serial %s: %s differs from the copy handled in docking %s "
                    "(sha256 %s vs %s): copying it as a new clip", d["port"], d["serial"],
                    entry.safe_name, prior["docking_id"], digest, prior["sha256"])
        finding = Finding("changed_since_copy", "warning",
                          "file on the recorder differs from an earlier copy with the same "
                          "name and size", {"earlier_clip": prior["id"],
                                            "earlier_sha256": prior["sha256"]})
        with state.tx() as conn:
            if not clips.exists_in(conn, docking_id, entry.rel_path):
                insert_clip(pipe, conn, docking_id, d["serial"], entry, d["deadline_at"],
                            state.now(), (finding,))
    with state.tx() as conn:  # changed known clips were added: recount
        dockings.known_outcome(conn, docking_id, out.skipped_known, earlier)


def _copy_with_room(pipe: Pipeline, docking_id: int, root: Path, entry: ClipEntry,
                    staging: Path, progress: Callable[[int], None], should_stop: StopFn,
                    where: str) -> tuple[CopyResult, list[Finding]]:
    """Copy one clip until it settles; when staging is full, wait for room and go on."""
    cfg = pipe.cfg

    def copy(e: ClipEntry) -> CopyResult:
        return copy_clip(root, e, staging, chunk_size=cfg.offload.chunk_size,
                         verify=cfg.offload.verify_staged, min_free=cfg.offload.min_free,
                         progress=progress, should_stop=should_stop)

    alarmed = False
    while True:
        try:
            res, changed = copy_settled(copy, root, entry, settle_s=cfg.offload.settle_seconds,
                                        should_stop=should_stop, where=where)
            return res, list(changed)
        except StagingFull as exc:
            if not alarmed:
                _alarm(pipe, docking_id, exc)
                alarmed = True
            if not wait_for_room(pipe, docking_id, should_stop):
                raise


def _alarm(pipe: Pipeline, docking_id: int, exc: StagingFull) -> None:
    d = dockings.get(pipe.state, docking_id)
    raise_alert(pipe.state, level="alarm", kind="staging_full", subject="staging",
                message=f"staging {pipe.cfg.paths.staging_dir} is full ({exc}); port "
                        f"{d['port']} serial {d['serial']}: delivering copied clips ahead "
                        "of signing to make room",
                command=pipe.cfg.delivery.alert_command)


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def wait_for_room(pipe: Pipeline, docking_id: int, should_stop: StopFn) -> bool:
    """Staging is full. The docking's copied clips are checked at once (and so become due
    for delivery), and delivered ahead of signing where that frees room now
    (:func:`dockd.delivery.early.make_room`). Failing that, while other dockings' clips in
    staging are due to leave it, wait (up to ``pipe.staging_wait_s`` without any room
    appearing) for their delivery to free room. True: try the copy again."""
    state = pipe.state
    d = dockings.get(state, docking_id)
    pipe.process(docking_id)  # copied -> checked now (and due for delivery: on_ready)
    freed = make_room(pipe, docking_id, should_stop)
    if freed > 0:
        log.warning("port %s serial %s: staging full: %d bytes freed by delivering ahead of "
                    "signing", d["port"], d["serial"], freed)
        return True
    staging = pipe.cfg.paths.staging_dir
    before = _free_bytes(staging)
    deadline = time.monotonic() + pipe.staging_wait_s
    logged = False
    while time.monotonic() < deadline and not should_stop():
        if not any(Path(p).is_file() for p in clips.staged_elsewhere(state, docking_id)):
            return False  # nothing in staging is on its way out: waiting frees nothing
        if not logged:
            log.warning("port %s serial %s: staging full: waiting for other dockings' clips "
                        "to be delivered and leave staging", d["port"], d["serial"])
            logged = True
        if pipe.cancel.wait(min(1.0, pipe.staging_wait_s)):
            return False
        if _free_bytes(staging) > before or not os.path.isdir(staging):
            log.info("port %s serial %s: room in staging again: copying on", d["port"],
                     d["serial"])
            return True
    return False


def _json_list(text: str | None) -> list[Any]:
    import json

    value = json.loads(text) if text else []
    return list(value) if isinstance(value, list) else []


def already_handled(pipe: Pipeline, c: ClipRow, root: Path, chunk: int, who: str) -> bool:
    """A pending clip taken over from an ended docking may be content that another row
    (same serial, path and size: a same-serial twin's row was taken over first) already
    copied. Confirmed by SHA-256 on the recorder; then the row goes (audited)."""
    others = clips.copies_elsewhere(pipe.state, c["id"], c["rel_path"], c["size"])
    if not others:
        return False
    try:
        size, digest = hash_file(root / c["rel_path"], chunk)
    except OSError as exc:
        raise RecorderGone(f"{c['safe_name']}: cannot re-read it on the recorder: "
                           f"{exc.strerror or exc}") from exc
    same = [o["id"] for o in others if o["sha256"] == digest]
    if size != c["size"] or not same:
        return False
    with pipe.state.tx() as conn:
        clips.drop_discovered(conn, c["id"])
        pipe.state.audit("already_delivered", f"clip/{c['id']}",
                         {"same_as_clip": same[0], "sha256": digest, "name": c["safe_name"]},
                         conn=conn)
    log.info("%s: %s is already handled as clip %d (same SHA-256): not copied again",
             who, c["safe_name"], same[0])
    return True


def mark_interrupted(pipe: Pipeline, docking_id: int, why: str) -> None:
    """The offload ended early (recorder removed, or gone after a restart): the docking is
    ``interrupted`` if clips are left uncopied, else ``offloaded``."""
    state = pipe.state
    with state.tx() as conn:
        try:
            cur = dockings.get_in(conn, docking_id)
        except StateError:
            return
        if cur["state"] != "offloading":
            return
        left = clips.count_in(conn, docking_id, ("discovered",))
        new = "interrupted" if left else "offloaded"
        dockings.advance_in(conn, docking_id, "offloading", new,
                            {"undocked_at": state.now(), "error": why,
                             "incomplete": left or None})
        state.audit("undocked", f"docking/{docking_id}",
                    {"port": cur["port"], "uncopied": left, "why": why}, conn=conn)
    if left:
        log.warning("port %s: docking %d closed with %d clip(s) not copied (%s): copy "
                    "incomplete, plug the recorder back in", cur["port"], docking_id, left, why)
        tiles.show_incomplete(state, docking_id)


def undocked(pipe: Pipeline, port: str) -> None:
    """The recorder left ``port``: its finished docking is over (a later docking of the
    same recorder is a new one; one still docked across a restart is the same)."""
    dockings.port_emptied(pipe.state, port)
