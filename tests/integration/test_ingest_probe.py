"""Prober against real ffmpeg-made clips, broken clips and broken tool configurations."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dockd.config import ToolsConfig
from dockd.errors import ProbeError
from dockd.ingest.probe import Prober, parse_time
from tests.conftest import garbage

pytestmark = pytest.mark.skipif(
    not (shutil.which("ffmpeg") and shutil.which("ffprobe") and shutil.which("exiftool")),
    reason="needs ffmpeg, ffprobe and exiftool")

START = datetime(2024, 3, 1, 0, 30, tzinfo=UTC)


def _ffmpeg(out: Path, *meta: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=1",
         "-f", "lavfi", "-i", "sine=d=1", "-c:v", "libx264", "-c:a", "aac", "-shortest",
         *meta, str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    good = _ffmpeg(d / "ZFY001_100234_20240301083000_0001.MP4",
                   "-metadata", "creation_time=2024-03-01T00:30:00Z")
    undated = _ffmpeg(d / "undated.MP4", "-metadata", "make=ACME", "-metadata", "model=DSJ-X1",
                      "-movflags", "use_metadata_tags")
    data = good.read_bytes()
    (d / "random.MP4").write_bytes(garbage(20_000))
    (d / "truncated.MP4").write_bytes(data[: len(data) // 2])
    (d / "empty.MP4").write_bytes(b"")
    return {"good": good, "undated": undated, "random": d / "random.MP4",
            "truncated": d / "truncated.MP4", "empty": d / "empty.MP4"}


def test_real_clip(clips: dict[str, Path]) -> None:
    with Prober(ToolsConfig()) as p:
        r = p.probe(clips["good"])
    assert r.ok and r.error == ""
    assert r.tool == "exiftool"  # a clean MP4: exiftool's answer settles it, no ffprobe
    assert r.raw["ffprobe_reason"] == ""
    assert r.start == START and r.start.tzinfo is not None
    assert r.duration_s == pytest.approx(1.0, abs=0.15)
    assert (r.video_codec, r.audio_codec) == ("h264", "aac")
    assert (r.width, r.height) == (160, 120)
    assert "mp4" in r.format_name
    assert r.encoder.startswith("Lavf")
    assert r.raw["handlers"]
    assert r.summary()["start"] == "2024-03-01T00:30:00+00:00"


def test_zero_dates_are_missing_and_make_model_read(clips: dict[str, Path]) -> None:
    with Prober(ToolsConfig()) as p:
        r = p.probe(clips["undated"])
    assert r.ok and r.start is None
    assert (r.make, r.model) == ("ACME", "DSJ-X1")


@pytest.mark.parametrize("kind", ["random", "truncated", "empty"])
def test_bad_clip_data_is_not_ok_and_does_not_raise(clips: dict[str, Path], kind: str) -> None:
    with Prober(ToolsConfig()) as p:
        r = p.probe(clips[kind])
        assert not r.ok
        assert r.error
        assert r.start is None and r.video_codec == ""
        assert p.probe(clips["good"]).ok  # the same exiftool process goes on working


def test_missing_file_is_not_ok(tmp_path: Path) -> None:
    with Prober(ToolsConfig()) as p:
        r = p.probe(tmp_path / "gone.MP4")
    assert not r.ok and r.error


def test_exiftool_misconfigured_falls_back_to_ffprobe(clips: dict[str, Path],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with Prober(ToolsConfig(exiftool="/nonexistent/exiftool")) as p:
        r = p.probe(clips["good"])
        p.probe(clips["good"])
    assert r.ok and r.tool == "ffprobe"
    assert r.start == START and r.video_codec == "h264"
    errors = [rec for rec in caplog.records if "cannot run" in rec.getMessage()]
    assert len(errors) == 1  # said once, not per clip


def test_ffprobe_misconfigured_falls_back_to_exiftool(clips: dict[str, Path]) -> None:
    with Prober(ToolsConfig(ffprobe="/nonexistent/ffprobe")) as p:
        r = p.probe(clips["good"])
        bad = p.probe(clips["random"])
    assert r.ok and r.tool == "exiftool"
    assert r.start == START
    assert r.duration_s == pytest.approx(1.0, abs=0.15)
    assert (r.width, r.height) == (160, 120)
    assert not bad.ok and "File format error" in bad.error


def test_both_misconfigured_raise_probe_error(clips: dict[str, Path]) -> None:
    with Prober(ToolsConfig(exiftool="/no/exiftool", ffprobe="/no/ffprobe")) as p:
        with pytest.raises(ProbeError, match="/no/exiftool.*/no/ffprobe"):
            p.probe(clips["good"])


def test_exiftool_restarted_after_it_dies(clips: dict[str, Path]) -> None:
    with Prober(ToolsConfig()) as p:
        assert p.probe(clips["good"]).tool == "exiftool"
        first = p._et._process
        first.kill()
        first.wait()
        r = p.probe(clips["good"])
        assert r.tool == "exiftool"
        assert p._et._process is not first
    assert p._et is None  # closed


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
def test_misbehaving_exiftool_does_not_block(clips: dict[str, Path], tmp_path: Path,
                                             mode: str) -> None:
    fake = tmp_path / "exiftool"
    fake.write_text(f"#!{sys.executable}\n" + FAKE_EXIFTOOL.replace("MODE", mode))
    fake.chmod(0o755)
    t = time.monotonic()
    with Prober(ToolsConfig(exiftool=str(fake)), timeout=1.5) as p:
        r = p.probe(clips["good"])
    # never blocks: a hung or dead exiftool costs the timeout and a restart, not the clip
    # (the bound leaves room for a loaded 2-core CI machine: 12 s was seen once at 8)
    assert time.monotonic() - t < 30
    assert r.ok and r.tool == "ffprobe" and r.start == START
    assert any("exiftool" in e for e in r.raw["errors"])


@pytest.mark.parametrize("text,expected", [
    ("2024:03:01 00:30:00", START),
    ("2024:03:01 08:30:00+08:00", START),
    ("2024-03-01T00:30:00.000000Z", START),
    ("0000:00:00 00:00:00", None),
    ("1904:01:01 00:00:00", None),
    ("not a date", None),
    ("", None),
    (None, None),
])
def test_parse_time(text: str | None, expected: datetime | None) -> None:
    assert parse_time(text) == expected


def test_exiftool_whose_terminate_times_out_is_discarded_cleanly(monkeypatch):
    """A terminate that times out (a loaded machine) must not leave pyexiftool thinking the
    process still runs: its __del__ then crashed on the discarded process at some later,
    unrelated point of the test run."""
    import gc
    import subprocess
    import sys

    from dockd.config import ToolsConfig
    from dockd.ingest.probe import Prober

    caught = []
    monkeypatch.setattr(sys, "unraisablehook", caught.append)
    prober = Prober(ToolsConfig())
    et = prober._exiftool()

    def slow(**_kw):
        raise subprocess.TimeoutExpired("exiftool", 5)

    et.terminate = slow
    prober.close()
    del et
    gc.collect()
    assert caught == []
