"""Many ports at once: the real daemon, N recorders plugged together, sources at USB speed (#13).

    .venv/bin/python bench/dock.py [--ports 4,8,25] [--rate 35MB/s] [--recorder-size 128MiB]
                                   [--clips 4] [--target local|sftp|both] [--workdir DIR]
                                   [--timeout 900] [--json FILE] [--keep] [--no-floor]

For each N in ``--ports``, in a fresh work directory:

1. builds N simulated recorders (``dockd.devices.simulator``: real MP4 clips padded to
   ``--recorder-size``, distinct serials and bytes), writes a daemon configuration
   (directory device source with N ports, ``offload.workers = N`` so every port copies at
   once, ``settle_seconds = 0.3``, spoken-note checks off, the web page off) with a local
   target, an SFTP target on a throw-away OpenSSH on 127.0.0.1 (``tests/sshd.py``), or both
   (both required);
2. reads every source once (page cache warm: a recorder's bytes come over its own USB
   bus, not off the staging disk), then measures the **dd floor** for the same bytes:
   per clip ``src -> staging`` (``oflag=direct conv=fsync``), ``staging -> /dev/null``,
   ``staging -> target`` and ``target -> /dev/null`` (all ``O_DIRECT``), one after another,
   and the same traffic with N streams at once (one per recorder: what the disk allows N
   ports together), for the copy alone and for copy + delivery;
3. starts the real daemon (``dockd run --config ... --workdir ...``, its own process; see
   *Throttle*), plugs all N recorders at once (``simulator.plug``: one rename per port),
   and waits until every docking is ``delivered`` (manifest on every target) or
   ``--timeout``; it samples the daemon's open files every 0.2 s and reads its peak RSS
   (``VmHWM``);
4. reads the daemon's state database (read-only) and prints per port: bytes, copy time
   (docked -> last clip copied), copy throughput, dock-to-delivered time and its ratio to
   the copy time; then aggregate copy and delivered throughput against N x rate and against
   the dd floor, peak RSS and open files.

**Throttle.** The sources are read through the copy engine's pacer
(``dockd.ingest.pacing.pace_sources``): the daemon process is started by this script as
``python bench/dock.py --serve RATE run --config ...``, which sets the pacer and then runs
``dockd.cli.main(["run", ...])`` — the same daemon as ``dockd run``. Each copy's reader
sleeps after every chunk until ``bytes_read / RATE`` seconds have passed since the copy
started: each port's *source reads* are limited to RATE, as a USB 2.0 (~35 MB/s) or
USB 3 (~300 MB/s) bus limits them; nothing else is throttled (staging, targets, hashing,
SFTP run at full speed). Reads that only re-hash a recorder file (clips already known
from an earlier docking, a resumed copy) are not paced. Works unprivileged; a cgroup v2
``io.max`` on loop devices was not available here (only the ``hugetlb`` controller in the
unified hierarchy; loop mounts need root).

Exit status 1 if a recorder was not delivered in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIB = 1024 * 1024


# --------------------------------------------------------------------------- the daemon


def serve(argv: list[str]) -> int:
    """``--serve RATE <dockd arguments>``: the daemon with its source reads paced to RATE."""
    from dockd.cli import main as dockd_main
    from dockd.config import parse_size
    from dockd.ingest.offload import pace_sources

    pace_sources(parse_rate(argv[0], parse_size))
    return dockd_main(argv[1:])


def parse_rate(text: str, parse_size: Any) -> float:
    """'35MB/s', '300 MB/s', '0' (unpaced) -> bytes per second."""
    t = text.strip()
    if t.lower().endswith("/s"):
        t = t[:-2]
    return float(parse_size(t))


@dataclass
class Run:
    n: int
    work: Path
    target: str
    rate: float
    recorders: dict[int, list[Path]] = field(default_factory=dict)
    plugged_at: dict[int, float] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    fds_max: int = 0
    fds_samples: list[int] = field(default_factory=list)
    rss_peak_kb: int = 0
    sshd: Any = None

    @property
    def ports_dir(self) -> Path:
        return self.work / "ports"

    @property
    def database(self) -> Path:
        return self.work / "state" / "dockd.db"

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for files in self.recorders.values() for f in files)


def write_config(run: Run) -> Path:
    from tests.sshd import SshdServer

    targets = []
    if run.target in ("local", "both"):
        targets.append(f"""
