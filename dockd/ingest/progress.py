"""What ``dockd ingest`` shows while it copies: a rich progress bar per clip and overall
(bytes, rate, ETA) on a terminal, plain lines otherwise (a log, a pipe, CI).

It is fed by :attr:`dockd.pipeline.Pipeline.on_progress` events (``begin``, ``clip``,
``advance``, ``copied``) from the thread that copies; it writes to stderr, so stdout keeps
only the command's result (``--json`` stays parseable).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..cli_text import tr
from ..status.views import human_bytes, human_duration

PLAIN_EVERY_S = 10.0
"""A plain-mode line during a long clip at most this often."""


class IngestProgress:
    """Context manager; call the instance as ``Pipeline.on_progress``."""

    def __init__(self, stream: IO[str] | None = None, *, rich: bool | None = None,
                 clock: Any = time.monotonic):
        self.stream = stream or sys.stderr
        self.rich = self.stream.isatty() if rich is None else rich
        self.clock = clock
        self.total_b = self.total_n = self.base_b = self.base_n = 0
        self.done_b = 0  # bytes of finished clips in this run
        self.clip_n = 0
        self.clip_size = 0
        self.clip_name = ""
        self.started = 0.0
        self.clip_started = 0.0
        self.last_line = 0.0
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._clip: TaskID | None = None
        self._quieted: list[tuple[logging.Handler, int]] = []

    # ------------------------------------------------------------------ context

    def __enter__(self) -> IngestProgress:
        if self.rich:
            self._progress = Progress(
                TextColumn("{task.description}", justify="left"), BarColumn(bar_width=24),
                DownloadColumn(binary_units=True), TransferSpeedColumn(),
                TimeRemainingColumn(), console=Console(file=self.stream), transient=False)
            # the bar owns the terminal: only warnings and errors of the log above it
            self._quieted = [(h, h.level) for h in logging.getLogger().handlers
                             if type(h) is logging.StreamHandler]
            for h, _ in self._quieted:
                h.setLevel(max(h.level, logging.WARNING))
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            for h, level in self._quieted:
                h.setLevel(level)

    # ------------------------------------------------------------------ events

    def __call__(self, event: str, **info: Any) -> None:
        getattr(self, f"_on_{event}", lambda **_: None)(**info)

    def _on_begin(self, *, clips_total: int, bytes_total: int, clips_done: int,
                  bytes_done: int) -> None:
        self.total_n, self.total_b = clips_total, bytes_total
        self.base_n, self.base_b = clips_done, bytes_done
        self.started = self.last_line = self.clock()
        if self._progress is not None:
            self._overall = self._progress.add_task(
                tr("progress.all", n=clips_total), total=max(1, bytes_total),
                completed=bytes_done)
        else:
            self._line(tr("progress.start", n=clips_total - clips_done,
                          size=human_bytes(bytes_total - bytes_done))
                       + (tr("progress.already", n=clips_done) if clips_done else ""))

    def _on_clip(self, *, name: str, size: int) -> None:
        self.clip_n += 1
        self.clip_name, self.clip_size = name, size
        self.clip_started = self.clock()
        if self._progress is not None:
            short = name if len(name) <= 28 else name[:12] + "…" + name[-15:]
            label = f"[{self.base_n + self.clip_n}/{self.total_n}] {short}"
            if self._clip is None:
                self._clip = self._progress.add_task(label, total=max(1, size))
            else:
                self._progress.reset(self._clip, description=label, total=max(1, size))

    def _on_advance(self, *, name: str, done: int) -> None:
        if self._progress is not None:
            if self._clip is not None:
                self._progress.update(self._clip, completed=done)
            if self._overall is not None:
                self._progress.update(self._overall,
                                      completed=self.base_b + self.done_b + done)
            return
        now = self.clock()
        if now - self.last_line >= PLAIN_EVERY_S and self.clip_size:
            self.last_line = now
            self._line(tr("progress.partial", name=name, percent=100 * done // self.clip_size,
                          size=human_bytes(self.clip_size), overall=self._overall_text(done)))

    def _on_copied(self, *, name: str, size: int) -> None:
        self.done_b += size
        if self._progress is not None:
            if self._overall is not None:
                self._progress.update(self._overall, completed=self.base_b + self.done_b)
            return
        took = max(1e-3, self.clock() - self.clip_started)
        self.last_line = self.clock()
        self._line(tr("progress.clip", i=self.base_n + self.clip_n, total=self.total_n,
                      name=name, size=human_bytes(size), secs=f"{took:.1f}",
                      rate=human_bytes(size / took), overall=self._overall_text(0)))

    # ------------------------------------------------------------------ plain lines

    def _overall_text(self, current: int) -> str:
        done = self.done_b + current
        left = self.total_b - self.base_b - done
        elapsed = max(1e-3, self.clock() - self.started)
        rate = done / elapsed
        eta = left / rate if rate > 0 and left > 0 else (0.0 if left <= 0 else None)
        return tr("progress.overall", done=human_bytes(self.base_b + done),
                  total=human_bytes(self.total_b), rate=human_bytes(rate),
                  eta=human_duration(eta))

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
