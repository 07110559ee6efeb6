"""A recorder with very many small clips through ``dockd ingest``: time per stage against a
``cp -r`` + ``sha256sum`` baseline of the same tree in the same run, and the 5-minute target.

    .venv/bin/python bench/many_clips.py [--clips 20000] [--cores 2]
                                         [--workdir DIR] [--profile OUT.prof] [--reuse]
    .venv/bin/python bench/many_clips.py --clips 20000 --reuse --probe-only 300 \
                                         [--before-src /work/main]

Builds a recorder (``dockd.devices.simulator``: real H.264 + AAC MP4s of 1 s at 64x48,
encoded once and re-dated per clip, named ``A1234567_012345_<time>_<n>.MP4`` under
``DCIM/<date>/`` as recorders name them, back to back as a recorder splits a long
recording), then, pinned to ``--cores`` CPUs:

* ``cp -r + sha256sum``  the floor for the same files: copy the tree, ``sync``, hash every copy
* ``dockd ingest``        the real CLI (``--workdir``: local target), in a subprocess; its
                          phases (first/last clip copied, checked, delivered; signed) are
                          taken from its own log records, since the stages overlap (#13)

``--profile`` writes a cProfile of the dockd run, every thread included (read it with
``python -m pstats``). ``--probe-only K`` measures the prober alone on K of the clips:
``probe`` per clip in ``--before-src`` (a checkout of the code before batching), then this
tree's ``probe`` per clip and ``probe_batch``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 300.0


def build_recorder(root: Path, clips: int) -> float:
    """Write the simulated recorder; returns seconds taken."""
    sys.path.insert(0, str(REPO))
    from zoneinfo import ZoneInfo

    from dockd.config import ProfileConfig, ToolsConfig
    from dockd.devices.simulator import RecorderSpec, simulate_recorder

    t = time.perf_counter()
    spec = RecorderSpec(segments=clips, segment_seconds=1.0, width=64, height=48, fps=5,
                        start=datetime(2026, 11, 20, 6, 0, tzinfo=UTC))
    simulate_recorder(root, spec, profile=ProfileConfig(), tz=ZoneInfo("Asia/Shanghai"),
                      tools=ToolsConfig(), now=datetime(2026, 11, 23, 6, 0, tzinfo=UTC))
    return time.perf_counter() - t


def clip_files(root: Path) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                  if f.upper().endswith(".MP4"))


def baseline(root: Path, dst: Path) -> float:
    """``cp -r`` the tree, ``sync``, then ``sha256sum`` every copied clip."""
    shutil.rmtree(dst, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(root), str(dst)], check=True)
    subprocess.run(["sync"], check=True)
    files = clip_files(dst)
    for i in range(0, len(files), 2000):
        subprocess.run(["sha256sum", *files[i:i + 2000]], check=True, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - t
    shutil.rmtree(dst, ignore_errors=True)
    return took


# --------------------------------------------------------------------------- the dockd run


def child(root: Path, work: Path, mode: str, profile_out: str) -> None:
    """Run ``dockd ingest`` in this process; time its phases from its own log records (the
    stages overlap since #13: the finisher probes while the port copies, delivery starts
    with the first checked clip), count probe_batch calls; print JSON. ``profile_out``:
    a cProfile of every thread (each thread profiled on its own, the stats merged)."""
    sys.path.insert(0, str(REPO))
    import logging
    import threading

    from dockd.cli import main
    from dockd.ingest.probe import Prober

    counts = {"probe_calls": 0, "probed": 0}
    marks: dict[str, list[float]] = {}
    patterns = {"copied": ": copied ", "checked": " timeline: ", "signed": " signed (",
                "delivered": " verified on ", "docking delivered": " delivered and verified"}

    class Marks(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            for name, needle in patterns.items():
                if needle in msg:
                    m = marks.setdefault(name, [record.created, record.created, 0])
                    m[1] = record.created
                    m[2] += 1

    real_batch = Prober.probe_batch

    def probe_batch(self: Prober, paths: Any) -> Any:
        counts["probe_calls"] += 1
        counts["probed"] += len(paths)
        return real_batch(self, paths)
    Prober.probe_batch = probe_batch  # type: ignore[method-assign]

    profiles: list[Any] = []
    if profile_out:
        import cProfile

        real_run = threading.Thread.run

        def run(self: threading.Thread) -> None:
            prof = cProfile.Profile()
            profiles.append(prof)
            prof.runcall(real_run, self)
        threading.Thread.run = run  # type: ignore[method-assign]

    real_basic = logging.basicConfig

    def basic(*a: Any, **kw: Any) -> None:  # dockd's CLI sets logging up: add ours after
        real_basic(*a, **kw)
        logging.getLogger().addHandler(Marks())
    logging.basicConfig = basic  # type: ignore[assignment]

    argv = ["ingest", "--workdir", str(work), "--json", "--port", "bench", str(root)]
    t0 = time.time()
    c0 = time.process_time()
    if profile_out:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        profiles.append(prof)
        rc = prof.runcall(main, argv)
        st = pstats.Stats(profiles[0])
        for other in profiles[1:]:
            st.add(other)
        st.dump_stats(profile_out)
    else:
        rc = main(argv)
    total = time.time() - t0
    phases = {k: {"first": v[0] - t0, "last": v[1] - t0, "n": v[2]} for k, v in marks.items()}
    print("\n@@RESULT@@" + json.dumps({"rc": rc, "total": total, "phases": phases,
                                       "cpu_main_process": time.process_time() - c0,
                                       **counts}))


PROBE_CHILD = r"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from dockd.config import ToolsConfig
from dockd.ingest.probe import Prober
mode, paths = sys.argv[2], [Path(p) for p in sys.argv[3:]]
t, c = time.perf_counter(), os.times()
with Prober(ToolsConfig()) as p:
    rs = p.probe_batch(paths) if mode == "batch" else [p.probe(x) for x in paths]
wall, c2 = time.perf_counter() - t, os.times()
cpu = sum(c2[:4]) - sum(c[:4])
print(json.dumps({"wall": wall, "cpu": cpu, "ok": sum(r.ok for r in rs),
                  "tools": sorted({r.tool for r in rs})}))
"""