[[targets]]
name = "primary"
kind = "local"
path = "{run.work}/target"
""")
    if run.target in ("sftp", "both"):
        s = run.sshd = SshdServer(run.work / "sshd").start()
        targets.append(f"""
[[targets]]
name = "offsite"
kind = "sftp"
host = "{s.host}"
port = {s.port}
user = "{s.user}"
key_file = "{s.client_key}"
known_hosts = "{s.known_hosts}"
path = "{s.root}"
""")
    cfg = run.work / "dockd.toml"
    cfg.write_text(f"""
[dock]
ports = {run.n}
[offload]
settle_seconds = 0.3
min_free = "0"
workers = {run.n}
[delivery]
retry_seconds = 2
[notes]
enabled = false
[web]
enabled = false
{''.join(targets)}""")
    return cfg


def build_recorders(run: Run, size: int, clips: int) -> None:
    from dockd.config import Config
    from dockd.devices.simulator import RecorderSpec, simulate_recorder

    c = Config()
    for port in range(1, run.n + 1):
        spec = RecorderSpec(serial=f"K{port:07d}", officer_no=f"{100000 + port}",
                            segments=clips, segment_seconds=1.0, target_size=size)
        sim = simulate_recorder(run.work / "pool" / f"r{port:02d}", spec,
                                profile=c.profiles[0], tz=c.tz, tools=c.tools)
        run.recorders[port] = [sim.root / clip.rel_path for clip in sim.clips]
    subprocess.run(["sync"], check=True)


def warm(run: Run) -> None:
    buf = bytearray(4 * MIB)
    for files in run.recorders.values():
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def dd(src: str, dst: str, *flags: str) -> None:
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=4M", "status=none", *flags],
                   check=True)


def dd_floor(run: Run) -> float:
    """Seconds for the dd traffic of a verified delivery of every clip, one at a time."""
    stage, target = run.work / "floor" / "staging", run.work / "floor" / "target"
    for d in (stage, target):
        d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sync"], check=True)
    t = time.perf_counter()
    for files in run.recorders.values():
        for i, f in enumerate(files):
            s, g = str(stage / f"{f.parent.parent.parent.name}-{i}"), str(target / f"{i}")
            dd(str(f), s, "oflag=direct", "conv=fsync")
            dd(s, "/dev/null", "iflag=direct")
            dd(s, g, "iflag=direct", "oflag=direct", "conv=fsync")
            dd(g, "/dev/null", "iflag=direct")
            os.unlink(s)
            os.unlink(g)
    secs = time.perf_counter() - t
    shutil.rmtree(run.work / "floor", ignore_errors=True)
    return secs


def dd_floor_parallel(run: Run, *, deliver: bool) -> float:
    """Seconds for the same dd traffic with the daemon's concurrency: one stream per
    recorder, all at once, each doing its clips one after another: ``src -> staging`` and
    ``staging -> /dev/null`` (the copy with its read-back), and with ``deliver`` also
    ``staging -> target`` and ``target -> /dev/null``. What the disk itself allows N ports
    to do at the same time; no pacing (the bus rate is not the disk's limit)."""
    base = run.work / "floor-par"
    stage, target = base / "staging", base / "target"
    for d in (stage, target):
        d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sync"], check=True)

    def one(port: int, files: list[Path]) -> None:
        for i, f in enumerate(files):
            s, g = str(stage / f"{port}-{i}"), str(target / f"{port}-{i}")
            dd(str(f), s, "oflag=direct", "conv=fsync")
            dd(s, "/dev/null", "iflag=direct")
            if deliver:
                dd(s, g, "iflag=direct", "oflag=direct", "conv=fsync")
                dd(g, "/dev/null", "iflag=direct")

    threads = [threading.Thread(target=one, args=(port, files))
               for port, files in run.recorders.items()]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    secs = time.perf_counter() - t
    shutil.rmtree(base, ignore_errors=True)
    return secs


def start_daemon(run: Run, config: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", DOCKD_CONFIG="")
    subprocess.run([sys.executable, "-m", "dockd.cli", "keygen", "--config", str(config),
                    "--workdir", str(run.work)], check=True, capture_output=True, timeout=120,
                   cwd=REPO, env=env)
    logf = (run.work / "daemon.log").open("ab")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(run.rate), "run",
           "--config", str(config), "--workdir", str(run.work)]
    run.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    logf.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            raise SystemExit(f"daemon exited ({run.proc.returncode}):\n"
                             f"{(run.work / 'daemon.log').read_text()[-3000:]}")
        if " ready: watching " in (run.work / "daemon.log").read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit("daemon did not become ready within 60 s")


def stop_daemon(run: Run) -> None:
    if run.proc is not None and run.proc.poll() is None:
        run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(60)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.proc.wait(10)
    if run.sshd is not None:
        run.sshd.stop()


def sampler(run: Run, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        sample(run)


def sample(run: Run) -> None:
    proc = run.proc
    if proc is None or proc.poll() is not None:
        return
    try:
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        status = Path(f"/proc/{proc.pid}/status").read_text()
    except OSError:
        return
    run.fds_samples.append(fds)
    run.fds_max = max(run.fds_max, fds)
    m = re.search(r"VmHWM:\s+(\d+)", status)
    if m:
        run.rss_peak_kb = max(run.rss_peak_kb, int(m.group(1)))


def query(run: Run, sql: str) -> list[sqlite3.Row]:
    try:
        conn = sqlite3.connect(f"file:{run.database}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return []
    try:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def wait_delivered(run: Run, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(run, "SELECT count(*) AS n FROM dockings WHERE state = 'delivered'")
        if rows and rows[0]["n"] >= run.n:
            return True
        if run.proc is not None and run.proc.poll() is not None:
            print(f"daemon exited early ({run.proc.returncode})", file=sys.stderr)
            return False
        time.sleep(0.25)
    return False


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def collect(run: Run) -> list[dict[str, Any]]:
    rows = query(run, """
        SELECT d.port, d.serial, d.state, d.docked_at, d.delivered_at,
               max(c.copied_at) AS copied, sum(c.size) AS bytes, count(c.id) AS clips,
               sum(c.state IN ('delivered', 'cleared')) AS clips_delivered
        FROM dockings d LEFT JOIN clips c ON c.docking_id = d.id
        GROUP BY d.id ORDER BY d.port, d.id""")
    out = []
    for r in rows:
        port = int(r["port"].rsplit("-", 1)[-1])
        docked, copied, delivered = ts(r["docked_at"]), ts(r["copied"]), ts(r["delivered_at"])
        copy_s = copied - docked if copied and docked else None
        deliv_s = delivered - docked if delivered and docked else None
        out.append({
            "port": r["port"], "serial": r["serial"], "state": r["state"],
            "clips": r["clips"], "clips_delivered": r["clips_delivered"] or 0,
            "bytes": r["bytes"] or 0,
            "plug_to_docked_s": docked - run.plugged_at[port] if docked else None,
            "copy_s": copy_s,
            "copy_mb_s": (r["bytes"] or 0) / 1e6 / copy_s if copy_s else None,
            "dock_to_delivered_s": deliv_s,
            "delivered_over_copy": deliv_s / copy_s if deliv_s and copy_s else None,
            "docked_at": docked, "copied_at": copied, "delivered_at": delivered,
        })
    return out


def one_run(args: argparse.Namespace, n: int) -> dict[str, Any]:
    work = args.workdir / f"n{n:02d}-{args.target}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "ports").mkdir(parents=True)
    run = Run(n=n, work=work, target=args.target, rate=args.rate_bps)
    for p in range(1, n + 1):
        (run.ports_dir / f"port-{p:02d}").mkdir()
    t = time.perf_counter()
    build_recorders(run, args.size_bytes, args.clips)
    print(f"\nN={n}: {n} recorders x {args.clips} clips, {run.nbytes / MIB:.0f} MiB in all, "
          f"built in {time.perf_counter() - t:.1f} s; target {args.target}", flush=True)
    warm(run)
    floor_s = None if args.no_floor else dd_floor(run)
    par: dict[str, float] = {}
    if not args.no_floor:
        warm(run)
        par["copy"] = dd_floor_parallel(run, deliver=False)
        warm(run)
        par["all"] = dd_floor_parallel(run, deliver=True)
    warm(run)
    config = write_config(run)
    stop = threading.Event()
    th = threading.Thread(target=sampler, args=(run, stop), daemon=True)
    ok = False
    try:
        start_daemon(run, config)
        sample(run)
        idle_fds = run.fds_max
        th.start()
        from dockd.devices.simulator import plug

        for port, files in run.recorders.items():
            run.plugged_at[port] = time.time()
            plug(files[0].parents[2], run.ports_dir, port)
        ok = wait_delivered(run, args.timeout)
        sample(run)
    finally:
        stop.set()
        if th.is_alive():
            th.join()
        stop_daemon(run)
    ports = collect(run)
    summary = summarize(run, ports, floor_s, idle_fds, par)
    summary["ok"] = ok and len(ports) == n and all(p["state"] == "delivered" for p in ports)
    report(run, ports, summary)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return {"n": n, "target": args.target, "ports": ports, **summary}


def summarize(run: Run, ports: list[dict[str, Any]], floor_s: float | None,
              idle_fds: int, par: dict[str, float] | None = None) -> dict[str, Any]:
    nbytes = sum(p["bytes"] for p in ports)
    docked = [p["docked_at"] for p in ports if p["docked_at"]]
    copied = [p["copied_at"] for p in ports if p["copied_at"]]
    delivered = [p["delivered_at"] for p in ports if p["delivered_at"]]
    copy_span = max(copied) - min(docked) if copied and docked else None
    deliv_span = max(delivered) - min(docked) if delivered and docked else None
    ratios = [p["delivered_over_copy"] for p in ports if p["delivered_over_copy"]]
    source_cap = run.n * run.rate / 1e6 if run.rate else None
    agg = nbytes / 1e6 / copy_span if copy_span else None
    return {
        "bytes": nbytes,
        "rate_mb_s": run.rate / 1e6,
        "aggregate_copy_mb_s": agg,
        "aggregate_copy_over_source_cap": agg / source_cap if agg and source_cap else None,
        "aggregate_delivered_mb_s": nbytes / 1e6 / deliv_span if deliv_span else None,
        "copy_span_s": copy_span,
        "delivered_span_s": deliv_span,
        "floor_s": floor_s,
        "floor_mb_s": nbytes / 1e6 / floor_s if floor_s else None,
        "delivered_over_floor": floor_s / deliv_span if floor_s and deliv_span else None,
        # the disk with N streams at once: copy (write + read-back) alone, and copy + deliver
        "parallel_copy_floor_mb_s": nbytes / 1e6 / par["copy"] if par else None,
        "parallel_floor_mb_s": nbytes / 1e6 / par["all"] if par else None,
        "delivered_over_parallel_floor": par["all"] / deliv_span if par and deliv_span else None,
        "delivered_over_copy_max": max(ratios) if ratios else None,
        "delivered_over_copy_median": statistics.median(ratios) if ratios else None,
        "peak_rss_mb": run.rss_peak_kb / 1024,
        "open_files_max": run.fds_max,
        "open_files_idle": idle_fds,
    }


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def report(run: Run, ports: list[dict[str, Any]], s: dict[str, Any]) -> None:
    print(f"{'port':<9}{'serial':<10}{'state':<11}{'clips':>7}{'MiB':>7}{'copy s':>8}"
          f"{'MB/s':>7}{'dock->deliv s':>15}{'/copy':>7}")
    for p in ports:
        print(f"{p['port']:<9}{p['serial']:<10}{p['state']:<11}"
              f"{p['clips_delivered']:>3}/{p['clips']:<3}{p['bytes'] / MIB:>7.0f}"
              f"{_f(p['copy_s']):>8}{_f(p['copy_mb_s'], '{:.1f}'):>7}"
              f"{_f(p['dock_to_delivered_s']):>15}{_f(p['delivered_over_copy']):>7}")
    cap = f"{run.n} x {run.rate / 1e6:.0f} MB/s = {run.n * run.rate / 1e6:.0f} MB/s" \
        if run.rate else "unpaced"
    print(f"aggregate copy:      {_f(s['aggregate_copy_mb_s'], '{:.1f}')} MB/s over "
          f"{_f(s['copy_span_s'])} s (source cap {cap}; "
          f"ratio {_f(s['aggregate_copy_over_source_cap'])}x, target >= 0.9x at 8 ports)")
    print(f"aggregate delivered: {_f(s['aggregate_delivered_mb_s'], '{:.1f}')} MB/s over "
          f"{_f(s['delivered_span_s'])} s; dd floor for the same bytes "
          f"{_f(s['floor_mb_s'], '{:.1f}')} MB/s ({_f(s['floor_s'])} s): delivered / floor "
          f"{_f(s['delivered_over_floor'])}x")
    if s.get("parallel_floor_mb_s"):
        need = 0.9 * run.n * run.rate / 1e6 if run.rate else None
        print(f"dd with {run.n} streams at once: copy + read-back "
              f"{_f(s['parallel_copy_floor_mb_s'], '{:.1f}')} MB/s, copy + deliver "
              f"{_f(s['parallel_floor_mb_s'], '{:.1f}')} MB/s (the disk's limit for this "
              f"concurrency; 0.9 x the source cap = {_f(need, '{:.1f}')} MB/s); delivered / "
              f"that floor {_f(s['delivered_over_parallel_floor'])}x")
    print(f"dock-to-delivered / copy time: median {_f(s['delivered_over_copy_median'])}x, "
          f"worst {_f(s['delivered_over_copy_max'])}x (target <= 1.1x)")
    print(f"daemon: peak RSS {s['peak_rss_mb']:.0f} MB, open files max {s['open_files_max']} "
          f"(idle {s['open_files_idle']})", flush=True)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        return serve(sys.argv[2:])
    from dockd.config import parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ports", default="4,8,25", help="comma-separated N (default 4,8,25)")
    ap.add_argument("--rate", default="35MB/s",
                    help="source read rate per port, e.g. 35MB/s (USB 2.0), 300MB/s (USB 3), "
                         "0 = unpaced (default 35MB/s)")
    ap.add_argument("--recorder-size", default="128MiB", help="bytes per recorder (128MiB)")
    ap.add_argument("--clips", type=int, default=4, help="clips per recorder (default 4)")
    ap.add_argument("--target", choices=("local", "sftp", "both"), default="local")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds to wait for every docking to be delivered (default 900)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    ap.add_argument("--no-floor", action="store_true", help="skip the dd floor")
    args = ap.parse_args()
    args.rate_bps = parse_rate(args.rate, parse_size)
    args.size_bytes = parse_size(args.recorder_size)
    ns = [int(x) for x in args.ports.split(",") if x.strip()]
    if not ns or any(n < 1 or n > 99 for n in ns):
        ap.error("--ports: numbers 1..99")
    own_tmp = args.workdir is None
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="dockd-bench-dock-"))).absolute()
    print(f"machine: nproc={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
          f"source rate {args.rate} per port (paced in the copy engine's reader)")
    results = []
    try:
        for n in ns:
            results.append(one_run(args, n))
    finally:
        if own_tmp and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    if len(results) > 1:
        print("\nN   aggregate MB/s  /cap   delivered/floor  worst deliv/copy  RSS MB  files")
        for r in results:
            print(f"{r['n']:<4}{_f(r['aggregate_copy_mb_s'], '{:.1f}'):>14}"
                  f"{_f(r['aggregate_copy_over_source_cap']):>7}{_f(r['delivered_over_floor']):>17}"
                  f"{_f(r['delivered_over_copy_max']):>18}{r['peak_rss_mb']:>8.0f}"
                  f"{r['open_files_max']:>7}")
    if args.json is not None:
        args.json.write_text(json.dumps({"rate": args.rate, "results": results}, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
