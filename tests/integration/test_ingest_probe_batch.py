"""Prober.probe_batch: many clips per exiftool command, ffprobe only where exiftool's answer
does not settle a clip, and the same answer per clip as Prober.probe gives for it alone."""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockd.config import ToolsConfig
from dockd.ingest import probe as probe_mod
from dockd.ingest.probe import Prober, ffprobe_reason
from dockd.model import ProbeResult
from tests.conftest import garbage

pytestmark = pytest.mark.skipif(
    not (shutil.which("ffmpeg") and shutil.which("ffprobe") and shutil.which("exiftool")),
    reason="needs ffmpeg, ffprobe and exiftool")

START = datetime(2024, 3, 1, 0, 30, tzinfo=UTC)
GOOD = "A1234567_012345_20240301083000_0001.MP4"


def _ffmpeg(out: Path, *extra: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=1",
         "-f", "lavfi", "-i", "sine=d=1", "-c:v", "libx264", "-preset", "ultrafast",
         "-c:a", "aac", "-shortest", "-metadata", "creation_time=2024-03-01T00:30:00Z",
         *extra, os.fspath(out)], check=True)
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good, damaged and oddly named clips, as a recorder (or an attacker) may hand them."""
    d = tmp_path_factory.mktemp("batch")
    good = _ffmpeg(d / GOOD, "-movflags", "+faststart")
    moov_last = _ffmpeg(d / "moov_last.MP4")
    data, tail_data = good.read_bytes(), moov_last.read_bytes()
    undated = d / "undated.MP4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=160x120:r=10:d=1", "-c:v", "libx264", "-preset", "ultrafast",
                    os.fspath(undated)], check=True)
    out = {"good": good, "moov_last": moov_last, "undated": undated}

    def put(key: str, name: str | bytes, content: bytes) -> None:
        path = Path(os.fsdecode(os.path.join(os.fsencode(d), os.fsencode(name))))
        path.write_bytes(content)
        out[key] = path

    put("random", "random.MP4", garbage(20_000))
    put("no_moov", "no_moov.MP4", tail_data[: len(tail_data) // 2])  # moov cut off
    put("cut_mdat", "cut_mdat.MP4", data[: len(data) - 500])  # moov fine, media cut short
    put("empty", "empty.MP4", b"")
    put("non_utf8", b"bad\xff\xfe name.MP4", data)
    put("non_utf8_random", b"worse\xff.MP4", garbage(5_000))
    put("spaces", " lead and trail .MP4", data)
    put("dash", "-rf.MP4", data)
    put("hash", "#comment.MP4", data)
    put("chinese", "执法记录_0002.MP4", data)
    put("percent", "%s%n{ready}.MP4", data)
    out["missing"] = d / "gone.MP4"
    return out


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory, pool: dict[str, Path]) -> dict[str, Path]:
    """Every kind of file a profile may take as a clip (MP4 H.264/HEVC, audio-only, MOV, AVI,
    TS, WAV, MP3, JPG, tagged by a camera in several groups), cut short, and misnamed."""
    d = tmp_path_factory.mktemp("kinds")
    v = ["-f", "lavfi", "-i", "testsrc2=s=64x48:r=5:d=1"]
    a = ["-f", "lavfi", "-i", "sine=d=1"]
    date = ["-metadata", "creation_time=2024-03-01T00:30:00Z"]
    made = {
        "hevc.MP4": [*v, *a, "-c:v", "libx265", "-preset", "ultrafast", "-tag:v", "hvc1",
                     "-x265-params", "log-level=none", "-c:a", "aac", "-shortest", *date],
        "audio_only.MP4": [*a, "-c:a", "aac", *date],
        "clip.MOV": [*v, *a, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "pcm_s16le",
                     "-shortest", *date],
        "clip.AVI": [*v, *a, "-c:v", "mjpeg", "-c:a", "pcm_s16le", "-shortest"],
        "clip.TS": [*v, "-c:v", "mpeg2video", "-f", "mpegts"],
        "clip.WAV": [*a],
        "clip.MP3": [*a, "-c:a", "libmp3lame"],
        "photo.JPG": [*v, "-frames:v", "1"],
    }
    out: dict[str, Path] = {}
    for name, args in made.items():
        proc = subprocess.run(["ffmpeg", "-v", "error", "-y", *args, os.fspath(d / name)],
                              check=False, capture_output=True)
        if proc.returncode == 0:  # an ffmpeg without libx265/lame: that kind is left out
            out[name] = d / name
    tagged = {"tagged.JPG": (out.get("photo.JPG"),
                             ["-Make=ACME", "-XMP:Make=OTHER", "-Model=M1", "-SerialNumber=SN9",
                              "-DateTimeOriginal=2024:03:01 08:30:00", "-Software=fw1.2"]),
              "keys_tagged.MP4": (pool["good"],
                                  ["-Keys:Make=ACME", "-UserData:Make=UDM",
                                   "-Keys:CreationDate=2024:03:01 08:30:00+08:00"])}
    for name, (src, tags) in tagged.items():
        if src is not None:
            shutil.copyfile(src, d / name)
            subprocess.run(["exiftool", "-q", "-overwrite_original", *tags,
                            os.fspath(d / name)], check=True)
            out[name] = d / name
    for name in ("clip.AVI", "photo.JPG", "clip.WAV", "hevc.MP4"):
        if name in out:
            data = out[name].read_bytes()
            (d / f"cut_{name}").write_bytes(data[: len(data) // 3])
            out[f"cut_{name}"] = d / f"cut_{name}"
    if "clip.AVI" in out:
        shutil.copyfile(out["clip.AVI"], d / "avi_inside.MP4")
        out["avi_inside.MP4"] = d / "avi_inside.MP4"
    shutil.copyfile(pool["good"], d / "mp4_inside.AVI")
    out["mp4_inside.AVI"] = d / "mp4_inside.AVI"
    out["xmp_first.MP4"] = _xmp_box_before_moov(pool["moov_last"], d / "xmp_first.MP4")
    return out


def _xmp_box_before_moov(src: Path, dest: Path) -> Path:
    """Make in UserData (in moov) and in XMP (a top-level uuid box), the XMP box moved
    before moov: the QuickTime group begins first in the file, the XMP Make comes first."""
    shutil.copyfile(src, dest)
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-UserData:Make=UDMAKE",
                    "-XMP:Make=XMPMAKE", "-XMP:Model=XMPMODEL", os.fspath(dest)], check=True)
    data, boxes, i = dest.read_bytes(), [], 0
    while i < len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        boxes.append((kind, data[i:i + size]))
        i += size
    order = [b for k, b in boxes if k == b"ftyp"] + [b for k, b in boxes if k == b"uuid"] + \
        [b for k, b in boxes if k not in (b"ftyp", b"uuid")]
    dest.write_bytes(b"".join(order))
    return dest


def _without_dump(r: ProbeResult) -> ProbeResult:
    return dataclasses.replace(r, raw={k: v for k, v in r.raw.items() if k != "exiftool"})


def test_the_asked_tags_give_the_same_answer_as_every_tag(
        pool: dict[str, Path], kinds: dict[str, Path]) -> None:
    """exiftool is asked only for probe.TAGS: on good, damaged, hostile-named and non-MP4
    clips that gives the same ProbeResult (ok, times, codecs, errors, which tool answered,
    why ffprobe ran) as asking for every tag; only the debugging dump is shorter."""
    paths = [*pool.values(), *kinds.values()]
    with Prober(ToolsConfig()) as p:
        asked = p.probe_batch(paths)
    with Prober(ToolsConfig(), tags=None) as p:
        every = p.probe_batch(paths)
    for name, a, e in zip([*pool, *kinds], asked, every, strict=True):
        assert _without_dump(a) == _without_dump(e), name
        assert a.raw["exiftool"].items() <= e.raw["exiftool"].items(), name
        names = [k.rpartition(":")[2] for k, v in a.raw["exiftool"].items() if v]
        if len(names) == len(set(names)):
            assert len(a.raw["exiftool"]) <= len(probe_mod.TAGS), name
        else:  # one tag name in two groups: asked again for every tag
            assert a.raw["exiftool"] == e.raw["exiftool"], name
    by = dict(zip([*pool, *kinds], asked, strict=True))
    # the variety is real: every path through ffprobe_reason and the tag fallbacks is taken
    reasons = {r.raw["ffprobe_reason"] for r in by.values()}
    assert {"", "exiftool error", "exiftool warning", "not an MP4/MOV file",
            "no start time", "no exiftool answer"} <= reasons
    if "tagged.JPG" in by:
        t = by["tagged.JPG"]
        assert (t.make, t.model, t.device_serial, t.encoder) == ("ACME", "M1", "SN9", "fw1.2")
    if "hevc.MP4" in by:
        assert by["hevc.MP4"].tool == "exiftool" and by["hevc.MP4"].video_codec == "hevc"
    assert by["keys_tagged.MP4"].make == "ACME"
    # every tag picks the Make of the group that begins first in the file (QuickTime), the
    # asked tags alone would have picked the one that comes first (XMP): asked again
    assert (by["xmp_first.MP4"].make, by["xmp_first.MP4"].model) == ("UDMAKE", "XMPMODEL")


def test_batch_equals_one_by_one_on_a_hostile_mix(pool: dict[str, Path]) -> None:
    paths = list(pool.values())
    with Prober(ToolsConfig()) as p:
        batch = p.probe_batch(paths)
    with Prober(ToolsConfig()) as p:
        single = [p.probe(x) for x in paths]
    assert len(batch) == len(paths)
    for key, b, s in zip(pool, batch, single, strict=True):
        assert b == s, key
    by = dict(zip(pool, batch, strict=True))
    for key in ("good", "moov_last", "non_utf8", "spaces", "dash", "hash", "chinese", "percent",
                "cut_mdat"):
        assert by[key].ok and by[key].start == START, key
        assert by[key].duration_s == pytest.approx(1.0, abs=0.15), key
    for key in ("random", "no_moov", "empty", "missing", "non_utf8_random"):
        assert not by[key].ok and by[key].error, key
        assert by[key].start is None and by[key].video_codec == "", key
    assert "File format error" in by["random"].error
    assert "empty" in by["empty"].error
    assert "not found" in by["missing"].error.lower()
    assert by["undated"].ok and by["undated"].start is None


def test_relative_names_that_look_like_options(pool: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pool["dash"].parent)
    with Prober(ToolsConfig()) as p:
        rel = p.probe_batch([Path("-rf.MP4"), Path("#comment.MP4"), Path("random.MP4")])
        absolute = p.probe_batch([pool["dash"], pool["hash"], pool["random"]])
    assert rel == absolute
    assert rel[0].ok and rel[1].ok and not rel[2].ok


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.sampled_from(["good", "moov_last", "random", "no_moov", "cut_mdat",
                                       "empty", "missing", "non_utf8", "dash", "chinese"]),
                      min_size=1, max_size=9))
def test_any_order_and_batch_size_gives_each_clip_its_own_answer(
        pool: dict[str, Path], alone: dict[str, object], picks: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe_mod, "BATCH_SIZE", 4)  # several batches, odd boundaries
    with Prober(ToolsConfig()) as p:
        got = p.probe_batch([pool[k] for k in picks])
    assert got == [alone[k] for k in picks]


@pytest.fixture(scope="module")
def alone(pool: dict[str, Path]) -> dict[str, object]:
    with Prober(ToolsConfig()) as p:
        return {k: p.probe(v) for k, v in pool.items()}


def _logging_ffprobe(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "ffprobe.log"
    wrapper = tmp_path / "ffprobe"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n'
                       f'exec "{shutil.which("ffprobe")}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


def test_ffprobe_runs_only_where_exiftool_does_not_settle_the_clip(
        pool: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrapper, log = _logging_ffprobe(tmp_path)
    clean = [tmp_path / f"A1234567_012345_20240301083000_{i:04d}.MP4" for i in range(12)]
    for c in clean:
        shutil.copyfile(pool["good"], c)
    damaged = [pool["random"], pool["no_moov"], pool["cut_mdat"], pool["undated"]]
    calls: list[int] = []
    real = probe_mod.exiftool.ExifToolHelper.execute_json

    def counting(self, *params):  # type: ignore[no-untyped-def]
        calls.append(sum(isinstance(x, bytes) for x in params))  # files, not the tags
        return real(self, *params)

    monkeypatch.setattr(probe_mod.exiftool.ExifToolHelper, "execute_json", counting)
    with Prober(ToolsConfig(ffprobe=str(wrapper))) as p:
        results = p.probe_batch([*clean[:6], *damaged, *clean[6:]])
    assert calls == [16]  # one exiftool command for all 16 clips
    probed = log.read_text().splitlines() if log.exists() else []
    assert len(probed) == len(damaged)  # ffprobe only for the four exiftool cannot settle
    for d in damaged:
        assert sum(line.endswith(d.name) for line in probed) == 1
    good = [*results[:6], *results[10:]]
    assert all(r.ok and r.tool == "exiftool" and r.start == START for r in good)
    assert [r.video_codec for r in good] == ["h264"] * 12  # named as ffprobe names them
    assert all((r.width, r.height, r.audio_codec) == (160, 120, "aac") for r in good)
    rnd, no_moov, cut, undated = results[6:10]
    assert not rnd.ok and "File format error" in rnd.error
    assert not no_moov.ok and "moov" in no_moov.error
    assert cut.ok and cut.tool == "exiftool+ffprobe" and cut.raw["ffprobe_reason"]
    assert undated.ok and undated.raw["ffprobe_reason"] == "no start time"


def test_exiftool_answer_alone_agrees_with_ffprobe_on_what_the_checks_need(
        pool: dict[str, Path]) -> None:
    with Prober(ToolsConfig()) as p:
        e = p.probe(pool["good"])
    with Prober(ToolsConfig(exiftool="/nonexistent/exiftool")) as p:
        f = p.probe(pool["good"])
    assert (e.tool, f.tool) == ("exiftool", "ffprobe")
    assert (e.ok, e.start, e.width, e.height) == (f.ok, f.start, f.width, f.height)
    assert (e.video_codec, e.audio_codec, e.encoder) == (f.video_codec, f.audio_codec, f.encoder)
    assert e.duration_s == pytest.approx(f.duration_s, abs=0.001)


@pytest.mark.parametrize("tags,reason", [
    (None, "no exiftool answer"),
    ({"ExifTool:Error": "File format error"}, "exiftool error"),
    ({"ExifTool:Warning": "Truncated 'mdat' data", "File:FileType": "MP4"}, "exiftool warning"),
    ({"File:FileType": "AVI"}, "not an MP4/MOV file"),
    ({"File:FileType": "MP4", "QuickTime:Duration": 0}, "no duration"),
    ({"File:FileType": "MP4", "QuickTime:Duration": 2.0,
      "QuickTime:CreateDate": "0000:00:00 00:00:00"}, "no start time"),
    ({"File:FileType": "MP4", "QuickTime:Duration": 2.0,
      "QuickTime:CreateDate": "2024:03:01 00:30:00", "QuickTime:AudioFormat": "mp4a"},
     "no video track"),
    ({"File:FileType": "MP4", "QuickTime:Duration": 2.0,
      "QuickTime:CreateDate": "2024:03:01 00:30:00", "QuickTime:CompressorID": "avc1",
      "QuickTime:ImageWidth": 160, "File:FileSize": 1000, "QuickTime:MediaDataOffset": 48,
      "QuickTime:MediaDataSize": 5000}, "media data runs past the end of the file"),
    ({"File:FileType": "MP4", "QuickTime:Duration": 2.0,
      "QuickTime:CreateDate": "2024:03:01 00:30:00", "QuickTime:CompressorID": "avc1",
      "QuickTime:ImageWidth": 160, "File:FileSize": 1000, "QuickTime:MediaDataOffset": 48,
      "QuickTime:MediaDataSize": 900}, ""),
])
def test_ffprobe_reason(tags: dict[str, object] | None, reason: str) -> None:
    assert ffprobe_reason(tags) == reason


PROXY_EXIFTOOL = """\
import re, subprocess, sys, time
REAL, POISON, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
common = sys.argv[sys.argv.index("-common_args") + 1:] if "-common_args" in sys.argv else []
args = []
for line in sys.stdin:
    line = line.rstrip("\\n")
    m = re.fullmatch(r"-execute(\\d+)", line)
    if not m:
        args.append(line)
        continue
    n = m.group(1)
    echo = [a for a in args if a.startswith("=")]
    args = [a for a in args if a != "-echo4" and not a.startswith("=")]
    if "-ver" in args:
        out, status = "12.57\\n", 0
    elif any(POISON in a for a in args):
        if MODE == "hang":
            time.sleep(120)
        sys.exit(3)
    else:
        proc = subprocess.run([REAL, *common, *args], capture_output=True, text=True)
        out, status = proc.stdout, proc.returncode
        sys.stderr.write(proc.stderr)
    sys.stdout.write(out + "{ready%s}\\n" % n)
    sys.stdout.flush()
    sys.stderr.write("=%d=post%s\\n" % (status, n))
    sys.stderr.flush()
    args = []
