"""Spoken interruption notes (rule R2): does the resumed clip start with the officer's reason?

For each interruption found by :mod:`dockd.integrity.continuity`, the first ``probe_s``
seconds of the clip that resumes recording are decoded by ffmpeg (16 kHz mono float32
through a pipe), Silero VAD (as shipped inside faster-whisper) looks for speech that starts
within ``window_s`` of the clip start and lasts at least ``min_speech_s``, and, when an ASR
model directory is configured, faster-whisper transcribes that span and
:mod:`dockd.integrity.reasons` classifies the reason.

Verdicts (:class:`NoteResult.verdict`):

- ``note``: speech at the start, transcribed, a reason found (``reason`` is one of
  ``battery``, ``storage``, ``device_fault``, ``weather``, ``obstruction``, or ``other``
  when the officer spoke of the interruption without a known reason);
- ``no_reason``: speech at the start, transcribed, but no reason and no mention of the
  interruption in it (talk on site, not a note);
- ``speech_unclassified``: speech at the start, but no ASR model configured: a note may
  have been made, its reason is unknown;
- ``no_note``: no speech (long enough) within the window;
- ``error``: the audio could not be read (no audio stream, corrupt file, ffmpeg missing)
  or VAD/ASR failed; ``error`` says why. :meth:`NoteAnalyzer.analyze` never raises.

Everything but ``note`` needs a reviewer (:attr:`NoteResult.needs_review`), and so does a
``note`` whose classification is not certain; ``review`` says why: a reason heard only by
sound-alike words (``heard_as``), ``other`` (no known reason named), rival reasons, or a
transcript the ASR itself was unsure of (mean token probability below ``min_asr_prob``).

Whisper gets the lexicon's domain words as ``hotwords`` (not ``initial_prompt``, which can
leak into the transcript).

faster-whisper and numpy are imported lazily, inside functions: the rest of dockd imports
without them.
"""

from __future__ import annotations

import logging
import math
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DockdError
from ..model import Finding
from . import reasons as reasons_mod

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .continuity import Gap

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000

VERDICT_NOTE = "note"
VERDICT_NO_REASON = "no_reason"
VERDICT_UNCLASSIFIED = "speech_unclassified"
VERDICT_NO_NOTE = "no_note"
VERDICT_ERROR = "error"
VERDICTS = (VERDICT_NOTE, VERDICT_NO_REASON, VERDICT_UNCLASSIFIED, VERDICT_NO_NOTE, VERDICT_ERROR)


class AudioError(DockdError):
    """The clip's audio could not be decoded (no audio stream, corrupt, ffmpeg failed)."""


@dataclass(frozen=True)
class NoteParams:
    probe_s: float = 30.0
    """How much of the resumed clip is decoded."""
    window_s: float = 10.0
    """Speech must start within this many seconds of the clip start."""
    min_speech_s: float = 1.5
    """The speech span (pauses up to ``merge_gap_s`` included) must last at least this long."""
    merge_gap_s: float = 1.0
    """Pauses up to this long join VAD segments into one span (a note has pauses)."""
    language: str | None = "zh"
    """Language of the notes (Whisper code); None lets Whisper detect it."""
    beam_size: int = 5
    """Whisper's beam width (its own default; 2 lost key words in noise, bench/RESULTS.md)."""
    asr_pad_s: float = 0.3
    """Audio kept before and after the speech span for ASR: VAD cuts close to the first
    syllable, and Whisper mishears a clipped onset (雾 as 误)."""
    vad_threshold: float = 0.5
    cpu_threads: int = 0
    """Threads for CTranslate2; 0 lets it choose."""
    ffmpeg: str = "ffmpeg"
    ffmpeg_timeout_s: float = 120.0
    min_asr_prob: float = 0.5
    """A transcript with a lower mean token probability is marked for review."""
    hotwords: bool = True
    """Give Whisper the lexicon's hotwords for the note's language."""

    def __post_init__(self) -> None:
        if not (0 < self.window_s <= self.probe_s):
            raise ValueError("window_s must be > 0 and <= probe_s")
        if self.min_speech_s < 0 or self.merge_gap_s < 0:
            raise ValueError("min_speech_s and merge_gap_s must be >= 0")
        if not 0 <= self.asr_pad_s <= 5:
            raise ValueError("asr_pad_s must be in [0, 5]")
        if self.beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if not 0 <= self.min_asr_prob <= 1:
            raise ValueError("min_asr_prob must be in [0, 1]")


