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
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import tiles
from ..alerts import raise_alert
from ..delivery.early import make_room
from ..devices.clock import set_clock_after_offload
from ..errors import CopyError, RecorderGone, SourceChanged, StagingFull, StateError
from ..ingest.offload import SMALL_FILE, copy_clip, hash_file
from ..ingest.settle import copy_settled, recorder_present
from ..model import ClipEntry, CopyResult, Finding
from ..store import clips, dockings, dumps
from ..store.rows import ClipRow
from .register import insert_clip

if TYPE_CHECKING:
    from ..pipeline import DockingOutcome, Pipeline

log = logging.getLogger(__name__)

StopFn = Callable[[], bool]

GROUP_CLIPS = 64
"""Copied clips recorded per transaction at most (see :class:`_CopiedGroup`)."""
GROUP_SECONDS = 0.2
"""... and a copied clip waits at most this long to be recorded."""


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
        group = _CopiedGroup(pipe, docking_id, port, serial, done["n"])
        copied_before = clips.copied_paths_of_serial(state, serial)
        try:
            for i, c in enumerate(pending):
                if i and i % GROUP_CLIPS == 0:  # a same-serial twin may be copying too
                    copied_before = clips.copied_paths_of_serial(state, serial)
                entry = ClipEntry(c["rel_path"], c["safe_name"], c["size"] or 0,
                                  c["mtime"] or 0.0)
                current[:] = [entry]
                if (c["rel_path"], c["size"]) in copied_before and \
                        already_handled(pipe, c, root, chunk, f"port {port} serial {serial}"):
                    out.skipped_known += 1
                    group.skipped()
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
                                                   progress, should_stop, f"port {port} "
                                                   f"serial {serial}: ", group)
                except SourceChanged as exc:
                    if should_stop() or not recorder_present(root, entry):
                        raise
                    unsettled.append(str(exc))  # the others first; this one later
                    group.flush()
                    clips.failed(state, c["id"], str(exc))
                    continue
                extra = {"findings": dumps(_json_list(c["findings"]) +
                                           [f.as_dict() for f in changed])} if changed else {}
                out.copied += 1
                notify("copied", name=c["safe_name"], size=res.size)
                bytes_done += res.size
                copied_bytes += res.size
                rate = copied_bytes / max(1e-3, time.monotonic() - started)
                group.add(c, res, extra, bytes_done, rate)
        finally:
            group.close()  # what is staged and synced is recorded, however the loop ended
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


class _CopiedGroup:
    """Small clips copied but not recorded yet, recorded together: one transaction per
    :data:`GROUP_CLIPS` clips, and none waits more than :data:`GROUP_SECONDS` (a timer
    records it even while the next clip is still being read, so the finisher sees it). A
    recorder of 20 000 small clips paid a synced transaction, a port update and a wake-up
    per clip. Safe to defer: each staged copy is already synced (file and directory) when
    it joins the group, and a clip not recorded as ``copied`` when dockd is killed is found
    staged and confirmed by hash on the restart (``copy_clip``'s resume), never lost and
    never taken as copied unverified. A clip larger than ``SMALL_FILE`` (most recorders'
    clips: hundreds of MB) is recorded as soon as it is staged, with those before it."""

    def __init__(self, pipe: Pipeline, docking_id: int, port: str, serial: str,
                 done_before: int):
        self.pipe, self.docking_id, self.port, self.serial = pipe, docking_id, port, serial
        self.recorded = done_before
        self.items: list[tuple[ClipRow, CopyResult, dict[str, Any]]] = []
        self.bytes_done = 0
        self.rate = 0.0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def skipped(self) -> None:
        """A clip found handled already: it counts as done on the port."""
        with self._lock:
            self.recorded += 1

    def add(self, c: ClipRow, res: CopyResult, extra: dict[str, Any], bytes_done: int,
            rate: float) -> None:
        with self._lock:
            self.items.append((c, res, extra))
            self.bytes_done, self.rate = bytes_done, rate
            full = len(self.items) >= GROUP_CLIPS or res.size > SMALL_FILE
            if not full and self._timer is None:
                self._timer = threading.Timer(GROUP_SECONDS, self._on_timer)
                self._timer.daemon = True
                self._timer.start()
        if full:
            self.flush()

    def _on_timer(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # kept; the offload's own flush tries again and raises
            log.warning("port %s serial %s: recording copied clips failed (retried): %s",
                        self.port, self.serial, exc)

    def close(self) -> None:
        """Record what is left (however the copy ended) and stop the timer."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        self.flush()

    def flush(self) -> None:
        with self._lock:
            self._timer = None
            items, self.items = self.items, []
            if not items:
                return
            state = self.pipe.state
            now = state.now()
            try:
                clips.advance_many(state, ((c["id"], {
                    "sha256": res.sha256, "size": res.size, "staged_path": str(res.staged_path),
                    "copied_at": now, **extra}) for c, res, extra in items),
                    "discovered", "copied")
            except BaseException:
                self.items = items + self.items
                raise
            self.recorded += len(items)
            state.set_port(self.port, clips_done=self.recorded, bytes_done=self.bytes_done,
                           rate_bps=self.rate)
        for c, res, _extra in items:
            log.info("port %s serial %s: copied %s (%d bytes, sha256 %s)", self.port,
                     self.serial, c["safe_name"], res.size, res.sha256)
        self.pipe.arrived(self.docking_id)  # the finisher probes them while the rest copies


def _copy_with_room(pipe: Pipeline, docking_id: int, root: Path, entry: ClipEntry,
                    staging: Path, progress: Callable[[int], None], should_stop: StopFn,
                    where: str, group: _CopiedGroup | None = None
                    ) -> tuple[CopyResult, list[Finding]]:
    """Copy one clip until it settles; when staging is full, record the clips copied so
    far (``group``), wait for room and go on."""
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
            if group is not None:
                group.flush()  # the clips staged so far can be checked and leave staging
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
