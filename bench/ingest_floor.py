"""``dockd ingest`` of one recorder to a local target against the disk's own floor (#13).

    .venv/bin/python bench/ingest_floor.py [--size 1GiB] [--clips 8] [--repeat 3]
                                           [--workdir DIR] [--keep] [--json]

Builds a simulated recorder (``dockd.devices.simulator``: ``--clips`` real MP4 clips padded
to ``--size`` in all, continuous recording, so no spoken-note check runs), then, ``--repeat``
rounds, each round both cases in alternating order, with the page cache dropped before
every run (``echo 3 > /proc/sys/vm/drop_caches``; where that is not permitted the output
says so and the runs start warm):

* **floor**: for every clip, with ``dd bs=4M`` and ``O_DIRECT`` on every read and write
  (``conv=fsync`` on every write), the traffic a verified delivery needs:
  ``src -> staging``, ``staging -> /dev/null`` (read back), ``staging -> target``,
  ``target -> /dev/null`` (read back). No hashing, no database, no probing.
* **dockd**: ``dockd ingest --workdir W --json SRC`` in a fresh work directory (state,
  staging, the local target ``W/target``), i.e. identify, copy (hash, fsync, read back),
  probe, check, sign, deliver (write, fsync, read back), verify what landed. Its log
  (timestamps of "copied", "verified on" and "delivered" lines) splits the wall time into
  phases.

Printed: best and median seconds per case, the ratio floor / dockd (throughput of dockd
relative to the floor; the target of #13 is >= 0.8x), and dockd's phases. Also the
*strict* floor, the same dd traffic without the second read of staging (the contract's
minimum of #13 item 3: the staged copy is read back once, and that read feeds delivery),
taken from the same dd timings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
DD_BS = "4M"


# --------------------------------------------------------------------------- helpers


def drop_caches() -> str | None:
    """Write back and drop the page cache; the reason when that is not permitted."""
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError as exc:
        return f"page cache NOT dropped ({exc.strerror or exc}): runs start warm"
    return None


def build_recorder(dest: Path, total: int, clips: int) -> list[Path]:
    from dockd.config import Config
    from dockd.devices.simulator import RecorderSpec, simulate_recorder

    cfg = Config()
    spec = RecorderSpec(serial="B0000001", segments=clips, segment_seconds=1.0,
                        target_size=total)
    sim = simulate_recorder(dest, spec, profile=cfg.profiles[0], tz=cfg.tz, tools=cfg.tools)
    subprocess.run(["sync"], check=True)
    return [dest / c.rel_path for c in sim.clips]


def dd(src: str, dst: str, *, write: bool) -> float:
    cmd = ["dd", f"if={src}", f"of={dst}", f"bs={DD_BS}", "iflag=direct", "status=none"]
    if write:
        cmd += ["oflag=direct", "conv=fsync"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def run_floor(files: list[Path], work: Path) -> dict[str, float]:
    """The dd traffic of one verified delivery of every clip; seconds per kind of step."""
    stage, target = work / "staging", work / "target"
    for d in (stage, target):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    steps = {"src->staging": 0.0, "staging->null": 0.0, "staging->target": 0.0,
             "target->null": 0.0}
    for i, f in enumerate(files):
        s, t = str(stage / f"{i}.MP4"), str(target / f"{i}.MP4")
        steps["src->staging"] += dd(str(f), s, write=True)
        steps["staging->null"] += dd(s, "/dev/null", write=False)
        steps["staging->target"] += dd(s, t, write=True)
        steps["target->null"] += dd(t, "/dev/null", write=False)
    return steps


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _phases(log: str, t_start: float, t_end: float) -> dict[str, float]:
    """Split dockd's wall time using its log timestamps (wall clock, ms)."""
    marks: dict[str, float] = {}
    first: float | None = None
    for line in log.splitlines():
        m = _LOG_TIME.match(line)
        if not m:
            continue
        ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        first = ts if first is None else first
        if ": copied " in line:
            marks["copied"] = ts
        elif " verified on " in line:
            marks.setdefault("first_delivered", ts)
            marks["clips_delivered"] = ts
        elif " delivered and verified on " in line:
            marks["docking_delivered"] = ts
    out: dict[str, float] = {}
    if first is None or "copied" not in marks:
        return out
    out["start-up to first log line"] = first - t_start
    out["copy (to last clip copied)"] = marks["copied"] - first
    if "first_delivered" in marks:
        out["probe, check, sign (to first clip delivered)"] = marks["first_delivered"] - marks["copied"]
        out["deliver clips (first to last)"] = marks["clips_delivered"] - marks["first_delivered"]
        end = marks.get("docking_delivered", marks["clips_delivered"])
        out["manifest, final verify, exit"] = t_end - end
    return out