@dataclass(frozen=True)
class NoteResult:
    verdict: str
    speech_start_s: float | None = None
    speech_end_s: float | None = None
    transcript: str = ""
    reason: str | None = None
    confidence: float = 0.0
    """Keyword confidence times the ASR's mean token probability; 0 without a transcript."""
    language: str | None = None
    error: str = ""
    matched: tuple[str, ...] = ()
    """Lexicon keywords found as written in the transcript."""
    heard_as: tuple[str, ...] = ()
    """Keywords heard by sound only, as ``heard≈keyword``."""
    review: tuple[str, ...] = ()
    """Why a ``note`` verdict still needs the supervisor (empty: it stands alone)."""
    asr_prob: float | None = None
    """Whisper's mean token probability for the transcript."""
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    """Seconds spent in decode / vad / asr (for metrics; not part of equality)."""

    @property
    def needs_review(self) -> bool:
        return self.verdict != VERDICT_NOTE or bool(self.review)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matched"] = list(self.matched)
        d["heard_as"] = list(self.heard_as)
        d["review"] = list(self.review)
        d["needs_review"] = self.needs_review
        return d


def read_audio(path: str | PathLike[str], seconds: float, ffmpeg: str = "ffmpeg",
               timeout_s: float = 120.0) -> np.ndarray:
    """First ``seconds`` of the first audio stream of ``path``: 16 kHz mono float32."""
    import numpy as np

    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
           "-i", "file:" + str(path), "-map", "0:a:0", "-t", f"{seconds:.3f}", "-vn",
           "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise AudioError(f"ffmpeg not found: {ffmpeg}") from exc
    except subprocess.TimeoutExpired as exc:
        raise AudioError(f"ffmpeg did not finish within {timeout_s:.0f} s") from exc
    stderr = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        last = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
        if "matches no streams" in stderr:
            last = "no audio stream"
        raise AudioError(last)
    if stderr:
        log.warning("ffmpeg reported problems decoding %s: %s", path, stderr.splitlines()[-1][:200])
    usable = len(proc.stdout) - len(proc.stdout) % 4
    audio = np.frombuffer(proc.stdout[:usable], dtype=np.float32)
    if audio.size == 0:
        raise AudioError("audio stream holds no samples")
    return audio


def speech_spans(audio: np.ndarray, params: NoteParams) -> list[tuple[float, float]]:
    """Speech as (start_s, end_s) spans: Silero VAD segments joined across short pauses."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    opts = VadOptions(threshold=params.vad_threshold, min_speech_duration_ms=250,
                      min_silence_duration_ms=300, speech_pad_ms=100)
    spans: list[tuple[float, float]] = []
    for ts in get_speech_timestamps(audio, opts, sampling_rate=SAMPLE_RATE):
        start, end = ts["start"] / SAMPLE_RATE, ts["end"] / SAMPLE_RATE
        if spans and start - spans[-1][1] <= params.merge_gap_s:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def find_note_span(spans: list[tuple[float, float]],
                   params: NoteParams) -> tuple[float, float] | None:
    """The first span that starts within the window and is long enough, if any."""
    for start, end in spans:
        if start > params.window_s:
            break
        if end - start >= params.min_speech_s:
            return start, end
    return None


DEFAULT_MODEL_DIR = "/var/lib/dockd/models/whisper-base"
"""Where the install puts Whisper base (docs/install.md); the configuration's default."""


