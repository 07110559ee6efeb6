"""Continuity and spoken-note analysis cost for one simulated 8-hour shift.

Builds a recorder with real clips (ffmpeg, 160x120): 48 segments of 10 minutes = 8 h of
footage, split by the recorder without loss, with 5 interruptions; four resumed clips start
with a spoken Mandarin note (battery, storage, weather, obstruction), one with only tone.
Then, as the pipeline does after copying: probe every clip (exiftool + ffprobe), build the
timeline, and for every interruption run voice detection and transcription (faster-whisper
``base``, CPU int8) on the first 30 s of the resumed clip.

Prints the analysis time as a fraction of the footage duration (target: < 1 % on 2 CPU
cores with the base model) and the latency per gap. Run:

    .venv/bin/python bench/notes.py            # model: .venv/whisper-base (fetched if absent)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEECH = REPO / "tests" / "fixtures" / "speech"
SEGMENTS, SEGMENT_S = 48, 600.0
# gap before segment i (seconds) and the note spoken when recording resumes
GAPS = {8: 300.0, 16: 600.0, 24: 120.0, 32: 900.0, 40: 240.0}
NOTES = {8: "zh_battery.wav", 16: "zh_storage.wav", 24: "zh_weather.wav",
         32: "zh_obstruct.wav"}  # 40: tone only, no note


def main() -> int:
    from dockd.config import Config, ToolsConfig
    from dockd.devices.simulator import RecorderSpec, simulate_recorder
    from dockd.ingest.probe import Prober
    from dockd.integrity.checks import clip_times
    from dockd.integrity.continuity import ClipTiming, ContinuityParams, build_timeline
    from dockd.integrity.notes import NoteAnalyzer, NoteParams

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / ".venv" / "whisper-base")
    ap.add_argument("--threads", type=int, default=0, help="CTranslate2 CPU threads (0: auto)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--compare", action="store_true",
                    help="also time the earlier decoding (beam 2, no ASR padding), alternating")
    args = ap.parse_args()
    if not (args.model / "model.bin").is_file():
        subprocess.run(["bash", str(REPO / "scripts" / "fetch-whisper-base.sh"),
                        str(args.model)], check=True)

    cfg = Config()
    work = Path(tempfile.mkdtemp(prefix="dockd-bench-notes-"))
    try:
        t = time.perf_counter()
        spec = RecorderSpec(segments=SEGMENTS, segment_seconds=SEGMENT_S, gaps=GAPS,
                            speech={i: SPEECH / w for i, w in NOTES.items()},
                            start=datetime.now(UTC) - timedelta(hours=10))
        sim = simulate_recorder(work / "rec", spec, profile=cfg.profiles[0], tz=cfg.tz,
                                tools=ToolsConfig())
        footage = sum(c.duration_s for c in sim.clips)
        print(f"machine: {os.cpu_count()} CPU(s); recorder built in "
              f"{time.perf_counter() - t:.1f} s: {len(sim.clips)} clips, "
              f"{footage / 3600:.2f} h of footage, {len(GAPS)} interruptions")

        # 1. probe every clip, as the pipeline does after copying
        t = time.perf_counter()
        timings = []
        with Prober(cfg.tools) as prober:
            for c in sim.clips:
                path = sim.root / c.rel_path
                probe = prober.probe(path)
                times = clip_times(c.rel_path, probe, cfg.profiles[0], cfg.tz, 0.0, None)
                timings.append(ClipTiming(c.name, c.name, times.start_utc, probe.duration_s))
        probe_s = time.perf_counter() - t

        # 2. the timeline (pure)
        t = time.perf_counter()
        timeline = build_timeline(timings, ContinuityParams())
        timeline_s = time.perf_counter() - t
        assert len(timeline.gaps) == len(GAPS), timeline.gaps

        # 3. spoken notes: model load once, then one analysis per interruption
        analyzer = NoteAnalyzer(args.model, NoteParams(cpu_threads=args.threads))
        t = time.perf_counter()
        analyzer.load()
        load_s = time.perf_counter() - t
        by_name = {c.name: c for c in sim.clips}
        per_gap = []
        verdicts = []
        old = None
        old_s = 0.0
        if args.compare:  # the decoding before issue 14's tuning, on the same loaded model
            old = NoteAnalyzer(args.model, NoteParams(cpu_threads=args.threads, beam_size=2,
                                                      asr_pad_s=0.0))
            old._model = analyzer._model
        t = time.perf_counter()
        for gap in timeline.gaps:
            clip = sim.root / by_name[str(gap.after_clip)].rel_path
            if old is not None:  # alternate, so that the shared machine's load hits both
                o0 = time.perf_counter()
                old.analyze(clip)
                old_s += time.perf_counter() - o0
            g0 = time.perf_counter()
            res = analyzer.analyze(clip)
            per_gap.append(time.perf_counter() - g0)
            verdicts.append(f"{res.verdict}:{res.reason or '-'}")
        notes_s = sum(per_gap)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    analysis = timeline_s + notes_s
    print(f"\nprobe ({len(timings)} clips, exiftool+ffprobe): {probe_s:8.2f} s")
    print(f"timeline:                             {timeline_s:8.4f} s")
    print(f"model load (once per daemon):         {load_s:8.2f} s")
    print(f"notes ({len(per_gap)} gaps):                       {notes_s:8.2f} s")
    print(f"per-gap latency: median {statistics.median(per_gap):.2f} s, "
          f"max {max(per_gap):.2f} s  ({', '.join(f'{x:.2f}' for x in per_gap)})")
    print(f"verdicts: {', '.join(verdicts)}")
    if args.compare:
        print(f"same gaps, beam 2 without ASR padding: {old_s:.2f} s "
              f"(now / then: {notes_s / old_s:.2f}x)")
    print(f"\ncontinuity + notes / footage:         {analysis / footage:.4%}  (target < 1 %)")
    print(f"... with model load:                  {(analysis + load_s) / footage:.4%}")
    print(f"... with probing every clip too:      {(analysis + load_s + probe_s) / footage:.4%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
