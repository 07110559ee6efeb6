"""What the copy engine (:mod:`dockd.ingest.offload`) shares across the copies of a process.

* :class:`BufferBudget`: copy buffers of the whole process within ``BUFFER_BUDGET``, so
  memory stays flat in the number of ports copying at once;
* :func:`pace_sources`: a rate limit for reading recorders (a simulated USB bus, for
  ``bench/dock.py``), off unless called.
"""

from __future__ import annotations

import threading

BUFFER_BUDGET = 96 * 1024 * 1024
"""All copies of the process together (beyond it each copy gets ``MIN_CHUNK`` buffers)."""
MIN_CHUNK = 256 * 1024

_source_rate = 0.0
"""Bytes per second a copy may read from its recorder (0: as fast as it comes)."""


class BufferBudget:
    """Each copy takes a chunk size (at most what it asks) for its ``per_copy`` buffers;
    when many ports copy at once the later copies get smaller chunks (never below
    ``MIN_CHUNK``, never waiting: a copy is never held up for memory)."""

    def __init__(self, per_copy: int, align: int):
        self._lock = threading.Lock()
        self.per_copy = per_copy
        self.align = align
        self.used = 0

    def take(self, want: int) -> int:
        with self._lock:
            share = (BUFFER_BUDGET - self.used) // self.per_copy
            chunk = min(want, max(MIN_CHUNK, share // self.align * self.align))
            self.used += chunk * self.per_copy
        return chunk

    def give(self, chunk: int) -> None:
        with self._lock:
            self.used -= chunk * self.per_copy


def pace_sources(bytes_per_second: float | None) -> None:
    """Read every recorder of this process at most ``bytes_per_second`` per copy (None or
    0: unpaced, the default). The copy's reader sleeps after each chunk until the chunk
    would have arrived over a bus of that rate, so everything downstream (staging writes,
    read-back, hashing, delivery) sees the bytes as they would come off a recorder on USB.
    Used by ``bench/dock.py``, whose simulated recorders are trees on a local disk; copies
    already running keep their rate."""
    global _source_rate
    rate = float(bytes_per_second or 0.0)
    if rate < 0:
        raise ValueError(f"source rate must not be negative, got {rate}")
    _source_rate = rate


def source_rate() -> float:
    """The rate set by :func:`pace_sources` (0: unpaced)."""
    return _source_rate