def model_warning(model_dir: str | PathLike[str] | None, enabled: bool = True) -> str | None:
    """Why spoken notes will get no reason with this model directory, or None when fine."""
    if not enabled:
        return None
    if not model_dir:
        return ("notes.model_dir is empty: spoken notes are detected but their reasons are "
                "not classified")
    if not (Path(model_dir) / "model.bin").is_file():
        return (f"notes.model_dir: no Whisper model at {model_dir}: spoken notes are detected "
                f"but their reasons are not classified; assemble it with "
                f"scripts/fetch-whisper-base.sh {model_dir} (docs/install.md)")
    return None


class NoteAnalyzer:
    """Checks resumed clips for spoken notes; holds the Whisper model, loaded once.

    Thread-safe: the model is loaded on first use under a lock, and transcriptions are
    serialised by the same lock (one CTranslate2 model, ``cpu_threads`` threads). Create one
    analyzer per process and share it. Without ``model_dir``, or with one that holds no
    ``model.bin`` (the default path on a dock where the model was not installed; logged),
    only VAD runs and a note is reported as ``speech_unclassified``.
    """

    def __init__(self, model_dir: str | PathLike[str] | None = None,
                 params: NoteParams | None = None,
                 lexicon: reasons_mod.Lexicon | None = None) -> None:
        self.missing_model: Path | None = None
        if model_dir and not (Path(model_dir) / "model.bin").is_file():
            log.warning("%s", model_warning(model_dir))
            self.missing_model, model_dir = Path(model_dir), None
        self.model_dir = Path(model_dir) if model_dir else None
        self.params = params or NoteParams()
        self.lexicon = lexicon
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the Whisper model now (otherwise on first transcription)."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> Any:
        if self._model is None:
            if self.model_dir is None:
                raise AudioError("no ASR model configured")
            from faster_whisper import WhisperModel

            t0 = time.monotonic()
            self._model = WhisperModel(str(self.model_dir), device="cpu", compute_type="int8",
                                       cpu_threads=self.params.cpu_threads,
                                       local_files_only=True)
            log.info("loaded Whisper model from %s in %.1f s", self.model_dir,
                     time.monotonic() - t0)
        return self._model

    def transcribe(self, audio: np.ndarray, language: str | None) -> tuple[str, str | None, float]:
        """(text, language, mean token probability) of ``audio`` (16 kHz mono float32)."""
        hot = None
        if self.params.hotwords:
            hot = reasons_mod.hotwords(language, self.lexicon) if language else None
        with self._lock:
            model = self._load_locked()
            segments, info = model.transcribe(
                audio, language=language, beam_size=self.params.beam_size,
                vad_filter=False, condition_on_previous_text=False, without_timestamps=True,
                hotwords=hot)
            parts: list[str] = []
            weighted = 0.0
            weight = 0.0
            for seg in segments:
                parts.append(seg.text)
                w = max(len(seg.text.strip()), 1)
                weighted += seg.avg_logprob * w
                weight += w
        prob = math.exp(weighted / weight) if weight else 0.0
        return "".join(parts).strip(), getattr(info, "language", language), prob

    def analyze(self, clip: str | PathLike[str], language: str | None = None,
                label: str = "") -> NoteResult:
        """Check the start of ``clip`` for a spoken note. Never raises.

        ``language`` overrides ``params.language`` for this clip (e.g. per officer);
        ``label`` names the clip in log lines (port, recorder serial, clip id). The
        transcript is never logged: it is footage content (R8).
        """
        label = label or str(clip)
        t0 = time.monotonic()
        try:
            audio = read_audio(clip, self.params.probe_s, self.params.ffmpeg,
                               self.params.ffmpeg_timeout_s)
        except AudioError as exc:
            log.warning("spoken-note check of %s: cannot read audio: %s", label, exc)
            return NoteResult(verdict=VERDICT_ERROR, error=str(exc),
                              language=language or self.params.language)
        except Exception as exc:  # e.g. numpy missing: report, never raise
            log.exception("spoken-note check of %s failed", label)
            return NoteResult(verdict=VERDICT_ERROR, error=f"{type(exc).__name__}: {exc}",
                              language=language or self.params.language)
        result = self.analyze_audio(audio, language, decode_s=time.monotonic() - t0)
        log.info("spoken-note check of %s: %s reason=%s speech=%s-%s s confidence=%.2f %s",
                 label, result.verdict, result.reason, result.speech_start_s,
                 result.speech_end_s, result.confidence, result.timings)
        return result

    def analyze_audio(self, audio: np.ndarray, language: str | None = None,
                      decode_s: float = 0.0) -> NoteResult:
        """Like :meth:`analyze`, on decoded audio (16 kHz mono float32). Never raises."""
        lang = language or self.params.language
        timings = {"decode_s": round(decode_s, 3)}
        try:
            t0 = time.monotonic()
            span = find_note_span(speech_spans(audio, self.params), self.params)
            timings["vad_s"] = round(time.monotonic() - t0, 3)
            if span is None:
                return NoteResult(verdict=VERDICT_NO_NOTE, language=lang, timings=timings)
            start, end = round(span[0], 3), round(span[1], 3)
            if self.model_dir is None:
                return NoteResult(verdict=VERDICT_UNCLASSIFIED, speech_start_s=start,
                                  speech_end_s=end, language=lang, timings=timings)
            t0 = time.monotonic()
            pad = self.params.asr_pad_s
            piece = audio[max(0, int((span[0] - pad) * SAMPLE_RATE)):
                          int(math.ceil((span[1] + pad) * SAMPLE_RATE))]
            text, detected, prob = self.transcribe(piece, lang)
            timings["asr_s"] = round(time.monotonic() - t0, 3)
        except Exception as exc:  # VAD/ASR failure is a finding, not a crash
            log.exception("spoken-note analysis failed")
            return NoteResult(verdict=VERDICT_ERROR, error=f"{type(exc).__name__}: {exc}",
                              language=lang, timings=timings)
        found = reasons_mod.analyse(text, detected or lang, self.lexicon)
        text_s = reasons_mod.to_simplified(text, self.lexicon)
        review = list(found.review)
        if found.reason and prob < self.params.min_asr_prob:
            review.append(f"speech recognition unsure (mean token probability {prob:.2f})")
        return NoteResult(
            verdict=VERDICT_NOTE if found.reason else VERDICT_NO_REASON,
            speech_start_s=start, speech_end_s=end, transcript=text_s, reason=found.reason,
            confidence=round(found.confidence * prob, 3) if found.reason else 0.0,
            language=detected or lang, matched=found.matched, heard_as=found.heard_as,
            review=tuple(review) if found.reason else (), asr_prob=round(prob, 3),
            timings=timings)


