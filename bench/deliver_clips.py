"""The delivery stage alone on many small signed clips: what landing one clip costs.

    .venv/bin/python bench/deliver_clips.py [--clips 2000] [--cores 2] [--before-src DIR]

Builds a state database with one signed docking of ``--clips`` staged clips (9 kB each,
pending to one local target), then runs one ``DeliveryStage.deliver_pending`` pass over
them, pinned to ``--cores`` CPUs, first with the dockd at ``--before-src`` (e.g. a checkout
of the code before this change), then with this tree, on fresh copies of the same files.
Prints wall time and CPU per clip, write transactions per clip (``State.tx`` calls) and
reads of each delivered copy (``LocalTarget._read_back``), and the ratio of the two runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import hashlib, json, os, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
work, n = Path(sys.argv[2]), int(sys.argv[3])
from dockd.config import for_workdir
from dockd.delivery.local import LocalTarget
from dockd.stages.deliver import DeliveryStage
from dockd.store import State

cfg = for_workdir(work)
st = State(cfg.paths.database)
staging = cfg.paths.staging_dir / "1"
staging.mkdir(parents=True, exist_ok=True)
now = "2026-12-01T00:00:00+00:00"
with st.tx() as conn:
    conn.execute("INSERT INTO recorders (serial) VALUES ('A1')")
    conn.execute("INSERT INTO dockings (id, serial, port, state, docked_at, deadline_at, "
                 "snapshot) VALUES (1, 'A1', 'p1', 'signed', ?, ?, '{}')", (now, now))
    for i in range(n):
        data = os.urandom(9000)
        p = staging / f"C{i:06d}.MP4"
        p.write_bytes(data)
        conn.execute(
            "INSERT INTO clips (id, docking_id, first_docking_id, serial, rel_path, safe_name, "
            "size, state, sha256, staged_path, deadline_at, retention_class) VALUES "
            "(?, 1, 1, 'A1', ?, ?, ?, 'signed', ?, ?, ?, 'standard')",
            (i + 1, f"DCIM/{p.name}".encode(), p.name, len(data),
             hashlib.sha256(data).hexdigest(), str(p), now))
        conn.execute("INSERT INTO deliveries (clip_id, target, state, key) VALUES "
                     "(?, ?, 'pending', ?)", (i + 1, cfg.targets[0].name, f"d1/{p.name}"))
os.sync()
tx = [0]
real_tx = State.tx
def counted(self):
    tx[0] += 1
    return real_tx(self)
State.tx = counted
reads = [0]
real_rb = LocalTarget._read_back
def read_back(self, dir_fd, name):
    reads[0] += 1
    return real_rb(self, dir_fd, name)
LocalTarget._read_back = read_back
target = LocalTarget(cfg.targets[0].name, cfg.targets[0].path)
cancel = threading.Event()
stage = DeliveryStage(cfg, st, [target], None, staging_dir=lambda d: cfg.paths.staging_dir / str(d),
                      cancel=lambda: cancel)
t, c = time.perf_counter(), time.process_time()
landed = stage.deliver_pending()
wall, cpu = time.perf_counter() - t, time.process_time() - c
states = {r["state"] for r in st.query("SELECT state FROM clips")}
left = sum(1 for p in staging.iterdir())
print(json.dumps({"landed": landed, "wall": wall, "cpu": cpu, "tx": tx[0], "reads": reads[0],
                  "states": sorted(states), "staged_left": left}))
"""


def run(src: Path, n: int, cores: list[int]) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="deliver-clips-") as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(src), tmp, str(n)],
                             capture_output=True, text=True, check=False,
                             preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if out.returncode != 0:
        raise SystemExit(f"{src}: failed:\n{out.stderr[-3000:]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--before-src", type=Path, default=None,
                    help="a checkout of the code to compare with (run first)")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))[:args.cores]
    print(f"{args.clips} signed clips of 9 kB, one local target, pinned to CPUs {cores}; "
          f"load {os.getloadavg()[0]:.1f}")
    runs = [("before", args.before_src)] if args.before_src else []
    runs.append(("this tree", REPO))
    results = {}
    for label, src in runs:
        r = run(src, args.clips, cores)
        n = args.clips
        results[label] = r
        print(f"  {label:<10} {n / r['wall']:7.0f} clips/s  {1000 * r['wall'] / n:6.2f} ms/clip "
              f"wall  {1000 * r['cpu'] / n:5.2f} ms/clip CPU  {r['tx'] / n:4.2f} tx/clip  "
              f"{r['reads'] / n:4.2f} reads/copy  (landed {r['landed']}, clips {r['states']}, "
              f"staged left {r['staged_left']})")
    if len(results) == 2:
        b, a = results["before"], results["this tree"]
        print(f"  this tree / before: wall {a['wall'] / b['wall']:.2f}x, "
              f"CPU {a['cpu'] / b['cpu']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
