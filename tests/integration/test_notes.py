"""Spoken interruption notes (dockd.integrity.notes), rule R2, on real clips made by ffmpeg.

Each fixture WAV (tests/fixtures/speech, see its README) is muxed at the start of a short
MP4 (testsrc2 160x120 + the speech, then a tone or silence), as the clip that resumes
recording after a gap. The ASR tests use faster-whisper's multilingual ``base`` model:
``DOCKD_TEST_WHISPER_MODEL`` names its directory, else ``.venv/whisper-base``, which the
session fixture assembles with ``scripts/fetch-whisper-base.sh`` when it is missing.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dockd.integrity.continuity import ClipTiming, build_timeline
from dockd.integrity.notes import (
    VERDICT_ERROR,
    VERDICT_NO_NOTE,
    VERDICT_NO_REASON,
    VERDICT_NOTE,
    VERDICT_UNCLASSIFIED,
    NoteAnalyzer,
    NoteParams,
    NoteResult,
    find_note_span,
    gap_finding,
)
from dockd.integrity.reasons import to_simplified

pytest.importorskip("faster_whisper", reason="faster-whisper is not installed")

ROOT = Path(__file__).resolve().parents[2]
SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
PARAMS = NoteParams(ffmpeg=FFMPEG, cpu_threads=2)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not found")

log = logging.getLogger(__name__)


def make_clip(out: Path, speech: str | None = None, *, lead_s: float = 0.0,
              tail_s: float = 4.0, tail: str = "tone", audio: bool = True) -> Path:
    """An MP4: ``lead_s`` of silence, the fixture WAV, then ``tail_s`` of tone or silence."""
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-y", "-f", "lavfi",
           "-i", "testsrc2=size=160x120:rate=10"]
    if not audio:
        cmd += ["-t", str(tail_s), "-an", "-c:v", "libx264", "-preset", "ultrafast",
                "-pix_fmt", "yuv420p", str(out)]
        subprocess.run(cmd, check=True, timeout=120)
        return out
    parts = []
    if lead_s:
        cmd += ["-f", "lavfi", "-i", f"anullsrc=r=16000:cl=mono:d={lead_s}"]
        parts.append(len(parts) + 1)
    if speech:
        cmd += ["-i", str(SPEECH / speech)]
        parts.append(len(parts) + 1)
    src = "sine=frequency=440:sample_rate=16000" if tail == "tone" else "anullsrc=r=16000:cl=mono"
    cmd += ["-f", "lavfi", "-i", f"{src}:d={tail_s}"]
    parts.append(len(parts) + 1)
    graph = [f"[{p}:a]aresample=16000,aformat=channel_layouts=mono[a{i}]"
             for i, p in enumerate(parts)]
    graph.append("".join(f"[a{i}]" for i in range(len(parts)))
                 + f"concat=n={len(parts)}:v=0:a=1[aout]")
    cmd += ["-filter_complex", ";".join(graph), "-map", "0:v", "-map", "[aout]", "-c:a", "aac",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-shortest",
            str(out)]
    subprocess.run(cmd, check=True, timeout=120)
    return out


@pytest.fixture(scope="session")
def analyzer(whisper_model: Path) -> NoteAnalyzer:
    a = NoteAnalyzer(whisper_model, PARAMS)
    t0 = time.monotonic()
    a.load()
    log.info("model load %.2f s", time.monotonic() - t0)
    return a


@pytest.fixture(scope="session")
def vad_only() -> NoteAnalyzer:
    return NoteAnalyzer(None, PARAMS)


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    d = tmp_path_factory.mktemp("clips")
    made = {wav.stem: make_clip(d / f"{wav.stem}.mp4", wav.name)
            for wav in sorted(SPEECH.glob("*.wav"))}
    made["tone"] = make_clip(d / "tone.mp4", tail_s=8.0)
    yield made


@pytest.mark.parametrize(("stem", "reason"), [
    ("zh_battery", "battery"),
    ("zh_storage", "storage"),
    ("zh_fault", "device_fault"),
    ("zh_weather", "weather"),
    ("zh_obstruct", "obstruction"),
])
def test_mandarin_reasons(analyzer: NoteAnalyzer, clips: dict[str, Path], stem: str,
                          reason: str) -> None:
    res = analyzer.analyze(clips[stem])
    log.info("%s: %s", stem, res)
    assert res.verdict == VERDICT_NOTE, res
    assert res.reason == reason, res
    assert not res.needs_review
    assert 0 < res.confidence <= 1
    assert res.speech_start_s is not None and res.speech_start_s < 1.0
    assert res.speech_end_s is not None and 3.0 < res.speech_end_s < 8.0
    assert res.language == "zh" and res.transcript
    assert res.transcript == to_simplified(res.transcript)  # Whisper's traditional normalised


def test_speech_without_reason(analyzer: NoteAnalyzer, clips: dict[str, Path]) -> None:
    res = analyzer.analyze(clips["zh_none"])
    assert res.verdict == VERDICT_NO_REASON, res
    assert res.reason is None and res.transcript and res.needs_review
    assert res.confidence == 0.0


def test_english_note(analyzer: NoteAnalyzer, clips: dict[str, Path]) -> None:
    res = analyzer.analyze(clips["en_battery"], language="en")
    assert (res.verdict, res.reason, res.language) == (VERDICT_NOTE, "battery", "en"), res
    assert "battery" in res.transcript.lower()


def test_tone_only_is_no_note(analyzer: NoteAnalyzer, clips: dict[str, Path]) -> None:
    res = analyzer.analyze(clips["tone"])
    assert res.verdict == VERDICT_NO_NOTE, res
    assert res.speech_start_s is None and res.transcript == "" and res.needs_review


def test_without_model_speech_is_unclassified(vad_only: NoteAnalyzer,
                                              clips: dict[str, Path]) -> None:
    res = vad_only.analyze(clips["zh_battery"])
    assert (res.verdict, res.reason, res.transcript) == (VERDICT_UNCLASSIFIED, None, "")
    assert res.speech_start_s is not None and res.speech_start_s < 1.0
    assert vad_only.analyze(clips["tone"]).verdict == VERDICT_NO_NOTE


def test_speech_after_the_window_is_no_note(vad_only: NoteAnalyzer, tmp_path: Path) -> None:
    late = make_clip(tmp_path / "late.mp4", "zh_battery.wav", lead_s=12.0, tail_s=1.0,
                     tail="silence")
    assert vad_only.analyze(late).verdict == VERDICT_NO_NOTE
    wide = NoteAnalyzer(None, NoteParams(ffmpeg=FFMPEG, window_s=15.0))
    res = wide.analyze(late)
    assert res.verdict == VERDICT_UNCLASSIFIED
    assert res.speech_start_s is not None and 11.5 < res.speech_start_s < 12.5


def test_probe_length_limits_decoding(vad_only: NoteAnalyzer, tmp_path: Path) -> None:
    late = make_clip(tmp_path / "late.mp4", "zh_battery.wav", lead_s=6.0, tail_s=1.0,
                     tail="silence")
    short = NoteAnalyzer(None, NoteParams(ffmpeg=FFMPEG, probe_s=5.0, window_s=5.0))
    assert short.analyze(late).verdict == VERDICT_NO_NOTE
    assert vad_only.analyze(late).verdict == VERDICT_UNCLASSIFIED


def test_short_speech_is_not_a_note() -> None:
    p = NoteParams(min_speech_s=1.5, window_s=10.0)
    assert find_note_span([(0.5, 1.0), (4.0, 6.0)], p) == (4.0, 6.0)
    assert find_note_span([(0.5, 1.0), (11.0, 16.0)], p) is None
    assert find_note_span([], p) is None


@pytest.mark.parametrize("case", ["no_audio", "corrupt", "missing", "no_ffmpeg", "empty"])
def test_unreadable_clips_are_errors_not_exceptions(vad_only: NoteAnalyzer, tmp_path: Path,
                                                    case: str) -> None:
    analyzer = vad_only
    if case == "no_audio":
        path = make_clip(tmp_path / "silent-film.mp4", audio=False)
        want = "no audio stream"
    elif case == "corrupt":
        good = make_clip(tmp_path / "good.mp4", "zh_none.wav")
        path = tmp_path / "corrupt.mp4"
        path.write_bytes(good.read_bytes()[:2000])
        want = ""
    elif case == "missing":
        path = tmp_path / "does-not-exist.mp4"
        want = "No such file"
    elif case == "empty":
        path = tmp_path / "empty.mp4"
        path.write_bytes(b"")
        want = ""
    else:
        path = make_clip(tmp_path / "x.mp4", "zh_none.wav")
        analyzer = NoteAnalyzer(None, NoteParams(ffmpeg=str(tmp_path / "no-ffmpeg")))
        want = "ffmpeg not found"
    res = analyzer.analyze(path)
    assert res.verdict == VERDICT_ERROR and res.error and res.needs_review
    assert want in res.error


def test_gap_finding_and_to_dict(vad_only: NoteAnalyzer) -> None:
    t = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
    tl = build_timeline([ClipTiming(1, "a_1", t, 60.0),
                         ClipTiming(2, "a_2", t.replace(minute=5), 60.0)])
    (gap,) = tl.gaps
    noted = gap_finding(gap, NoteResult(verdict=VERDICT_NOTE, reason="battery",
                                        transcript="电量不足", confidence=0.9, language="zh"))
    assert noted["kind"] == "interruption_noted" and noted["severity"] == "info"
    assert "battery" in noted["message"] and noted["detail"]["gap"]["after_clip"] == 2
    missing = gap_finding(gap, NoteResult(verdict=VERDICT_NO_NOTE, language="zh"))
    assert missing["kind"] == "interruption_unnoted" and missing["severity"] == "error"
    assert missing["detail"]["note"]["needs_review"] is True
    assert "240.0 s" in missing["message"]


def test_fetch_script_is_idempotent(whisper_model: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "fetch-whisper-base.sh"),
                           str(whisper_model)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "already holds the model" in proc.stdout


def test_uncertain_note_is_marked_for_review_with_its_evidence() -> None:
    t = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
    (gap,) = build_timeline([ClipTiming(1, "a_1", t, 60.0),
                             ClipTiming(2, "a_2", t.replace(minute=5), 60.0)]).gaps
    sure = NoteResult(verdict=VERDICT_NOTE, reason="battery", transcript="电池没电了，录像中断",
                      confidence=0.9, language="zh")
    assert not sure.needs_review
    fuzzy = NoteResult(verdict=VERDICT_NOTE, reason="obstruction", confidence=0.4,
                       transcript="有人阻脑执法，录像中断", language="zh",
                       heard_as=("阻脑≈阻挠",), review=("reason heard only by sound: 阻脑≈阻挠",))
    assert fuzzy.needs_review
    f = gap_finding(gap, fuzzy)
    assert f["kind"] == "interruption_noted" and f["severity"] == "warning"
    assert "obstruction (to review: reason heard only by sound: 阻脑≈阻挠)" in f["message"]
    assert f["detail"]["note"]["heard_as"] == ["阻脑≈阻挠"]
    assert f["detail"]["note"]["needs_review"] is True
    assert gap_finding(gap, sure)["severity"] == "info"


def test_low_asr_probability_and_other_are_reviewed(analyzer: NoteAnalyzer,
                                                    clips: dict[str, Path]) -> None:
    strict = NoteAnalyzer(analyzer.model_dir, NoteParams(ffmpeg=FFMPEG, cpu_threads=2,
                                                         min_asr_prob=1.0))
    strict._model = analyzer._model  # same loaded model, stricter threshold
    res = strict.analyze(clips["zh_battery"])
    assert res.reason == "battery" and res.needs_review
    assert res.asr_prob is not None and 0 < res.asr_prob < 1
    assert any("speech recognition unsure" in r for r in res.review)


@pytest.mark.parametrize(("name", "reason"), [
    ("eval_b02_n5.opus", "battery"),          # terse, 5 dB pink noise
    ("eval_w02.opus", "weather"),             # 雨 heard as 与: sound-alike
    ("eval_n05.opus", None),                  # 店员 heard as 电源, ordinary talk
    ("eval_o04_n10.opus", "obstruction"),     # descriptive, street noise 10 dB
])
def test_notes_from_the_evaluation_set(analyzer: NoteAnalyzer, tmp_path: Path, name: str,
                                       reason: str | None) -> None:
    res = analyzer.analyze(make_clip(tmp_path / "clip.mp4", name, lead_s=0.5))
    assert res.reason == reason, res
    if reason is None:
        assert res.verdict == VERDICT_NO_REASON and res.needs_review
    if name == "eval_w02.opus" and res.heard_as:  # matched by sound: never silently accepted
        assert res.needs_review and res.review


class _Recording(NoteAnalyzer):
    """Records the audio handed to Whisper instead of transcribing it."""

    def __init__(self, params: NoteParams) -> None:
        super().__init__(None, params)
        self.model_dir = Path("/nonexistent")  # take the ASR branch of analyze_audio
        self.pieces: list[int] = []

    def transcribe(self, audio: object, language: str | None) -> tuple[str, str | None, float]:
        import numpy as np

        assert isinstance(audio, np.ndarray)
        self.pieces.append(audio.size)
        return "电池没电了，录像中断", language, 0.9


@pytest.mark.parametrize("pad", [0.0, 0.3])
def test_asr_gets_the_speech_span_with_padding(vad_only: NoteAnalyzer, tmp_path: Path,
                                               pad: float) -> None:
    """Whisper hears the note with ``asr_pad_s`` of audio either side of the VAD span (VAD
    cuts close to the first syllable; a clipped onset is misheard), never past the clip."""
    from dockd.integrity.notes import SAMPLE_RATE, read_audio

    audio = read_audio(make_clip(tmp_path / "c.mp4", "zh_battery.wav", lead_s=1.0), 30.0)
    rec = _Recording(NoteParams(ffmpeg=FFMPEG, asr_pad_s=pad))
    res = rec.analyze_audio(audio)
    assert res.reason == "battery" and res.speech_start_s is not None
    assert res.speech_end_s is not None
    span = int(res.speech_end_s * SAMPLE_RATE) - int(res.speech_start_s * SAMPLE_RATE)
    assert abs(rec.pieces[0] - (span + 2 * pad * SAMPLE_RATE)) <= 2
    # speech right at the start of the clip: the padding stops at sample 0
    rec.analyze_audio(audio[int(res.speech_start_s * SAMPLE_RATE):])
    assert 0.8 * span < rec.pieces[1] <= span + pad * SAMPLE_RATE + 2
    with pytest.raises(ValueError, match="asr_pad_s"):
        NoteParams(asr_pad_s=-0.1)
