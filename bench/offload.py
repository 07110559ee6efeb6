"""Offload benchmark: dockd's copy+hash+fsync+verify against ``cp -r`` on the same tree.

    .venv/bin/python bench/offload.py [--size 2GiB] [--workdir bench/work] [--repeat 3] [--keep]

Builds a simulated recorder (``DCIM/<date>/<serial>_<officer>_<time>_<seq>.MP4``, each a
real tiny ffmpeg clip followed by random padding), then times, with the source warmed in
the page cache before every run and the destination removed and ``sync``-ed between runs:

* ``cp -r``                  plain copy (leaves dirty pages: no durability)
* ``cp -r + sync``           the same, made durable (for a like-for-like reading)
* ``cp -r + sha256sum``      copy, then hash every copy
* ``dockd``                  scan_recorder + copy_clip (verify on, re-read from disk),
                             in a subprocess that reports its own peak RSS
* ``dockd (buffered)``       no O_DIRECT: buffered writes, DONTNEED before the re-read
* ``dockd (no verify)``      fsync but no re-read

One untimed ``cp -r`` warms the machine first. The best of ``--repeat`` runs is
reported, with the median beside it. The 2 GiB of data is
removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def _parse_size(text: str) -> int:
    sys.path.insert(0, str(REPO))
    from dockd.config import parse_size

    return parse_size(text)


# --------------------------------------------------------------------------- tree


def make_seed_clip(path: Path) -> bytes:
    if not path.exists():
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=15:d=2",
             "-f", "lavfi", "-i", "sine=d=2", "-c:v", "libx264", "-c:a", "aac", "-shortest",
             "-metadata", "creation_time=2024-03-01T00:30:00Z", str(path)],
            check=True)
    return path.read_bytes()


def build_tree(src: Path, total: int, file_size: int, seed: bytes) -> list[Path]:
    files: list[Path] = []
    n = max(1, -(-total // file_size))
    pad_chunk = 8 * MIB
    for i in range(n):
        day = f"202403{1 + i // 4:02d}"
        name = f"ZFY0012345_100234_{day}{8 + i % 4:02d}3000_{i + 1:04d}.MP4"
        path = src / "DCIM" / day / name
        files.append(path)
        if path.exists() and path.stat().st_size == file_size:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(seed)
            left = file_size - len(seed)
            while left > 0:
                f.write(os.urandom(min(pad_chunk, left)))
                left -= pad_chunk
    subprocess.run(["sync"], check=True)
    return files


def warm(files: list[Path]) -> None:
    buf = bytearray(8 * MIB)
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def drop_caches() -> None:
    """Empty the page cache (needs root): every run then reads its source from the disk."""
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"--cold needs root to drop the page cache: {exc}") from exc


# --------------------------------------------------------------------------- runs


def run_cp(src: Path, dst: Path, *, hash_after: bool = False, sync: bool = False) -> float:
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    if sync:
        subprocess.run(["sync"], check=True)
    if hash_after:
        copies = sorted(str(p) for p in dst.rglob("*.MP4"))
        subprocess.run(["sha256sum", *copies], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def run_dockd(src: Path, dst: Path, extra: list[str]) -> tuple[float, dict[str, float]]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", str(src), str(dst), *extra],
                         check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    return wall, json.loads(out.stdout)


def child(src: Path, dst: Path, verify: bool, direct_io: bool) -> None:
    sys.path.insert(0, str(REPO))
    from dockd.config import ProfileConfig
    from dockd.ingest.offload import copy_clip
    from dockd.ingest.scan import scan_recorder

    t = time.perf_counter()
    scan = scan_recorder(src, ProfileConfig())
    total = 0
    for entry in scan.entries:
        res = copy_clip(src, entry, dst, verify=verify, direct_io=direct_io)
        total += res.size
    secs = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"bytes": total, "seconds": secs, "peak_rss_mb": rss,
                      "files": len(scan.entries)}))


def machine() -> str:
    fs = subprocess.run(["df", "--output=fstype", str(REPO)], capture_output=True,
                        text=True).stdout.split()[-1]
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"nproc={os.cpu_count()}, cpu={cpu}, ram={mem:.0f} GiB, fs={fs}, "
            f"python={platform.python_version()}, kernel={platform.release()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2GiB", help="total tree size (default 2GiB)")
    ap.add_argument("--file-size", default="256MiB", help="size of each clip (default 256MiB)")
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated tree")
    ap.add_argument("--quick", action="store_true", help="skip the dockd variants")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before every run (root): the source is read "
                         "from disk, as a docked recorder's clips are never in the dock's "
                         "cache")
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--buffered", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], not args.no_verify, not args.buffered)
        return 0

    total, file_size = _parse_size(args.size), _parse_size(args.file_size)
    work: Path = args.workdir.absolute()
    src, dst = work / "recorder", work / "dest"
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(f"page cache: {'dropped before every run (cold source)' if args.cold else 'source warm'}")
    t = time.perf_counter()
    files = build_tree(src, total, file_size, make_seed_clip(work / "seed.mp4"))
    nbytes = sum(p.stat().st_size for p in files)
    print(f"tree: {len(files)} files, {nbytes / MIB:.0f} MiB, built in {time.perf_counter() - t:.1f} s")

    cases: list[tuple[str, list[str] | None, dict[str, bool]]] = [
        ("cp -r", None, {}),
        ("cp -r + sync", None, {"sync": True}),
        ("cp -r + sha256sum", None, {"hash_after": True}),
        ("dockd", [], {}),
    ]
    if not args.quick:
        cases += [("dockd (buffered)", ["--buffered"], {}),
                  ("dockd (no verify)", ["--no-verify"], {})]
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    rss: list[float] = []
    try:
        # Untimed warm-up: the first copy after boot pays for touching fresh memory
        # (slow in a VM); every timed run then starts from the same state.
        warm(files)
        run_cp(src, dst)
        for _ in range(args.repeat):
            for name, dockd_args, cp_kw in cases:
                shutil.rmtree(dst, ignore_errors=True)
                subprocess.run(["sync"], check=True)
                if args.cold:
                    drop_caches()
                else:
                    warm(files)
                if dockd_args is None:
                    times[name].append(run_cp(src, dst, **cp_kw))
                else:
                    wall, info = run_dockd(src, dst, dockd_args)
                    if info["bytes"] != nbytes:
                        raise SystemExit(f"dockd copied {info['bytes']} of {nbytes} bytes")
                    times[name].append(wall)
                    rss.append(info["peak_rss_mb"])
    finally:
        shutil.rmtree(dst, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rate = {name: nbytes / 1e6 / min(ts) for name, ts in times.items()}
    print(f"\n{'run':<24}{'best MB/s':>10}{'median MB/s':>13}{'best s':>9}")
    for name, ts in times.items():
        print(f"{name:<24}{rate[name]:>10.0f}{nbytes / 1e6 / statistics.median(ts):>13.0f}"
              f"{min(ts):>9.2f}")
    children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\ndockd / cp -r:              {rate['dockd'] / rate['cp -r']:.2f}x")
    print(f"dockd / (cp -r + sync):     {rate['dockd'] / rate['cp -r + sync']:.2f}x")
    print(f"dockd / (cp + sha256sum):   {rate['dockd'] / rate['cp -r + sha256sum']:.2f}x")
    print(f"dockd peak RSS:             {max(rss):.0f} MB "
          f"(largest child of this run: {children_rss:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
