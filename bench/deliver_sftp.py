"""SFTP delivery benchmark: dockd's ``SftpTarget`` against ``scp``/``sftp`` in the same run.

    .venv/bin/python bench/deliver_sftp.py [--size 512MiB] [--file-size 64MiB] [--repeat 3]
                                           [--parallel 2] [--workdir bench/work-sftp] [--keep]
    .venv/bin/python bench/deliver.py --sftp [same options]

Starts a throw-away OpenSSH server on 127.0.0.1 (``tests/sshd.py``), writes ``--size`` of
random clips (incompressible, like video), reads them once so every case starts from a warm
page cache, then runs the cases below ``--repeat`` times, interleaved (one round = every
case once), so load from other jobs on the machine hits all cases alike. Before every run
the destination directory is removed and ``sync`` is run. Connection set-up is inside
every timing (scp/sftp start a process and connect, dockd opens a new target).

* ``scp``                   OpenSSH's scp with its defaults (SFTP protocol, chacha20-poly1305)
* ``scp aes128-gcm``        the same with the cipher dockd prefers
* ``sftp``                  ``sftp -b`` with one ``put`` per file, defaults
* ``scp + sync + ssh sha256sum``  like for like with dockd: scp, make it durable, hash
                            every file on the server
* ``dockd readback``        ``put_file`` per file, the default configuration: partial, hash
                            while sending, chmod, fsync, re-read over SFTP and hash, link
* ``dockd readback xN``     the same with N files in parallel (``max_concurrency``)
* ``dockd checksum``        ``verify = "checksum"``: the server hashes what landed
* ``dockd upload phase``    from the first dockd run's counters: bytes / time spent
                            sending (read + hash + transfer + chmod + fsync), no verify

The headline ratio is dockd's full delivery (default config, best of the runs) against
plain ``scp`` (best of the runs), which neither verifies nor fsyncs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def _setup_path() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def _parse_size(text: str) -> int:
    _setup_path()
    from dockd.config import parse_size

    return parse_size(text)


def make_clips(src: Path, total: int, file_size: int) -> list[tuple[Path, str, int]]:
    """Random clips under ``src`` (kept between runs); (path, sha256, size) each."""
    src.mkdir(parents=True, exist_ok=True)
    out = []
    n = max(1, -(-total // file_size))
    for i in range(n):
        path = src / f"ZFY0012345_100234_20240301{8 + i // 60:02d}{i % 60:02d}00_{i + 1:04d}.MP4"
        if not (path.exists() and path.stat().st_size == file_size):
            with open(path, "wb") as f:
                left = file_size
                while left > 0:
                    f.write(os.urandom(min(8 * MIB, left)))
                    left -= 8 * MIB
        h = hashlib.sha256()
        with open(path, "rb") as f:  # also warms the page cache
            while chunk := f.read(8 * MIB):
                h.update(chunk)
        out.append((path, h.hexdigest(), file_size))
    subprocess.run(["sync"], check=True)
    return out


def _reset(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    subprocess.run(["sync"], check=True)


def run_scp(server: Any, files: list[Path], dest: Path, extra: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(["scp", "-q", *server.client_options(), *extra, "-P", str(server.port),
                    *map(str, files), f"{server.user}@{server.host}:{dest}/"],
                   check=True, timeout=600)
    return time.perf_counter() - t


def run_scp_checked(server: Any, files: list[Path], dest: Path) -> float:
    """scp, then what dockd does on top: make it durable and hash it on the server."""
    t = time.perf_counter()
    run_scp(server, files, dest, [])
    subprocess.run(["sync"], check=True)  # the server is this machine
    subprocess.run(server.ssh_command("sha256sum", *(str(dest / f.name) for f in files)),
                   check=True, timeout=600, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def run_sftp(server: Any, files: list[Path], dest: Path) -> float:
    batch = "".join(f'put "{f}" "{dest}/{f.name}"\n' for f in files)
    t = time.perf_counter()
    subprocess.run(["sftp", "-q", *server.client_options(), "-P", str(server.port), "-b", "-",
                    f"{server.user}@{server.host}"], input=batch.encode(), check=True,
                   timeout=600, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def run_dockd(server: Any, clips: list[tuple[Path, str, int]], dest: Path, *, verify: str,
              parallel: int) -> tuple[float, dict[str, float]]:
    _setup_path()
    from dockd.delivery.sftp import SftpTarget

    target = SftpTarget("bench", host=server.host, port=server.port, user=server.user,
                        key_file=server.client_key, known_hosts=server.known_hosts,
                        path=str(dest), verify=verify, max_concurrency=parallel)
    prefix = "110100/0012345/ZFY0012345/2024-03-01/20240301T003000Z_dock-01_port-01_1"
    t = time.perf_counter()
    try:
        def put(c: tuple[Path, str, int]) -> None:
            r = target.put_file(c[0], f"{prefix}/{c[0].name}", sha256=c[1], size=c[2])
            assert not r.already_present

        if parallel == 1:
            for c in clips:
                put(c)
        else:
            with ThreadPoolExecutor(parallel) as pool:
                list(pool.map(put, clips))
        wall = time.perf_counter() - t
    finally:
        target.close()
    s = target.stats
    return wall, {"send_mbps": s.bytes_sent / s.send_seconds / 1e6 if s.send_seconds else 0.0,
                  "check_mbps": s.bytes_checked / s.check_seconds / 1e6
                  if s.check_seconds else 0.0}


def bench_sftp(size: int = 512 * MIB, file_size: int = 64 * MIB, repeat: int = 3,
               parallel: int = 2, workdir: Path | None = None, keep: bool = False,
               out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; returns {case: {"best": MB/s, "median": MB/s}, "ratio": ...}."""
    _setup_path()
    from tests.sshd import SshdServer

    own = workdir is None
    work = Path(workdir) if workdir is not None else Path(
        tempfile.mkdtemp(prefix="dockd-bench-sftp-"))
    work.mkdir(parents=True, exist_ok=True)
    server = SshdServer(work / "sshd")
    try:
        clips = make_clips(work / "src", size, file_size)
        files = [c[0] for c in clips]
        total = sum(c[2] for c in clips)
        dest = server.root / "dest"
        out(f"sftp bench: {len(clips)} files x {file_size / MIB:.0f} MiB = {total / MIB:.0f} "
            f"MiB, {repeat} rounds, nproc={os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
        cases: dict[str, Callable[[], float]] = {
            "scp": lambda: run_scp(server, files, dest, []),
            "scp aes128-gcm": lambda: run_scp(server, files, dest,
                                              ["-c", "aes128-gcm@openssh.com"]),
            "sftp": lambda: run_sftp(server, files, dest),
            "scp + sync + ssh sha256sum": lambda: run_scp_checked(server, files, dest),
        }
        phases: list[dict[str, float]] = []

        def dockd(verify: str, par: int) -> Callable[[], float]:
            def run() -> float:
                wall, stats = run_dockd(server, clips, dest, verify=verify, parallel=par)
                if par == 1 and verify == "readback":
                    phases.append(stats)
                return wall
            return run

        cases["dockd readback"] = dockd("readback", 1)
        if parallel > 1:
            cases[f"dockd readback x{parallel}"] = dockd("readback", parallel)
        cases["dockd checksum"] = dockd("checksum", 1)
        with server:
            _reset(dest)
            run_scp(server, files, dest, [])  # warm-up, untimed
            speeds: dict[str, list[float]] = {name: [] for name in cases}
            for r in range(repeat):
                for name, fn in cases.items():
                    _reset(dest)
                    speeds[name].append(total / fn() / 1e6)
                out(f"  round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in
                                                     speeds.items()))
        speeds["dockd upload phase"] = [p["send_mbps"] for p in phases]
        result: dict[str, Any] = {
            name: {"best": max(v), "median": statistics.median(v)}
            for name, v in speeds.items() if v}
        base = result["scp"]["best"]
        out("")
        out("| case | best MB/s | median MB/s | best / scp best |")
        out("| --- | ---: | ---: | ---: |")
        for name, v in result.items():
            out(f"| {name} | {v['best']:.0f} | {v['median']:.0f} | {v['best'] / base:.2f}x |")
        result["ratio"] = result["dockd readback"]["best"] / base
        out(f"\nheadline: dockd full delivery (readback) / scp = {result['ratio']:.2f}x "
            f"(target 0.8x)")
        return result
    finally:
        server.stop()
        if own and not keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not keep:
            shutil.rmtree(work / "sshd" / "store", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="512MiB")
    p.add_argument("--file-size", default="64MiB")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    a = p.parse_args(argv)
    bench_sftp(_parse_size(a.size), _parse_size(a.file_size), a.repeat, a.parallel,
               a.workdir, a.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
