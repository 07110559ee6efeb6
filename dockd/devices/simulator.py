"""Simulated recorders: real ffmpeg clips, a GBK info file, a clock that may be wrong.

:func:`simulate_recorder` writes the tree a recorder shows over USB mass storage::

    ZFY_INFO.INI                                      (profile.info_file / info_encoding)
    DCIM/20261123/A1234567_012345_20261123085958_0001.MP4
    DCIM/20261123/A1234567_012345_20261123090000_0002.MP4

Clip names, the ``creation_time`` in each MP4 and the file mtimes are in the *recorder's*
clock (true time + ``clock_offset_s``), as a real recorder writes them; the returned
:class:`SimulatedRecorder` holds the ground truth in true (dock) time for tests.

Clips are real H.264 + AAC MP4s (``testsrc2`` picture, ``sine`` tone, or a speech WAV
followed by tone). To stay fast, each distinct (duration, audio) is encoded once and every
clip is derived from it: the ``mvhd``/``tkhd``/``mdhd`` creation times are patched in place
and a trailing ISO-BMFF ``free`` box carries the clip name (so no two clips hash alike) and,
for ``target_size``, random padding — still a valid MP4, no gigabytes encoded.

:func:`plug` / :func:`unplug` move a finished tree onto or off a port atomically (rename),
which is what :mod:`dockd.devices.watch` watches for.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from ..config import Config, ProfileConfig, ToolsConfig, parse_size
from ..errors import DockdError
from . import infofile

log = logging.getLogger(__name__)

CONTINUOUS_SPACING_S = 0.02
"""Spacing between segments a recorder splits without loss (reference: < 0.03 s)."""

SPEECH_TAIL_S = 0.5
"""Tone after a speech WAV when the WAV is longer than the segment."""

TONE_HZ = 1000
AUDIO_RATE = 16000
_MP4_EPOCH = datetime(1904, 1, 1, tzinfo=UTC)
_PAD_CHUNK = 1 << 20
T = TypeVar("T")


class SimulatorError(DockdError):
    """The simulator could not build a recorder (ffmpeg missing or failing, bad tree)."""


@dataclass(frozen=True)
class RecorderSpec:
    """What to simulate. Times are true (dock) times; the recorder's clock adds the offset."""

    serial: str = "A1234567"
    officer_no: str = "012345"
    officer_name: str = "张三"
    unit_no: str = "110105000000"
    unit_name: str = "北京市公安局朝阳分局"
    vendor: str = "SimCam"
    model: str = "DSJ-SIM1"
    firmware: str = "V2.3.1"
    battery: int = 87
    clock_offset_s: float = 0.0
    """Recorder clock minus true time, seconds."""
    start: datetime | None = None
    """True time of the first clip (aware); default: now - total footage - 1 h."""
    segments: int = 3
    segment_seconds: float = 2.0
    gaps: Mapping[int, float] = field(default_factory=dict)
    """Gap in seconds before segment i (i >= 1); 0 or absent: continuous split."""
    speech: Mapping[int, Path] = field(default_factory=dict)
    """A WAV placed at the start of segment i's audio (the rest is tone)."""
    target_size: int | None = None
    """Total bytes of footage wanted; clips are padded with a trailing ``free`` box."""
    width: int = 160
    height: int = 120
    fps: int = 10


@dataclass(frozen=True)
class SimClip:
    """Ground truth of one simulated clip."""

    name: str
    rel_path: str
    true_start_utc: datetime
    duration_s: float
    recorded_start_local: datetime
    """The recorder's clock at the clip start, in the dock's time zone (aware)."""
    size: int
    speech: Path | None = None

    @property
    def true_end_utc(self) -> datetime:
        return self.true_start_utc + timedelta(seconds=self.duration_s)


@dataclass(frozen=True)
class SimulatedRecorder:
    root: Path
    spec: RecorderSpec
    clips: tuple[SimClip, ...]
    now: datetime | None = None
    """True time at which the recorder wrote its info file."""

    @property
    def gaps(self) -> list[float]:
        """True seconds between the end of clip i-1 and the start of clip i, for i >= 1."""
        return [(b.true_start_utc - a.true_end_utc).total_seconds()
                for a, b in zip(self.clips, self.clips[1:], strict=False)]

    @property
    def total_size(self) -> int:
        return sum(c.size for c in self.clips)


