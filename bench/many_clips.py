"""A recorder with very many small clips through ``dockd ingest``: time per stage against a
``cp -r`` + ``sha256sum`` baseline of the same tree in the same run, and the 5-minute target.

    .venv/bin/python bench/many_clips.py [--clips 20000] [--cores 2] [--probe batch|single]
                                         [--workdir DIR] [--profile OUT.prof] [--reuse]

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
a cProfile of the dockd run (read it with ``python -m pstats``).
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
    counts = {"probe_calls": 0, "probed": 0}

    def timed(owner: Any, name: str, stage: str) -> None:
        real = getattr(owner, name)

        def wrapper(*args: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return real(*args, **kw)
            finally:
                spent[stage] += time.perf_counter() - t
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
        t = time.perf_counter()
        try:
            return real_batch(self, paths)
        finally:
            spent["probe"] += time.perf_counter() - t
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
    spent["register"] -= spent["scan"]
    spent["check"] = spent.pop("process") - spent["probe"]
    print("\n@@RESULT@@" + json.dumps({"rc": rc, "total": total, "stages": spent, **counts}))


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
    floor = baseline(root, base / "baseline")
    print(f"cp -r + sync + sha256sum: {floor:7.1f} s  ({len(files) / floor:7.0f} clips/s)")
    r = run_dockd(root, base / "dock", args.probe, cores, args.profile)
    total = r["total"]
    for stage in STAGES:
        s = r["stages"][stage]
        rate = f"{len(files) / s:8.0f} clips/s" if s > 0.05 else ""
        print(f"  {stage:<11} {s:8.1f} s {rate}")
    print(f"dockd ingest total:  {total:7.1f} s  ({len(files) / total:.0f} clips/s); "
          f"{total / floor:.1f}x the baseline; target {TARGET_S:.0f} s: "
          f"{'met' if total <= TARGET_S else 'NOT met'}")
    print(f"probe_batch calls: {r['probe_calls']} for {r['probed']} clips; summary: "
          f"{json.dumps(r['summary'], ensure_ascii=False)[:400]}; load "
          f"{os.getloadavg()[0]:.1f}")
    return 0 if r["rc"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