def run_dockd(src: Path, work: Path, nclips: int, code: Path | None = None
              ) -> tuple[float, dict[str, float]]:
    """``dockd ingest`` of ``src``; ``code``: another checkout's ``dockd`` package to run."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd = [sys.executable, "-m", "dockd.cli", "ingest", "--workdir", str(work), "--json",
           str(src)]
    env = dict(os.environ, DOCKD_CONFIG="", PYTHONUNBUFFERED="1")
    if code is not None:
        env["PYTHONPATH"] = str(code)
    t_start = time.time()
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=code if code is not None else REPO)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"dockd ingest failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    if not result["ok"] or result["clips_delivered"] != nclips:
        raise SystemExit(f"dockd ingest did not deliver every clip: {result}")
    return wall, _phases(proc.stderr, t_start, t_start + wall)


def machine() -> str:
    fs = subprocess.run(["df", "--output=fstype", str(REPO)], capture_output=True,
                        text=True).stdout.split()[-1]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"nproc={os.cpu_count()}, ram={mem:.0f} GiB, fs={fs}, "
            f"load average {os.getloadavg()[0]:.1f}")


# --------------------------------------------------------------------------- main


def main() -> int:
    from dockd.config import parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1GiB", help="recorder size (default 1GiB)")
    ap.add_argument("--clips", type=int, default=8, help="number of clips (default 8)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the recorder, staging and targets go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    ap.add_argument("--compare", type=Path, default=None, metavar="DIR",
                    help="also run the dockd package of another checkout (DIR holds its "
                         "dockd/, e.g. `git archive <commit> dockd | tar -x -C DIR`), "
                         "interleaved with this one in every round")
    args = ap.parse_args()

    work = (args.workdir or Path(tempfile.mkdtemp(prefix="dockd-floor-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    src = work / "recorder"
    print(f"machine: {machine()}")
    try:
        shutil.rmtree(src, ignore_errors=True)
        t = time.perf_counter()
        files = build_recorder(src, parse_size(args.size), args.clips)
        nbytes = sum(f.stat().st_size for f in files)
        print(f"recorder: {len(files)} clips, {nbytes / MIB:.0f} MiB, built in "
              f"{time.perf_counter() - t:.1f} s")
        floor: list[float] = []
        strict: list[float] = []
        steps_seen: list[dict[str, float]] = []
        dockd: list[float] = []
        phases: list[dict[str, float]] = []
        other: list[float] = []
        other_phases: list[dict[str, float]] = []
        cache_note: str | None = None
        cases = ["floor", "dockd"] + (["compare"] if args.compare else [])
        for r in range(args.repeat):
            order = cases if r % 2 == 0 else cases[::-1]
            for case in order:
                shutil.rmtree(work / "floor", ignore_errors=True)
                shutil.rmtree(work / "dockd", ignore_errors=True)
                cache_note = drop_caches() or cache_note
                if case == "floor":
                    steps = run_floor(files, work / "floor")
                    steps_seen.append(steps)
                    floor.append(sum(steps.values()))
                    strict.append(floor[-1] - steps["staging->null"])
                    print(f"round {r + 1}: floor {floor[-1]:.2f} s", flush=True)
                elif case == "dockd":
                    wall, ph = run_dockd(src, work / "dockd", len(files))
                    dockd.append(wall)
                    phases.append(ph)
                    print(f"round {r + 1}: dockd {wall:.2f} s", flush=True)
                else:
                    wall, ph = run_dockd(src, work / "dockd", len(files),
                                         args.compare.absolute())
                    other.append(wall)
                    other_phases.append(ph)
                    print(f"round {r + 1}: dockd ({args.compare}) {wall:.2f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\npage cache: {cache_note or 'dropped before every run'}")
    mb = nbytes / 1e6
    print(f"\n{'case':<34}{'best s':>8}{'median s':>10}{'best MB/s':>11}")
    rows = [("floor (dd O_DIRECT, 4 passes)", floor),
            ("strict floor (staging read once)", strict), ("dockd ingest", dockd)]
    if other:
        rows.append((f"dockd ingest ({args.compare})", other))
    for name, ts in rows:
        print(f"{name:<34}{min(ts):>8.2f}{statistics.median(ts):>10.2f}{mb / min(ts):>11.0f}")
    ratio = min(floor) / min(dockd)
    ratio_med = statistics.median(floor) / statistics.median(dockd)
    sratio = min(strict) / min(dockd)
    print(f"\ndockd / floor:        {ratio:.2f}x best, {ratio_med:.2f}x median (target >= 0.8x)")
    print(f"dockd / strict floor: {sratio:.2f}x best")
    if other:
        print(f"dockd ({args.compare}) / floor: {min(floor) / min(other):.2f}x best, "
              f"{statistics.median(floor) / statistics.median(other):.2f}x median")
    best_steps = min(steps_seen, key=lambda s: sum(s.values()))
    print("\nfloor steps (best run): " + ", ".join(f"{k} {v:.2f} s" for k, v in best_steps.items()))
    best_ph = phases[dockd.index(min(dockd))]
    print("dockd phases (best run): " + ", ".join(f"{k} {v:.2f} s" for k, v in best_ph.items()))
    if other:
        oph = other_phases[other.index(min(other))]
        print(f"dockd ({args.compare}) phases (best run): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in oph.items()))
    if args.json:
        print(json.dumps({"bytes": nbytes, "floor_s": floor, "strict_floor_s": strict,
                          "dockd_s": dockd, "ratio_best": ratio, "ratio_median": ratio_med,
                          "strict_ratio_best": sratio, "dockd_phases": phases,
                          "floor_steps": steps_seen, "cache": cache_note,
                          "compare_s": other, "compare_phases": other_phases}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
