"""How often dockd gets the reason of a spoken interruption note right (issue 14).

Every note of bench/notes_eval/set.tsv (clean, and with noise at 10 dB and 5 dB SNR; audio
made by bench/notes_eval/make_set.py) is muxed, as the tests do, at the start of a small
MP4 (testsrc2 video, 0.5 s of silence, the note, 3 s of tone) - the clip that resumes
recording after a gap - and checked end to end by the pipeline's own
:class:`dockd.integrity.notes.NoteAnalyzer` (ffmpeg decode, Silero VAD, faster-whisper with
hotwords, reason classification).

Right means: the reason class of the row (``other`` for a note that names no known reason)
or, for talk with no reason (class ``none``), no reason at all. A false alarm is talk with
no reason that got one (``other`` included). Prints accuracy overall, per class, per noise
level and split, the false alarms, notes marked for review, the misses with their
transcripts, and seconds per note. Run:

    .venv/bin/python bench/notes_eval.py                     # model: .venv/whisper-base
    .venv/bin/python bench/notes_eval.py --split held --json out.json
    .venv/bin/python bench/notes_eval.py --reclassify out.json   # lexicon only, no ASR
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HERE = REPO / "bench" / "notes_eval"
CONDITIONS = {"clean": "", "10dB": "_n10", "5dB": "_n5"}


def read_set(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def make_clip(ffmpeg: str, video: Path, note: Path, out: Path) -> Path:
    graph = ("[1:a]aresample=16000,aformat=channel_layouts=mono[s];"
             "[2:a]aresample=16000,aformat=channel_layouts=mono[n];"
             "[3:a]aresample=16000,aformat=channel_layouts=mono[t];"
             "[s][n][t]concat=n=3:v=0:a=1[a]")
    subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(video),
                    "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=0.5", "-i", str(note),
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:d=3",
                    "-filter_complex", graph, "-map", "0:v", "-map", "[a]", "-c:v", "copy",
                    "-c:a", "aac", "-shortest", str(out)], check=True, timeout=120)
    return out


def expected(row: dict[str, str]) -> str | None:
    return None if row["class"] == "none" else row["class"]


def report(results: list[dict], model: str) -> None:
    def acc(rs: list[dict]) -> str:
        ok = sum(r["right"] for r in rs)
        return f"{ok}/{len(rs)} = {ok / len(rs):.1%}" if rs else "-"

    print(f"\nmodel: {model}; {len(results)} notes")
    print(f"overall:            {acc(results)}")
    for cond in CONDITIONS:
        print(f"  {cond:16s}  {acc([r for r in results if r['condition'] == cond])}")
    for split in sorted({r['split'] for r in results}):
        print(f"  split {split:10s}  {acc([r for r in results if r['split'] == split])}")
    print("per class (clean / 10 dB / 5 dB):")
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_class[r["class"]].append(r)
    for cls, rs in by_class.items():
        parts = [acc([r for r in rs if r["condition"] == c]) for c in CONDITIONS]
        print(f"  {cls:13s} {acc(rs):18s} ({' / '.join(parts)})")
    alarms = [r for r in results if r["class"] == "none" and r["got"] is not None]
    nones = [r for r in results if r["class"] == "none"]
    print(f"false alarms on talk without a reason: {len(alarms)}/{len(nones)}")
    reviewed = [r for r in results if r["got"] and r["needs_review"]]
    right_reviewed = [r for r in reviewed if r["right"]]
    wrong = [r for r in results if r["got"] and not r["right"]]
    wrong_unreviewed = [r for r in wrong if not r["needs_review"]]
    print(f"notes with a reason marked for review: {len(reviewed)} "
          f"({len(right_reviewed)} of them right); wrong reasons not marked for review: "
          f"{len(wrong_unreviewed)}")
    asr = [r["asr_s"] for r in results if r["asr_s"] is not None]
    total = [r["analyze_s"] for r in results if r["analyze_s"] is not None]
    if total:
        print(f"seconds per note: analysis {sum(total) / len(total):.2f} "
              f"(of which ASR {sum(asr) / max(len(asr), 1):.2f}), max {max(total):.2f}")
    confusions = Counter((r["class"], r["got"] or "none") for r in results if not r["right"])
    if confusions:
        print("confusions (want -> got: count): " + ", ".join(
            f"{w}->{g}: {n}" for (w, g), n in confusions.most_common()))
    misses = [r for r in results if not r["right"]]
    if misses:
        print("\nmisses:")
        for r in misses:
            print(f"  {r['id']:4s} {r['condition']:5s} want {r['class']:12s} got "
                  f"{(r['got'] or 'none'):12s} {r['verdict']:10s} heard: {r['transcript']}"
                  + (f"  [review: {'; '.join(r['review'])}]" if r["review"] else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / ".venv" / "whisper-base")
    ap.add_argument("--set", type=Path, default=HERE / "set.tsv")
    ap.add_argument("--audio", type=Path, default=HERE / "audio")
    ap.add_argument("--split", choices=["all", "dev", "held"], default="all")
    ap.add_argument("--conditions", nargs="*", default=list(CONDITIONS),
                    choices=list(CONDITIONS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-hotwords", action="store_true")
    ap.add_argument("--beam", type=int, help="Whisper beam width (default: NoteParams')")
    ap.add_argument("--pad", type=float, help="seconds of audio around the speech span for ASR")
    ap.add_argument("--ids", help="only these note ids (comma-separated)")
    ap.add_argument("--json", type=Path, help="write every result here")
    ap.add_argument("--reclassify", type=Path,
                    help="re-run only the classification on the transcripts of a --json file")
    args = ap.parse_args()

    from dockd.integrity import reasons
    from dockd.integrity.notes import NoteAnalyzer, NoteParams

    rows = [r for r in read_set(args.set) if args.split in ("all", r["split"])]
    if args.ids:
        rows = [r for r in rows if r["id"] in set(args.ids.split(","))]
    if args.reclassify:
        old = json.loads(args.reclassify.read_text(encoding="utf-8"))
        keep = {r["id"] for r in rows}
        results = []
        for r in old["results"]:
            if r["id"] not in keep or r["condition"] not in args.conditions:
                continue
            a = reasons.analyse(r["transcript"], "zh")
            want = None if r["class"] == "none" else r["class"]
            prob_review = r.get("asr_prob") is not None and r["asr_prob"] < 0.5
            r.update(got=a.reason, right=a.reason == want, review=list(a.review),
                     needs_review=bool(a.review) or prob_review or a.reason is None)
            results.append(r)
        report(results, old["model"] + " (reclassified)")
        return 0

    if not (args.model / "model.bin").is_file():
        subprocess.run(["bash", str(REPO / "scripts" / "fetch-whisper-base.sh"),
                        str(args.model)], check=True)
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    tuned = {k: v for k, v in (("beam_size", args.beam), ("asr_pad_s", args.pad))
             if v is not None}
    params = NoteParams(ffmpeg=ffmpeg, cpu_threads=args.threads,
                        hotwords=not args.no_hotwords, **tuned)
    analyzer = NoteAnalyzer(args.model, params)
    t = time.perf_counter()
    analyzer.load()
    print(f"machine: {os.cpu_count()} CPU(s), {args.threads} ASR thread(s); model "
          f"{args.model.name} loaded in {time.perf_counter() - t:.1f} s; beam "
          f"{params.beam_size}, pad {params.asr_pad_s} s, hotwords {params.hotwords}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="dockd-notes-eval-") as tmp:
        video = Path(tmp) / "video.mp4"
        subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "lavfi",
                        "-i", "testsrc2=size=160x120:rate=10:d=30", "-c:v", "libx264",
                        "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(video)],
                       check=True, timeout=120)
        for row in rows:
            for cond in args.conditions:
                note = args.audio / f"{row['id']}{CONDITIONS[cond]}.opus"
                clip = make_clip(ffmpeg, video, note, Path(tmp) / "clip.mp4")
                t = time.perf_counter()
                res = analyzer.analyze(clip, label=note.name)
                elapsed = time.perf_counter() - t
                results.append({
                    "id": row["id"], "class": row["class"], "style": row["style"],
                    "split": row["split"], "condition": cond, "text": row["text"],
                    "verdict": res.verdict, "got": res.reason,
                    "right": res.reason == expected(row), "needs_review": res.needs_review,
                    "review": list(res.review), "heard_as": list(res.heard_as),
                    "transcript": res.transcript, "asr_prob": res.asr_prob,
                    "confidence": res.confidence, "asr_s": res.timings.get("asr_s"),
                    "analyze_s": round(elapsed, 3)})
                r = results[-1]
                print(f"{r['id']:4s} {cond:5s} {'ok ' if r['right'] else 'BAD'} "
                      f"{(r['got'] or '-'):12s} {elapsed:5.2f} s  {r['transcript']}", flush=True)
    report(results, args.model.name)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model.name, "beam_size": params.beam_size,
                                        "asr_pad_s": params.asr_pad_s,
                                        "hotwords": params.hotwords, "results": results},
                                        ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
