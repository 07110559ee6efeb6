"""Probing many clips with several exiftool processes at once.

:func:`groups_of` cuts a docking's waiting clips into batches; :func:`probe_in_order`
probes them through the caller's :class:`~dockd.ingest.probe.Prober` and its helpers (one
exiftool each, ``tools.probe_processes`` in all) and yields the answers in the clips' order.
exiftool costs ~10 ms of CPU per small MP4 and the finisher is one thread: with one process
a 20 000-clip recorder waits minutes for its checks, with two it uses both cores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Protocol

from ..model import ProbeResult
from .probe import Prober


class BatchProber(Protocol):
    """What :func:`probe_in_order` needs of a prober (a :class:`Prober`, or a test's own)."""

    def probe_batch(self, paths: Sequence[Path]) -> list[ProbeResult]: ...


MIN_SPLIT = 16
"""With more than one process, a single batch of at least twice this many clips is cut in
two, so that both exiftools get work; fewer clips are probed by one."""


def groups_of(paths: Sequence[Path], batch: int, processes: int = 1) -> list[list[Path]]:
    """``paths`` in order, cut into groups of at most ``batch`` (of even sizes, so that
    parallel exiftools finish together); with ``processes`` > 1, a single group of at least
    2 x :data:`MIN_SPLIT` clips becomes two."""
    n, batch = len(paths), max(1, batch)
    count = -(-n // batch)
    if processes > 1 and count == 1 and n >= 2 * MIN_SPLIT:
        count = 2
    if count == 0:
        return []
    size = -(-n // count)
    return [list(paths[i:i + size]) for i in range(0, n, size)]


def probe_in_order(prober: BatchProber, groups: Sequence[Sequence[Path]], *,
                   processes: int = 1) -> Generator[list[ProbeResult], None, None]:
    """:meth:`Prober.probe_batch` of each group, yielded in the groups' order.

    With ``processes`` > 1, more than one group and a real :class:`Prober`, up to that many
    exiftool processes probe at once: ``prober`` in the caller's thread (whenever the next
    answer to yield is not there yet) and its :meth:`Prober.helpers`, each in its own
    thread; each takes the next group as it finishes one, at most two groups per process
    ahead of the consumer. An exception from a group (e.g. :class:`ProbeError`) is raised
    when that group's turn comes, after the groups before it; no group is handed out once
    one failed. Closing the iterator early (``break``, an exception in the consumer) stops
    handing out groups and waits for those being probed. One group, or one process: the
    caller's thread alone, no second exiftool.
    """
    todo = [list(g) for g in groups if g]
    helpers: list[Prober] = []
    if processes > 1 and len(todo) > 1 and isinstance(prober, Prober):
        helpers = prober.helpers(min(processes, len(todo)) - 1)
    if not helpers:
        for group in todo:
            yield prober.probe_batch(group)
        return
    assert isinstance(prober, Prober)
    cv = threading.Condition()
    done: dict[int, list[ProbeResult] | BaseException] = {}
    count = {"handed": 0, "yielded": 0, "busy": len(helpers)}
    halt = [False]
    ahead = 2 * (len(helpers) + 1)

    def take(block: bool) -> int | None:  # under cv
        while True:
            if halt[0] or count["handed"] >= len(todo):
                return None
            if count["handed"] - count["yielded"] < ahead:
                count["handed"] += 1
                return count["handed"] - 1
            if not block:
                return None
            cv.wait()

    def probe(p: BatchProber, i: int) -> None:
        got: list[ProbeResult] | BaseException
        try:
            got = p.probe_batch(todo[i])
        except BaseException as exc:  # handed to the consumer, raised in its thread
            got = exc
        with cv:
            done[i] = got
            if isinstance(got, BaseException):
                halt[0] = True  # the groups before it are handed out already
            cv.notify_all()

    def helper_job(p: Prober) -> Callable[[], None]:
        def job() -> None:
            try:
                while True:
                    with cv:
                        i = take(block=True)
                    if i is None:
                        return
                    probe(p, i)
            finally:
                with cv:
                    count["busy"] -= 1
                    cv.notify_all()
        return job

    for n, helper in enumerate(helpers):
        prober.run_in_helper(n, helper_job(helper))
    try:
        for i in range(len(todo)):
            while True:
                with cv:
                    if i in done:
                        got = done.pop(i)
                        count["yielded"] = i + 1
                        cv.notify_all()
                        break
                    mine = take(block=False)
                    if mine is None:
                        cv.wait()
                        continue
                probe(prober, mine)  # the caller's own exiftool, in the caller's thread
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        with cv:
            halt[0] = True
            cv.notify_all()
            while count["busy"]:
                cv.wait()