# --------------------------------------------------------------------------- pure helpers


def frame_duration(seconds: float, fps: int) -> float:
    """``seconds`` rounded to whole frames (at least one)."""
    return max(1, round(seconds * fps)) / fps


def segment_durations(spec: RecorderSpec, speech_seconds: Mapping[int, float]) -> list[float]:
    """Nominal duration of each segment; a speech segment is stretched to hold its WAV."""
    out = []
    for i in range(spec.segments):
        d = spec.segment_seconds
        if i in speech_seconds:
            d = max(d, math.ceil((speech_seconds[i] + SPEECH_TAIL_S) * spec.fps) / spec.fps)
        out.append(frame_duration(d, spec.fps))
    return out


def timeline(start: datetime, durations: list[float], gaps: Mapping[int, float]) -> list[datetime]:
    """True start of each segment: previous end + gap (or the continuous spacing)."""
    starts = [start]
    for i in range(1, len(durations)):
        spacing = gaps.get(i) or CONTINUOUS_SPACING_S
        starts.append(starts[-1] + timedelta(seconds=durations[i - 1] + spacing))
    return starts


def validate_spec(spec: RecorderSpec) -> None:
    problems = []
    if spec.segments < 1:
        problems.append("segments must be at least 1")
    if spec.segment_seconds <= 0:
        problems.append("segment_seconds must be positive")
    if spec.fps < 1 or spec.width < 16 or spec.height < 16 or spec.width % 2 or spec.height % 2:
        problems.append("fps >= 1 and even width/height >= 16 are needed")
    for i, g in spec.gaps.items():
        if not 1 <= i < spec.segments or g < 0:
            problems.append(f"gap before segment {i}: index 1..{spec.segments - 1}, seconds >= 0")
    for i in spec.speech:
        if not 0 <= i < spec.segments:
            problems.append(f"speech for segment {i}: index 0..{spec.segments - 1}")
    if not 0 <= spec.battery <= 100:
        problems.append("battery must be 0..100")
    if spec.start is not None and spec.start.tzinfo is None:
        problems.append("start must be timezone-aware")
    if spec.target_size is not None and spec.target_size < 0:
        problems.append("target_size must not be negative")
    if problems:
        raise ValueError("bad recorder spec: " + "; ".join(problems))


def mp4_time(t: datetime) -> int:
    """Seconds since 1904-01-01 UTC, as MP4 headers count time."""
    return int((t - _MP4_EPOCH).total_seconds())


def patch_creation_time(data: bytearray, t: datetime) -> int:
    """Set creation/modification time of every mvhd, tkhd and mdhd box to ``t``.

    Returns how many boxes were patched. ``data`` is a whole MP4 file.
    """
    value = mp4_time(t)
    patched = 0
    for kind, payload, end in _walk(data, 0, len(data), ("moov", "trak", "mdia")):
        if kind not in ("mvhd", "tkhd", "mdhd") or end - payload < 12:
            continue
        if data[payload] == 1:
            struct.pack_into(">QQ", data, payload + 4, value, value)
        else:
            struct.pack_into(">II", data, payload + 4, value, value)
        patched += 1
    return patched


def _walk(data: bytearray, start: int, end: int,
          containers: tuple[str, ...]) -> Iterator[tuple[str, int, int]]:
    pos = start
    while pos + 8 <= end:
        size, kind_b = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        kind = kind_b.decode("latin-1")
        yield kind, pos + header, pos + size
        if kind in containers:
            yield from _walk(data, pos + header, pos + size, containers)
        pos += size


def free_box_header(total: int) -> bytes:
    """Header of a ``free`` box of ``total`` bytes (header included)."""
    if total < 1 << 32:
        return struct.pack(">I4s", total, b"free")
    return struct.pack(">I4sQ", 1, b"free", total)


