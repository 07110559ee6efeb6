"""S3 delivery benchmark: dockd's ``S3Target`` against ``rclone copy`` to the same endpoint.

    .venv/bin/python bench/deliver_s3.py [--size 512MiB] [--file-size 64MiB] [--repeat 3]

Builds clip-like files (``ZFY…_<time>_<seq>.MP4``, incompressible random bytes like
encoded video) under ``--workdir``, starts moto's S3 server in its own process on
127.0.0.1 (a fresh one for every run, so no run pays for the objects of the previous
one), and times, each ``--repeat`` times:

* ``rclone copy``            Debian's rclone, ``--transfers 4`` (its default), S3 provider
                             "Other", configured only by ``RCLONE_CONFIG_BENCH_*``
                             variables, ``AWS_CA_BUNDLE`` unset (rclone refuses it on HTTP)
* ``dockd``                  ``S3Target.put_file`` for every file from 4 threads (the queue's
                             default ``max_concurrency``), object lock off, default 64 MiB
                             part size (so a 64 MiB clip is one ``PutObject``)
* ``dockd multipart``        the same with 16 MiB parts (journalled, resumable)
* ``dockd + verify``         put, then ``verify`` with read-back (what delivery really costs)

The source files are read once before every run (page cache warm for every case). Best of
``--repeat`` is the headline, median beside it, and the client's CPU seconds per GB
(dockd's process, or the rclone child; not moto's) — steadier than MB/s on a shared box. moto itself is the bound here: it is a
single Python process that parses every request body.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
BUCKET = "bench-evidence"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoProcess:
    """moto's server in a child process on 127.0.0.1 with one empty bucket."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                     aws_access_key_id=ACCESS_KEY,
                     aws_secret_access_key=SECRET_KEY).create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def build_files(src: Path, total: int, file_size: int) -> list[Path]:
    files = []
    for i in range(max(1, -(-total // file_size))):
        p = src / f"ZFY0012345_100234_20240301{8 + i // 6:02d}{i % 6 * 10:02d}00_{i + 1:04d}.MP4"
        files.append(p)
        if p.exists() and p.stat().st_size == file_size:
            continue
        src.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = file_size
            while left > 0:
                f.write(os.urandom(min(8 * MIB, left)))
                left -= 8 * MIB
    return files


def _warm(files: list[Path]) -> dict[Path, str]:
    digests = {}
    for p in files:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(4 * MIB):
                h.update(chunk)
        digests[p] = h.hexdigest()
    return digests


def _client_cpu() -> float:
    """CPU seconds of this process (dockd's threads) and its reaped children (rclone)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_rclone(moto: MotoProcess, src: Path, transfers: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update({
        "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY,
        "RCLONE_CONFIG_BENCH_ENDPOINT": moto.url, "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    })
    t0 = time.perf_counter()
    subprocess.run(["rclone", "copy", "--transfers", str(transfers), str(src),
                    f"bench:{BUCKET}/rclone"], env=env, check=True)
    return time.perf_counter() - t0


def run_dockd(moto: MotoProcess, files: list[Path], digests: dict[Path, str], workers: int,
              part_size: int, verify: bool) -> float:
    sys.path.insert(0, str(REPO))
    from dockd.delivery.s3 import S3Credentials, S3Target

    with tempfile.TemporaryDirectory() as state:
        t = S3Target("bench", endpoint_url=moto.url, bucket=BUCKET, state_dir=Path(state),
                     credentials=S3Credentials(ACCESS_KEY, SECRET_KEY), prefix="dockd",
                     part_size=part_size, max_concurrency=workers, read_timeout=300)

        def one(p: Path) -> None:
            size = p.stat().st_size
            t.put_file(p, p.name, sha256=digests[p], size=size)
            if verify and not t.verify(p.name, sha256=digests[p], size=size):
                raise RuntimeError(f"{p.name} does not verify")

        try:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, files))
            return time.perf_counter() - t0
        finally:
            t.close()


def bench_s3(size: int = 512 * MIB, file_size: int = 64 * MIB, repeat: int = 3,
             workdir: Path = REPO / "bench" / "work", transfers: int = 4,
             keep: bool = False) -> dict[str, tuple[float, float]]:
    """Run the S3 cases; print and return {case: (best MB/s, median MB/s)}."""
    os.environ.pop("AWS_CA_BUNDLE", None)  # plain HTTP to 127.0.0.1: no CA bundle
    if shutil.which("rclone") is None:
        raise SystemExit("rclone is not installed (apt-get install rclone)")
    src = workdir / "s3-src"
    files = build_files(src, size, file_size)
    total = sum(p.stat().st_size for p in files)
    cases: dict[str, Callable[[MotoProcess, dict[Path, str]], float]] = {
        "rclone copy": lambda m, d: run_rclone(m, src, transfers),
        "dockd": lambda m, d: run_dockd(m, files, d, transfers, 64 * MIB, False),
        "dockd multipart (16 MiB parts)": lambda m, d: run_dockd(m, files, d, transfers,
                                                                 16 * MIB, False),
        "dockd + verify (read-back)": lambda m, d: run_dockd(m, files, d, transfers,
                                                             64 * MIB, True),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    print(f"{len(files)} files x {file_size // MIB} MiB = {total / MIB:.0f} MiB, "
          f"{transfers} parallel transfers, nproc={os.cpu_count()}", flush=True)
    for r in range(repeat):
        for name, case in cases.items():
            digests = _warm(files)
            moto = MotoProcess()
            try:
                before = _client_cpu()
                dt = case(moto, digests)
                used = _client_cpu() - before  # taken before moto (a child) is reaped
            finally:
                moto.stop()
            times[name].append(dt)
            cpu[name].append(used / (total / 1e9))
            print(f"  run {r + 1} {name:32s} {total / dt / 1e6:7.1f} MB/s  "
                  f"client CPU {used / (total / 1e9):5.1f} s/GB", flush=True)
    out = {name: (total / min(ts) / 1e6, total / statistics.median(ts) / 1e6)
           for name, ts in times.items()}
    print("\ncase                              best MB/s  median MB/s  client CPU s/GB")
    for name, (best, med) in out.items():
        print(f"{name:32s} {best:10.1f} {med:12.1f} {statistics.median(cpu[name]):10.1f}")
    base = out["rclone copy"]
    for name in list(out)[1:]:
        print(f"{name} / rclone: best {out[name][0] / base[0]:.2f}x, "
              f"median {out[name][1] / base[1]:.2f}x")
    if not keep:
        shutil.rmtree(src, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from dockd.config import parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="512MiB")
    ap.add_argument("--file-size", default="64MiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--transfers", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    bench_s3(parse_size(a.size), parse_size(a.file_size), a.repeat, a.workdir, a.transfers,
             a.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
