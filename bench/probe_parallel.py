"""The probe step alone on many small clips: every tag through one exiftool (the baseline,
as before #13's last round) against :data:`dockd.ingest.probe.TAGS` through one and through
``--processes`` exiftools (:func:`dockd.ingest.probe.probe_in_order`), same clips, same run,
rounds interleaved so that a busy machine slows every variant alike.

    .venv/bin/python bench/probe_parallel.py DIR_OR_RECORDER [--clips 1000] [--rounds 2]
                                             [--processes 2] [--batch 64]

``DIR_OR_RECORDER``: a tree of clips, e.g. the recorder ``bench/many_clips.py`` builds
(``--workdir W`` -> ``W/recorder``). Prints, per variant, the best wall time of the rounds,
clips/s, the CPU time of the exiftool processes, and the ratio to the baseline; checks that
every variant gave the same ProbeResults (the debugging dump ``raw["exiftool"]`` aside).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dockd.config import ToolsConfig  # noqa: E402
from dockd.ingest.probe import TAGS, Prober  # noqa: E402
from dockd.ingest.probe_pool import groups_of, probe_in_order  # noqa: E402
from dockd.model import ProbeResult  # noqa: E402


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(paths: list[Path], tags: tuple[str, ...] | None, processes: int, batch: int
         ) -> tuple[float, float, list[ProbeResult]]:
    """(wall s, exiftool CPU s, results) for one fresh Prober (started before the clock)."""
    with Prober(ToolsConfig(), tags=tags) as p:
        for h in [p, *p.helpers(processes - 1)]:
            h.probe_batch(paths[:1])  # start the exiftool processes outside the timing
        cpu0 = _children_cpu()
        t = time.perf_counter()
        out: list[ProbeResult] = []
        for rs in probe_in_order(p, groups_of(paths, batch, processes), processes=processes):
            out.extend(rs)
        wall = time.perf_counter() - t
    return wall, _children_cpu() - cpu0, out  # counted once close() reaps them (start-up too)


def _plain(r: ProbeResult) -> ProbeResult:
    return dataclasses.replace(r, raw={k: v for k, v in r.raw.items() if k != "exiftool"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    paths = sorted(Path(d, f) for d, _, fs in os.walk(args.root) for f in fs
                   if f.upper().endswith((".MP4", ".MOV")))[:args.clips]
    if not paths:
        sys.exit(f"no clips under {args.root}")
    variants: dict[str, tuple[tuple[str, ...] | None, int]] = {
        "every tag, 1 exiftool (baseline)": (None, 1),
        "TAGS, 1 exiftool": (TAGS, 1),
        f"TAGS, {args.processes} exiftools": (TAGS, args.processes),
    }
    best: dict[str, tuple[float, float]] = {}
    answers: dict[str, list[ProbeResult]] = {}
    for _ in range(args.rounds):
        for name, (tags, procs) in variants.items():
            wall, cpu, out = _run(paths, tags, procs, args.batch)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu)
            answers[name] = out
    base = best["every tag, 1 exiftool (baseline)"][0]
    print(f"{len(paths)} clips, batch {args.batch}, {os.cpu_count()} CPUs, best of "
          f"{args.rounds} rounds; load {os.getloadavg()[0]:.1f}")
    for name, (wall, cpu) in best.items():
        print(f"  {name:34s} {wall:7.2f} s  {len(paths) / wall:6.0f} clips/s  "
              f"exiftool CPU {cpu:6.2f} s ({1000 * cpu / len(paths):4.1f} ms/clip)  "
              f"{base / wall:4.2f}x the baseline")
    ref = [_plain(r) for r in answers["every tag, 1 exiftool (baseline)"]]
    same: dict[str, Any] = {n: [_plain(r) for r in rs] == ref for n, rs in answers.items()}
    print(f"  same ProbeResults as the baseline: {same}")
    if not all(same.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