def probe_only(files: list[str], k: int, src: Path, cores: list[int]) -> None:
    """Probe throughput alone on the first ``k`` clips: ``probe`` per clip with the dockd at
    ``src`` (e.g. a checkout of main: exiftool + ffprobe per clip), and this tree's
    ``probe`` per clip and ``probe_batch``."""
    sample = files[:k]
    for label, where, mode in ((f"probe per clip ({src})", src, "single"),
                               ("probe per clip (this tree)", REPO, "single"),
                               ("probe_batch (this tree)", REPO, "batch")):
        out = subprocess.run([sys.executable, "-c", PROBE_CHILD, str(where), mode, *sample],
                             capture_output=True, text=True, check=True,
                             preexec_fn=lambda: os.sched_setaffinity(0, cores))
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {label:<44} {len(sample) / r['wall']:7.1f} clips/s  (CPU incl. tools "
              f"{1000 * r['cpu'] / len(sample):5.1f} ms/clip; ok {r['ok']}, {r['tools']})")


def run_dockd(root: Path, work: Path, mode: str, cores: list[int], profile_out: str
              ) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", str(root), str(work), mode, profile_out]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          preexec_fn=lambda: os.sched_setaffinity(0, cores))
    marker = proc.stdout.rfind("@@RESULT@@")
    if marker < 0:
        raise SystemExit(f"dockd run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout[marker + len("@@RESULT@@"):])
    summary = json.loads(proc.stdout[:marker].strip() or "{}")
    result["summary"] = {k: summary.get(k) for k in ("ok", "state", "clips_total",
                                                    "clips_delivered", "problems")}
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=20_000)
    ap.add_argument("--cores", type=int, default=2, help="CPUs the runs are pinned to")
    ap.add_argument("--probe", choices=("batch", "single"), default="batch")
    ap.add_argument("--workdir", type=Path, help="default: a directory under /tmp")
    ap.add_argument("--profile", default="", help="write a cProfile of the dockd run here")
    ap.add_argument("--reuse", action="store_true", help="reuse a recorder already built")
    ap.add_argument("--probe-only", type=int, metavar="K",
                    help="only measure probe throughput on K clips (no ingest)")
    ap.add_argument("--before-src", type=Path, default=Path("/work/main"),
                    help="with --probe-only: the dockd tree measured as 'before'")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        root, work, mode, prof = args.child
        child(Path(root), Path(work), mode, prof)
        return 0
    cores = sorted(os.sched_getaffinity(0))[: args.cores]
    base = args.workdir or Path(f"/tmp/dockd-many-clips-{args.clips}")
    base.mkdir(parents=True, exist_ok=True)
    root = base / "recorder"
    if args.reuse and root.is_dir() and len(clip_files(root)) == args.clips:
        print(f"reusing {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
        took = build_recorder(root, args.clips)
        print(f"built {root}: {args.clips} clips in {took:.0f} s")
    files = clip_files(root)
    size = sum(os.path.getsize(f) for f in files)
    print(f"{len(files)} clips, {size / 1e6:.0f} MB (mean {size / len(files) / 1e3:.1f} kB), "
          f"pinned to CPUs {cores}, probe mode {args.probe}; load {os.getloadavg()[0]:.1f}")
    if args.probe_only:
        probe_only(files, args.probe_only, args.before_src, cores)
        return 0
    floor = baseline(root, base / "baseline")
    print(f"cp -r + sync + sha256sum: {floor:7.1f} s  ({len(files) / floor:7.0f} clips/s)")
    r = run_dockd(root, base / "dock", args.probe, cores, args.profile)
    total = r["total"]
    print(f"  {'phase':<18} {'first s':>8} {'last s':>8} {'count':>7}   rate (first to last)")
    for name, ph in r["phases"].items():
        span = ph["last"] - ph["first"]
        rate = f"{ph['n'] / span:8.0f} /s" if span > 0.05 else ""
        print(f"  {name:<18} {ph['first']:8.1f} {ph['last']:8.1f} {ph['n']:7d}   {rate}")
    r["total_cpu"] = r["cpu_main_process"]
    print(f"dockd ingest total:  {total:7.1f} s wall, {r['total_cpu']:.1f} s CPU "
          f"({len(files) / total:.0f} clips/s); {total / floor:.1f}x the baseline; "
          f"target {TARGET_S:.0f} s: {'met' if total <= TARGET_S else 'NOT met'}")
    print(f"probe_batch calls: {r['probe_calls']} for {r['probed']} clips; summary: "
          f"{json.dumps(r['summary'], ensure_ascii=False)[:400]}; load "
          f"{os.getloadavg()[0]:.1f}")
    return 0 if r["rc"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