"""


@pytest.mark.parametrize("mode", ["hang", "die"])
def test_one_poisoned_clip_does_not_cost_the_batch(pool: dict[str, Path], tmp_path: Path,
                                                   mode: str) -> None:
    """exiftool hangs (or dies) on one clip of a batch: the batch is redone clip by clip,
    every other clip keeps exiftool's answer, the poisoned one gets ffprobe's and says why."""
    clips = []
    for i in range(5):
        c = tmp_path / (f"POISON_{i}.MP4" if i == 2 else f"clip_{i}.MP4")
        shutil.copyfile(pool["good"], c)
        clips.append(c)
    fake = tmp_path / "exiftool"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'proxy.py'} "
                    f"{shutil.which('exiftool')} POISON {mode} \"$@\"\n")
    (tmp_path / "proxy.py").write_text(PROXY_EXIFTOOL)
    fake.chmod(0o755)
    t = time.monotonic()
    with Prober(ToolsConfig(exiftool=str(fake)), timeout=2.0) as p:
        results = p.probe_batch(clips)
    assert time.monotonic() - t < 60  # batch timeout + one per-clip timeout, not one per clip
    for i, r in enumerate(results):
        assert r.ok and r.start == START, i
        if i == 2:
            assert r.tool == "ffprobe"
            assert any("exiftool" in e for e in r.raw["errors"])
        else:
            assert r.tool == "exiftool" and r.raw["errors"] == []


FAKE_EXIFTOOL = """\
import re, sys, time
args = []
for line in sys.stdin:
    line = line.rstrip("\\n")
    m = re.fullmatch(r"-execute(\\d+)", line)
    if not m:
        args.append(line)
        continue
    if "-ver" in args:
        sys.stdout.write("12.57\\n{ready%s}\\n" % m.group(1))
        sys.stdout.flush()
        sys.stderr.write("=0=post%s\\n" % m.group(1))
        sys.stderr.flush()
    elif "MODE" == "hang":
        time.sleep(60)
    else:
        sys.exit(3)
    args = []
"""


@pytest.mark.parametrize("mode", ["hang", "die"])
def test_broken_exiftool_costs_a_few_timeouts_per_batch_not_one_per_clip(
        pool: dict[str, Path], tmp_path: Path, mode: str) -> None:
    fake = tmp_path / "exiftool"
    fake.write_text(f"#!{sys.executable}\n" + FAKE_EXIFTOOL.replace("MODE", mode))
    fake.chmod(0o755)
    clips = []
    for i in range(10):
        c = tmp_path / f"clip_{i}.MP4"
        shutil.copyfile(pool["good"], c)
        clips.append(c)
    t = time.monotonic()
    with Prober(ToolsConfig(exiftool=str(fake)), timeout=1.5) as p:
        results = p.probe_batch(clips)
    # one batch timeout and two per-clip ones (not ten): ~4.5 s on an idle machine
    assert time.monotonic() - t < 45
    assert all(r.ok and r.tool == "ffprobe" and r.start == START for r in results)
    assert all(any("exiftool" in e for e in r.raw["errors"]) for r in results)
    assert sum("not run" in " ".join(r.raw["errors"]) for r in results) == 8