def padding_plan(base_sizes: list[int], names: list[str], target: int | None) -> list[int]:
    """Size of the trailing ``free`` box of each clip so the total reaches ``target``."""
    minimal = [8 + len(n.encode()) for n in names]
    if target is None:
        return minimal
    extra = target - sum(base_sizes) - sum(minimal)
    if extra < 0:
        log.warning("target size %d is below the %d bytes the clips need; not padded",
                    target, sum(base_sizes) + sum(minimal))
        return minimal
    share, rest = divmod(extra, len(names))
    boxes = [m + share for m in minimal]
    boxes[-1] += rest
    return boxes


# --------------------------------------------------------------------------- ffmpeg


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SimulatorError(f"cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise SimulatorError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc.stdout


def wav_seconds(path: Path, tools: ToolsConfig) -> float:
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError):
        out = _run([tools.ffprobe, "-v", "error", "-show_entries", "format=duration",
                    "-of", "csv=p=0", str(path)])
        return float(out.strip())
    except OSError as exc:
        raise SimulatorError(f"cannot read speech WAV {path}: {exc}") from exc


def encode_template(out: Path, spec: RecorderSpec, duration: float, speech: Path | None,
                    tools: ToolsConfig) -> float:
    """Encode one H.264 + AAC MP4 of ``duration`` seconds; returns its probed duration."""
    video = f"testsrc2=size={spec.width}x{spec.height}:rate={spec.fps}:duration={duration}"
    tone = f"sine=frequency={TONE_HZ}:sample_rate={AUDIO_RATE}"
    cmd = [tools.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", video]
    if speech is None:
        graph = f"{tone}:duration={duration}[a]"
    else:
        cmd += ["-i", str(speech)]
        graph = (f"[1:a]aresample={AUDIO_RATE},aformat=channel_layouts=mono[s];{tone}[t];"
                 f"[s][t]concat=n=2:v=0:a=1,atrim=duration={duration}[a]")
    cmd += ["-filter_complex", graph, "-map", "0:v", "-map", "[a]",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(spec.fps),
            "-c:a", "aac", "-b:a", "32k", "-ac", "1", "-t", str(duration),
            "-metadata", "creation_time=2000-01-01T00:00:00Z", "-movflags", "+faststart",
            "-f", "mp4", str(out)]
    _run(cmd)
    probed = _run([tools.ffprobe, "-v", "error", "-show_entries", "format=duration",
                   "-of", "csv=p=0", str(out)])
    try:
        return float(probed.strip())
    except ValueError:
        return duration


# --------------------------------------------------------------------------- the recorder


def simulate_recorder(dest: Path, spec: RecorderSpec, *, profile: ProfileConfig, tz: ZoneInfo,
                      tools: ToolsConfig, now: datetime | None = None) -> SimulatedRecorder:
    """Write a simulated recorder tree at ``dest`` (absent or empty) and return its ground truth."""
    validate_spec(spec)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    offset = timedelta(seconds=spec.clock_offset_s)
    clip_dir = profile.clip_dirs[0] if profile.clip_dirs else "DCIM"

    with tempfile.TemporaryDirectory(prefix="dockd-sim-") as tmp:
        speech_s = {i: wav_seconds(Path(p), tools) for i, p in spec.speech.items()}
        nominal = segment_durations(spec, speech_s)
        templates: dict[tuple[float, str], tuple[bytes, float]] = {}
        for i, d in enumerate(nominal):
            wav = spec.speech.get(i)
            key = (d, str(wav or ""))
            if key not in templates:
                out = Path(tmp) / f"t{len(templates)}.mp4"
                real = encode_template(out, spec, d, Path(wav) if wav else None, tools)
                templates[key] = (out.read_bytes(), real)
        keys = [(d, str(spec.speech.get(i) or "")) for i, d in enumerate(nominal)]
        durations = [templates[k][1] for k in keys]
        footage = sum(durations) + sum(spec.gaps.get(i) or CONTINUOUS_SPACING_S
                                       for i in range(1, spec.segments))
        start = (spec.start.astimezone(UTC) if spec.start
                 else now - timedelta(seconds=footage + 3600))
        starts = timeline(start, durations, spec.gaps)

        locals_ = [(s + offset).astimezone(tz) for s in starts]
        names = [f"{spec.serial}_{spec.officer_no}_{loc.strftime(profile.time_format)}_{i + 1:04d}.MP4"
                 for i, loc in enumerate(locals_)]
        for n in names:
            if not profile.regex.match(n):
                raise ValueError(f"clip name {n!r} does not match profile {profile.name!r}")
        boxes = padding_plan([len(templates[k][0]) for k in keys], names, spec.target_size)

        clips = []
        for i, name in enumerate(names):
            rel = f"{clip_dir}/{locals_[i]:%Y%m%d}/{name}"
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            data = bytearray(templates[keys[i]][0])
            if patch_creation_time(data, starts[i] + offset) == 0:
                raise SimulatorError("encoded clip has no mvhd box to date")
            _write_clip(path, data, name, boxes[i])
            end = (starts[i] + offset + timedelta(seconds=durations[i])).timestamp()
            os.utime(path, (end, end))
            wav = spec.speech.get(i)
            clips.append(SimClip(name=name, rel_path=rel, true_start_utc=starts[i],
                                 duration_s=durations[i], recorded_start_local=locals_[i],
                                 size=path.stat().st_size, speech=Path(wav) if wav else None))

    info_path = dest / profile.info_file
    infofile.write_info(info_path, {
        infofile.KEY_SERIAL: spec.serial,
        infofile.KEY_OFFICER_NO: spec.officer_no,
        infofile.KEY_OFFICER_NAME: spec.officer_name,
        infofile.KEY_UNIT_NO: spec.unit_no,
        infofile.KEY_UNIT_NAME: spec.unit_name,
        infofile.KEY_VENDOR: spec.vendor,
        infofile.KEY_MODEL: spec.model,
        infofile.KEY_FIRMWARE: spec.firmware,
        infofile.KEY_BATTERY: str(spec.battery),
        infofile.KEY_DEVICE_TIME: (now + offset).astimezone(tz).strftime(
            infofile.DEVICE_TIME_FORMAT),
    }, profile.info_encoding)
    os.utime(info_path, (now.timestamp(), now.timestamp()))
    log.info("simulated recorder %s at %s: %d clips, %d bytes", spec.serial, dest,
             len(clips), sum(c.size for c in clips))
    return SimulatedRecorder(root=dest, spec=spec, clips=tuple(clips), now=now)


def _write_clip(path: Path, data: bytearray, name: str, box_size: int) -> None:
    label = name.encode()
    header = free_box_header(box_size)  # 16 bytes past 4 GiB: the padding shrinks by 8
    remaining = box_size - len(header) - len(label)
    rng = random.Random(name)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.write(header)
        fh.write(label)
        while remaining > 0:
            n = min(remaining, _PAD_CHUNK)
            fh.write(rng.randbytes(n))
            remaining -= n


# --------------------------------------------------------------------------- plugging


def port_name(port: int) -> str:
    if not 1 <= port <= 99:
        raise ValueError(f"port must be 1..99, got {port}")
    return f"port-{port:02d}"


def plug(tree: Path, ports_dir: Path, port: int) -> Path:
    """Move a finished recorder tree onto ``<ports_dir>/port-NN`` in one rename."""
    ports_dir = Path(ports_dir)
    ports_dir.mkdir(parents=True, exist_ok=True)
    target = ports_dir / port_name(port)
    if os.stat(tree).st_dev != os.stat(ports_dir).st_dev:
        raise ValueError(f"{tree} and {ports_dir} are on different filesystems")
    try:
        os.rename(tree, target)  # replaces an empty port directory atomically
    except OSError as exc:
        raise SimulatorError(f"cannot plug {tree} into {target}: {exc}") from exc
    log.info("plugged %s into %s", tree, target)
    return target


def unplug(ports_dir: Path, port: int, keep_to: Path | None = None) -> Path | None:
    """Take the recorder off ``port-NN`` (one rename), then delete it or move it to ``keep_to``.

    An empty port directory is left behind, like a mount point. Returns ``keep_to`` when
    the tree was kept, else None (also when the port was empty).
    """
    ports_dir = Path(ports_dir)
    target = ports_dir / port_name(port)
    if not target.is_dir() or not any(target.iterdir()):
        return None
    away = Path(tempfile.mkdtemp(prefix=f".unplugged-{port:02d}-", dir=ports_dir))
    os.rename(target, away)  # atomic: 'away' is an empty directory
    target.mkdir(exist_ok=True)
    log.info("unplugged %s", target)
    if keep_to is None:
        shutil.rmtree(away)
        return None
    shutil.move(str(away), str(keep_to))
    return Path(keep_to)


# --------------------------------------------------------------------------- CLI


def _index_value(text: str, conv: Callable[[str], T]) -> tuple[int, T]:
    index, sep, value = text.partition(":")
    try:
        if not sep:
            raise ValueError(text)
        return int(index), conv(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected INDEX:VALUE, got {text!r}") from exc


def _gap_arg(text: str) -> tuple[int, float]:
    return _index_value(text, float)


def _speech_arg(text: str) -> tuple[int, Path]:
    return _index_value(text, Path)


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_simulate_parser(subparsers: Any, parents: Sequence[Any] = ()) -> None:
    """Register ``simulate`` on an argparse subparsers object (``parents``: common options)."""
    d = RecorderSpec()
    p = subparsers.add_parser("simulate", help="write a simulated recorder (real clips)",
                              parents=list(parents),
                              description="Write a simulated recorder tree, or plug one in.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the tree to this new/empty directory")
    where.add_argument("--port", type=int, help="build the tree and plug it into port N")
    p.add_argument("--serial", default=d.serial)
    p.add_argument("--officer", default=d.officer_no, help="officer number (警号)")
    p.add_argument("--officer-name", default=d.officer_name)
    p.add_argument("--unit", default=d.unit_no, help="unit number")
    p.add_argument("--unit-name", default=d.unit_name)
    p.add_argument("--model", default=d.model)
    p.add_argument("--segments", type=int, default=d.segments)
    p.add_argument("--segment-seconds", type=float, default=d.segment_seconds)
    p.add_argument("--gap", type=_gap_arg, action="append", default=[], metavar="I:SECONDS",
                   help="gap before segment I (repeatable)")
    p.add_argument("--speech", type=_speech_arg, action="append", default=[], metavar="I:WAV",
                   help="speech WAV at the start of segment I (repeatable)")
    p.add_argument("--size", type=_size_arg, default=None, help='total footage size, e.g. "2GiB"')
    p.add_argument("--clock-offset", type=float, default=0.0, metavar="SECONDS",
                   help="recorder clock minus true time")
    p.add_argument("--battery", type=int, default=d.battery)
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(cfg: Config, args: argparse.Namespace) -> int:
    """``dockd simulate``: build a recorder tree at --out, or plug one into --port."""
    spec = RecorderSpec(
        serial=args.serial, officer_no=args.officer, officer_name=args.officer_name,
        unit_no=args.unit, unit_name=args.unit_name, model=args.model, battery=args.battery,
        clock_offset_s=args.clock_offset, segments=args.segments,
        segment_seconds=args.segment_seconds, gaps=dict(args.gap), speech=dict(args.speech),
        target_size=args.size)
    kwargs: dict[str, Any] = {"profile": cfg.profiles[0], "tz": cfg.tz, "tools": cfg.tools}
    try:
        if args.port is None:
            sim = simulate_recorder(args.out, spec, **kwargs)
            where = sim.root
        else:
            if not 1 <= args.port <= cfg.dock.ports:
                print(f"error: --port must be 1..{cfg.dock.ports}", file=sys.stderr)
                return 2
            ports_dir = cfg.paths.ports_dir
            ports_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=ports_dir))
            try:
                sim = simulate_recorder(tmp, spec, **kwargs)
                where = plug(tmp, ports_dir, args.port)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp)
    except (ValueError, OSError, DockdError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps({"root": str(where), "serial": spec.serial, "clips": [
            {"rel_path": c.rel_path, "true_start_utc": c.true_start_utc.isoformat(),
             "duration_s": c.duration_s, "recorded_start_local": c.recorded_start_local.isoformat(),
             "size": c.size} for c in sim.clips]}, ensure_ascii=False, indent=2))
        return 0
    print(f"recorder {spec.serial} (officer {spec.officer_no} {spec.officer_name}) -> {where}")
    for c in sim.clips:
        print(f"  {c.rel_path}  {c.duration_s:6.2f} s  {c.size:>10} B  "
              f"recorded {c.recorded_start_local:%Y-%m-%d %H:%M:%S}")
    return 0
