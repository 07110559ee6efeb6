"""A clip that changes while it is copied: settle, then copy it again.

``copy_clip`` raises :class:`~dockd.errors.SourceChanged` when the file on the recorder grew
or shrank under it. That is not a removed recorder (a removed recorder fails its reads, or
its tree is gone): the recorder is still docked and the file is simply still being written.
``copy_settled`` waits until the file's size and mtime hold still for ``settle_s``, then
copies it again, up to ``attempts`` times; each change becomes a ``changed_while_copying``
finding on the clip, so a reviewer sees that the footage moved while it was collected.
A file that never settles raises ``SourceChanged`` to the caller, which copies the other
clips first and retries this one later.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import RecorderGone, SourceChanged
from ..model import ClipEntry, CopyResult, Finding

log = logging.getLogger(__name__)

ATTEMPTS = 3
KIND = "changed_while_copying"


def recorder_present(root: Path, entry: ClipEntry) -> bool:
    """The recorder's tree and the clip's file are still there."""
    try:
        return root.is_dir() and os.path.lexists(root / entry.rel_path)
    except OSError:
        return False


def wait_settled(path: Path, settle_s: float, *, should_stop: Callable[[], bool],
                 timeout_s: float = 60.0, sleep: Callable[[float], None] = time.sleep
                 ) -> os.stat_result:
    """Wait until ``path``'s size and mtime stay the same for ``settle_s`` (bounded)."""
    settle_s = max(0.01, settle_s)
    end = time.monotonic() + max(timeout_s, settle_s * 2)
    last = os.stat(path)
    while True:
        sleep(settle_s)
        if should_stop():
            raise RecorderGone("stopped while waiting for a changing clip to settle")
        now = os.stat(path)
        if (now.st_size, now.st_mtime_ns) == (last.st_size, last.st_mtime_ns):
            return now
        if time.monotonic() > end:
            return now  # still changing: the next copy attempt will tell
        last = now


def copy_settled(copy: Callable[[ClipEntry], CopyResult], root: Path, entry: ClipEntry, *,
                 settle_s: float, should_stop: Callable[[], bool],
                 attempts: int = ATTEMPTS, where: str = "",
                 sleep: Callable[[float], None] = time.sleep
                 ) -> tuple[CopyResult, list[Finding]]:
    """``copy(entry)``, again after settling each time the source changed under it.
    Returns the result and the findings to record on the clip."""
    findings: list[Finding] = []
    for attempt in range(1, attempts + 1):
        try:
            return copy(entry), findings
        except SourceChanged as exc:
            if should_stop() or not recorder_present(root, entry):
                raise
            log.warning("%s%s changed while it was copied (attempt %d of %d): %s; waiting "
                        "for it to settle", where, entry.safe_name, attempt, attempts, exc)
            findings.append(Finding(KIND, "warning",
                                    "the file on the recorder changed while it was copied; "
                                    "copied again once it had settled",
                                    {"attempt": attempt, "error": str(exc),
                                     "size_when_scanned": entry.size}))
            if attempt == attempts:
                raise SourceChanged(f"{entry.safe_name}: changed while copying, "
                                    f"{attempts} times; retried later") from exc
            st = wait_settled(root / entry.rel_path, settle_s, should_stop=should_stop,
                              sleep=sleep)
            entry = ClipEntry(entry.rel_path, entry.safe_name, st.st_size, st.st_mtime,
                              entry.findings)
    raise AssertionError("unreachable")  # pragma: no cover
