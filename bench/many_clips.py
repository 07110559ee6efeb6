"""A recorder with very many small clips through ``dockd ingest``: time per stage against a
``cp -r`` + ``sha256sum`` baseline of the same tree in the same run, and the 5-minute target.

    .venv/bin/python bench/many_clips.py [--clips 20000] [--cores 2] [--probe batch|single]
                                         [--workdir DIR] [--profile OUT.prof] [--reuse]
    .venv/bin/python bench/many_clips.py --clips 20000 --reuse --probe-only 300 \
                                         [--before-src /work/main]

Builds a recorder (``dockd.devices.simulator``: real H.264 + AAC MP4s of 1 s at 64x48,
encoded once and re-dated per clip, named ``A1234567_012345_<time>_<n>.MP4`` under
``DCIM/<date>/`` as recorders name them, back to back as a recorder splits a long
recording), then, pinned to ``--cores`` CPUs:

* ``cp -r + sha256sum``  the floor for the same files: copy the tree, ``sync``, hash every copy
* ``dockd ingest``        the real CLI (``--workdir``: local target), in a subprocess, each
                          stage timed by wrapping the pipeline's own methods:
                          scan, register, copy, probe, check, continuity, sign, deliver,
                          clear, verify

``--probe batch`` (default) makes ``Pipeline.process`` probe the docking's copied clips with
one ``Prober.probe_batch`` call, as the finisher of issue #13 will; ``--probe single`` runs
today's ``Pipeline.process`` unchanged (one ``Prober.probe`` per clip). ``--profile`` writes
a cProfile of the dockd run (read it with ``python -m pstats``). ``--probe-only K`` measures
the prober alone on K of the clips: ``probe`` per clip in ``--before-src`` (a checkout of the
code before batching), then this tree's ``probe`` per clip and ``probe_batch``.
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
STAGES = ("scan", "register", "copy", "probe", "check", "continuity", "sign", "deliver",
          "clear", "verify")


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
    """Run ``dockd ingest`` in this process with every stage timed; print JSON."""
    sys.path.insert(0, str(REPO))
    import dockd.oneshot as oneshot
    import dockd.pipeline as pipeline
    from dockd.cli import main
    from dockd.ingest.probe import Prober

    spent: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    spent["process"] = 0.0
    cpu: dict[str, float] = dict(spent)
    counts = {"probe_calls": 0, "probed": 0}
    tick = os.sysconf("SC_CLK_TCK")

    probers: list[Prober] = []

    def cpu_now() -> float:
        """CPU seconds of this process (all threads) and its reaped children (ffprobe), plus
        the live exiftool's (reaped only when the prober closes)."""
        t = os.times()
        total = time.process_time() + t.children_user + t.children_system
        et = probers[-1]._et if probers else None
        exiftool_pid = et._process.pid if et is not None and et._process is not None else None
        if exiftool_pid:
            try:
                fields = Path(f"/proc/{exiftool_pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        return total

    def timed(owner: Any, name: str, stage: str) -> None:
        real = getattr(owner, name)

        def wrapper(*args: Any, **kw: Any) -> Any:
            t, c = time.perf_counter(), cpu_now()
            try:
                return real(*args, **kw)
            finally:
                spent[stage] += time.perf_counter() - t
                cpu[stage] += cpu_now() - c
        setattr(owner, name, wrapper)

    if mode == "batch":
        # Stand-in for #13's finisher: probe the copied clips with one probe_batch call,
        # then let today's Pipeline.process use those answers (its logic unchanged).
        real_process = pipeline.Pipeline.process

        def process(self: Any, docking_id: int) -> None:
            copied = self.state.clips_of(docking_id, "copied")
            paths = [Path(c["staged_path"]) for c in copied]
            answers = dict(zip(paths, self.prober.probe_batch(paths), strict=True))
            real_probe = self.prober.probe
            self.prober.probe = lambda p: answers.get(Path(p)) or real_probe(p)
            try:
                real_process(self, docking_id)
            finally:
                del self.prober.probe
        pipeline.Pipeline.process = process  # type: ignore[method-assign]

    real_batch = Prober.probe_batch

    def probe_batch(self: Prober, paths: Any) -> Any:
        counts["probe_calls"] += 1
        counts["probed"] += len(paths)
        if self not in probers:
            probers.append(self)
        t, c = time.perf_counter(), cpu_now()
        try:
            return real_batch(self, paths)
        finally:
            spent["probe"] += time.perf_counter() - t
            cpu["probe"] += cpu_now() - c
    Prober.probe_batch = probe_batch  # type: ignore[method-assign]
    timed(pipeline, "scan_recorder", "scan")
    timed(pipeline.Pipeline, "begin_docking", "register")
    timed(pipeline.Pipeline, "offload", "copy")
    timed(pipeline.Pipeline, "process", "process")
    timed(pipeline.Pipeline, "analyze_continuity", "continuity")
    timed(pipeline.Pipeline, "sign", "sign")
    timed(pipeline.Pipeline, "deliver_pending", "deliver")
    timed(pipeline.Pipeline, "clear", "clear")
    timed(oneshot, "_verify_local", "verify")

    argv = ["ingest", "--workdir", str(work), "--json", "--port", "bench", str(root)]
    t = time.perf_counter()
    if profile_out:
        import cProfile

        prof = cProfile.Profile()
        rc = prof.runcall(main, argv)
        prof.dump_stats(profile_out)
    else:
        rc = main(argv)
    total = time.perf_counter() - t
    for d in (spent, cpu):
        d["register"] -= d["scan"]
        d["check"] = d.pop("process") - d["probe"]
    print("\n@@RESULT@@" + json.dumps({"rc": rc, "total": total, "stages": spent, "cpu": cpu,
                                       "total_cpu": cpu_now(), **counts}))


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
    print(f"  {'stage':<11} {'wall':>8}   {'CPU':>7}   wall rate")
    for stage in STAGES:
        s, c = r["stages"][stage], r["cpu"][stage]
        rate = f"{len(files) / s:8.0f} clips/s" if s > 0.05 else ""
        print(f"  {stage:<11} {s:8.1f} s {c:7.1f} s {rate}")
    print(f"dockd ingest total:  {total:7.1f} s wall, {r['total_cpu']:.1f} s CPU "
          f"({len(files) / total:.0f} clips/s); {total / floor:.1f}x the baseline; "
          f"target {TARGET_S:.0f} s: {'met' if total <= TARGET_S else 'NOT met'}")
    print(f"probe_batch calls: {r['probe_calls']} for {r['probed']} clips; summary: "
          f"{json.dumps(r['summary'], ensure_ascii=False)[:400]}; load "
          f"{os.getloadavg()[0]:.1f}")
    return 0 if r["rc"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
