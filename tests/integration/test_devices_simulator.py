"""The recorder simulator: real clips checked with ffprobe, ground truth, plug/unplug, CLI."""

from __future__ import annotations

import argparse
import array
import hashlib
import json
import math
import os
import subprocess
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dockd.config import Config, ProfileConfig, ToolsConfig
from dockd.devices import simulator
from dockd.devices.infofile import read_info
from dockd.devices.simulator import (
    CONTINUOUS_SPACING_S,
    RecorderSpec,
    SimulatorError,
    add_simulate_parser,
    plug,
    simulate_recorder,
    unplug,
)

SPEECH = Path(__file__).parents[1] / "fixtures" / "speech"
WAV = SPEECH / "zh_battery.wav"
NOW = datetime(2026, 11, 23, 2, 0, 0, tzinfo=UTC)
OFFSET = 3600.5
TARGET = 1_000_000
CFG = Config()
KW = {"profile": CFG.profiles[0], "tz": CFG.tz, "tools": CFG.tools}


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams",
                          "-of", "json", str(path)], capture_output=True, check=True, text=True)
    return json.loads(out.stdout)


def pcm(path: Path, seconds: float) -> list[int]:
    """Mono 16 kHz samples of the first ``seconds`` of a file's audio."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-t", str(seconds),
                          "-vn", "-ac", "1", "-ar", "16000", "-f", "s16le", "-"],
                         capture_output=True, check=True)
    return list(array.array("h", out.stdout))


def correlation(a: list[int], b: list[int]) -> float:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = math.sqrt(sum((x - ma) ** 2 for x in a))
    vb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (va * vb) if va and vb else 0.0


def zero_crossings_per_s(samples: list[int]) -> float:
    flips = sum(1 for x, y in zip(samples, samples[1:], strict=False) if (x < 0) != (y < 0))
    return flips / (len(samples) / 16000)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> simulator.SimulatedRecorder:
    root = tmp_path_factory.mktemp("sim") / "rec"
    spec = RecorderSpec(clock_offset_s=OFFSET, segments=4, segment_seconds=1.5,
                        gaps={2: 30.0, 3: 0.5}, speech={2: WAV}, target_size=TARGET)
    return simulate_recorder(root, spec, now=NOW, **KW)


def test_ground_truth_timeline(sim) -> None:
    assert len(sim.clips) == 4
    assert sim.gaps == pytest.approx([CONTINUOUS_SPACING_S, 30.0, 0.5], abs=1e-6)
    # default start: footage ends one hour before 'now'
    assert abs((NOW - sim.clips[-1].true_end_utc).total_seconds() - 3600) < 1e-3
    for clip in sim.clips:
        assert clip.recorded_start_local == (
            clip.true_start_utc + timedelta(seconds=OFFSET)).astimezone(CFG.tz)
        assert clip.recorded_start_local.tzinfo is not None


def test_names_folders_and_mtimes_are_in_the_recorder_clock(sim) -> None:
    rx = ProfileConfig().regex
    for seq, clip in enumerate(sim.clips, start=1):
        m = rx.match(clip.name)
        assert m, clip.name
        assert m["serial"] == "A1234567" and m["officer"] == "012345" and int(m["seq"]) == seq
        assert m["start"] == clip.recorded_start_local.strftime("%Y%m%d%H%M%S")
        assert clip.rel_path == f"DCIM/{clip.recorded_start_local:%Y%m%d}/{clip.name}"
        path = sim.root / clip.rel_path
        assert path.stat().st_size == clip.size
        recorder_end = clip.true_end_utc + timedelta(seconds=OFFSET)
        assert path.stat().st_mtime == pytest.approx(recorder_end.timestamp(), abs=1e-3)


def test_clips_are_real_h264_aac_with_creation_time(sim) -> None:
    for clip in sim.clips:
        info = ffprobe(sim.root / clip.rel_path)
        codecs = sorted(s["codec_name"] for s in info["streams"])
        assert codecs == ["aac", "h264"]
        video = next(s for s in info["streams"] if s["codec_type"] == "video")
        assert (video["width"], video["height"]) == (160, 120)
        assert float(info["format"]["duration"]) == pytest.approx(clip.duration_s, abs=0.05)
        created = datetime.fromisoformat(info["format"]["tags"]["creation_time"])
        recorder_start = clip.true_start_utc + timedelta(seconds=OFFSET)
        assert created == recorder_start.replace(microsecond=0)
        for stream in info["streams"]:
            assert stream["tags"]["creation_time"] == info["format"]["tags"]["creation_time"]


def test_plain_segments_have_the_configured_length(sim) -> None:
    assert [c.duration_s for c in sim.clips if c.speech is None] == pytest.approx([1.5] * 3,
                                                                                 abs=0.05)


def test_speech_segment_starts_with_the_wav(sim) -> None:
    with wave.open(str(WAV), "rb") as w:
        wav_s = w.getnframes() / w.getframerate()
        ref = list(array.array("h", w.readframes(16000 * 2)))
    clip = sim.clips[2]
    assert clip.speech == WAV
    assert clip.duration_s >= wav_s
    speech = pcm(sim.root / clip.rel_path, 2.0)
    tone = pcm(sim.root / sim.clips[1].rel_path, 1.0)
    assert correlation(speech, ref) > 0.8
    assert abs(correlation(tone, ref)) < 0.2
    assert zero_crossings_per_s(tone) == pytest.approx(2 * simulator.TONE_HZ, rel=0.05)


def test_target_size_padding_keeps_clips_valid_and_distinct(sim) -> None:
    assert sim.total_size == TARGET
    digests = set()
    for clip in sim.clips:
        data = (sim.root / clip.rel_path).read_bytes()
        digests.add(hashlib.sha256(data).hexdigest())
        boxes = list(simulator._walk(bytearray(data), 0, len(data), ()))
        assert boxes[-1][0] == "free" and boxes[-1][2] == len(data)
    assert len(digests) == len(sim.clips)


def test_info_file(sim) -> None:
    path = sim.root / "ZFY_INFO.INI"
    assert "张三".encode("gbk") in path.read_bytes()
    fields, findings = read_info(path, "gbk")
    assert findings == []
    assert fields["cSerial"] == "A1234567" and fields["unitName"] == "北京市公安局朝阳分局"
    device_time = (NOW + timedelta(seconds=OFFSET)).astimezone(CFG.tz)
    assert fields["DeviceTime"] == device_time.strftime("%Y-%m-%d %H:%M:%S")
    assert path.stat().st_mtime == NOW.timestamp()


def test_identical_templates_still_give_distinct_files(tmp_path: Path) -> None:
    spec = RecorderSpec(segments=3, segment_seconds=0.3, start=NOW - timedelta(hours=2))
    rec = simulate_recorder(tmp_path / "r", spec, now=NOW, **KW)
    hashes = {hashlib.sha256((rec.root / c.rel_path).read_bytes()).digest() for c in rec.clips}
    assert len(hashes) == 3
    assert rec.clips[0].true_start_utc == NOW - timedelta(hours=2)
    assert [c.duration_s for c in rec.clips] == pytest.approx([0.3] * 3, abs=0.07)


def test_large_box_header_and_padding_plan() -> None:
    assert simulator.free_box_header(100) == b"\x00\x00\x00\x64free"
    assert len(simulator.free_box_header(5 << 30)) == 16
    plan = simulator.padding_plan([1000, 2000], ["a.MP4", "bb.MP4"], 10_000)
    assert sum(plan) + 3000 == 10_000
    assert simulator.padding_plan([1000], ["a.MP4"], 10) == [13]  # too small: name box only


def test_bad_specs_are_rejected(tmp_path: Path) -> None:
    for spec in (RecorderSpec(segments=0), RecorderSpec(gaps={0: 5.0}),
                 RecorderSpec(segments=2, gaps={2: 5.0}), RecorderSpec(speech={3: WAV}),
                 RecorderSpec(battery=101), RecorderSpec(start=datetime(2026, 1, 1))):
        with pytest.raises(ValueError):
            simulate_recorder(tmp_path / "x", spec, **KW)
    with pytest.raises(ValueError):  # name would not match the profile's pattern
        simulate_recorder(tmp_path / "y", RecorderSpec(serial="A-1", segments=1), **KW)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    with pytest.raises(FileExistsError):
        simulate_recorder(busy, RecorderSpec(segments=1), **KW)


def test_missing_ffmpeg_is_a_simulator_error(tmp_path: Path) -> None:
    tools = ToolsConfig(ffmpeg=str(tmp_path / "no-ffmpeg"))
    with pytest.raises(SimulatorError):
        simulate_recorder(tmp_path / "r", RecorderSpec(segments=1), profile=ProfileConfig(),
                          tz=CFG.tz, tools=tools)


def make_tree(path: Path, marker: str) -> Path:
    (path / "DCIM").mkdir(parents=True)
    (path / "ZFY_INFO.INI").write_text(marker)
    return path


def test_plug_and_unplug(tmp_path: Path) -> None:
    ports = tmp_path / "ports"
    tree = make_tree(tmp_path / "tree", "one")
    ino = os.stat(tree).st_ino
    target = plug(tree, ports, 1)
    assert target == ports / "port-01" and not tree.exists()
    assert os.stat(target).st_ino == ino  # a rename, not a copy
    with pytest.raises(SimulatorError):  # port busy
        plug(make_tree(tmp_path / "tree2", "two"), ports, 1)
    kept = unplug(ports, 1, keep_to=tmp_path / "kept")
    assert kept == tmp_path / "kept" and (kept / "ZFY_INFO.INI").read_text() == "one"
    assert (ports / "port-01").is_dir() and not any((ports / "port-01").iterdir())
    plug(tmp_path / "tree2", ports, 1)  # onto the empty port directory
    assert unplug(ports, 1) is None
    assert not any((ports / "port-01").iterdir())
    assert [p.name for p in ports.iterdir()] == ["port-01"]  # nothing left behind
    assert unplug(ports, 2) is None
    with pytest.raises(ValueError):
        plug(tmp_path / "kept", ports, 100)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    add_simulate_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_plugs_into_a_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = Config().with_workdir(tmp_path)
    args = parse(["simulate", "--port", "2", "--serial", "B7654321", "--officer", "99",
                  "--segments", "3", "--segment-seconds", "0.5", "--gap", "1:12.5",
                  "--speech", f"2:{SPEECH / 'zh_none.wav'}", "--clock-offset", "-60",
                  "--size", "300KiB", "--battery", "12"])
    assert args.func(cfg, args) == 0
    out = capsys.readouterr().out
    port = cfg.paths.ports_dir / "port-02"
    assert str(port) in out
    names = sorted(p.name for p in port.rglob("*.MP4"))
    assert len(names) == 3 and all(n.startswith("B7654321_99_") for n in names)
    assert all(n in out for n in names)
    assert sum(p.stat().st_size for p in port.rglob("*.MP4")) == 300 * 1024
    fields, _ = read_info(port / "ZFY_INFO.INI", "gbk")
    assert fields["Battery"] == "12"
    assert [p.name for p in cfg.paths.ports_dir.iterdir()] == ["port-02"]  # no .incoming left
    assert args.func(cfg, args) == 1  # port busy: an error, not a crash
    assert not any(p.name.startswith(".") for p in cfg.paths.ports_dir.iterdir())


def test_cli_out_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["--json", "simulate", "--out", str(tmp_path / "rec"), "--segments", "1",
                  "--segment-seconds", "0.5"])
    assert args.func(CFG, args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["root"] == str(tmp_path / "rec")
    assert (tmp_path / "rec" / report["clips"][0]["rel_path"]).is_file()


@pytest.mark.parametrize("argv", [["simulate"], ["simulate", "--port", "1", "--out", "x"],
                                  ["simulate", "--out", "x", "--gap", "5"],
                                  ["simulate", "--out", "x", "--size", "lots"]])
def test_cli_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv)