def gap_finding(gap: Gap, result: NoteResult) -> dict[str, Any]:
    """The stored finding for an interruption and its note check (``Finding.as_dict()``)."""
    messages = {
        VERDICT_NOTE: "interruption of %.1f s; spoken note gives reason: %s",
        VERDICT_NO_REASON: "interruption of %.1f s; speech at resumption states no reason%s",
        VERDICT_UNCLASSIFIED: "interruption of %.1f s; speech at resumption, reason unknown "
                              "(no ASR model)%s",
        VERDICT_NO_NOTE: "interruption of %.1f s without a spoken note%s",
        VERDICT_ERROR: "interruption of %.1f s; spoken note could not be checked%s",
    }
    severity = "info" if not result.needs_review else (
        "error" if result.verdict == VERDICT_NO_NOTE else "warning")
    extra = result.reason if result.verdict == VERDICT_NOTE else (
        f": {result.error}" if result.error else "")
    if result.verdict == VERDICT_NOTE and result.review:
        extra = f"{extra} (to review: {'; '.join(result.review)})"
    message = messages.get(result.verdict, "interruption of %.1f s%s") % (gap.length_s, extra)
    kind = "interruption_noted" if result.verdict == VERDICT_NOTE else "interruption_unnoted"
    return Finding(kind=kind, severity=severity, message=message,
                   detail={"gap": gap.to_dict(), "note": result.to_dict()}).as_dict()
