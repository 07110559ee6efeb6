"""Continuity and spoken notes through the real pipeline: report, manifest, review flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, run_dockd

pytestmark = pytest.mark.slow

SPEECH = FIXTURES / "speech"


def _recorder(make_recorder):
    # seg 0-1 continuous split, gap 90 s with a spoken battery note before seg 2, seg 2-3
    # continuous, gap 200 s with only tone before seg 4, a new session 1 h later at seg 5
    return make_recorder(segments=6, segment_seconds=2.0,
                         gaps={2: 90.0, 4: 200.0, 5: 3600.0},
                         speech={2: SPEECH / "zh_battery.wav"})


def _config(tmp_path: Path, model: Path | None) -> Path:
    p = tmp_path / "dockd.toml"
    p.write_text(f'[notes]\nmodel_dir = "{model or ""}"\n', encoding="utf-8")
    return p


def test_gaps_notes_and_reasons_in_report_and_signed_manifest(workdir, make_recorder,
                                                               whisper_model, tmp_path):
    rec = _recorder(make_recorder)
    conf = _config(tmp_path, whisper_model)
    r = run_dockd("ingest", str(rec), "--workdir", str(workdir), "--config", str(conf))
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]

    data = json.loads(run_dockd("report", "--workdir", str(workdir), "--json").stdout)
    d = data["dockings"][0]
    assert len(d["sessions"]) == 2
    inter = [g for g in d["gaps"] if g["kind"] == "interruption"]
    breaks = [g for g in d["gaps"] if g["kind"] == "session_break"]
    assert len(inter) == 2 and len(breaks) == 1
    noted, silent = sorted(inter, key=lambda g: g["start"])
    assert noted["verdict"] == "note" and noted["reason"] == "battery"
    assert not noted["needs_review"] and "电" in noted["transcript"]
    assert abs(noted["length_s"] - 90.0) < 1.0
    assert silent["verdict"] == "no_note" and silent["needs_review"]
    assert abs(silent["length_s"] - 200.0) < 1.0
    assert d["needs_review"] == 1

    human = run_dockd("report", "--workdir", str(workdir)).stdout
    assert "NO NOTE" in human and "battery" in human and "supervisor" in human

    # the same findings are in the signed, delivered manifest
    manifest = json.loads(next((workdir / "target").rglob("manifest.json")).read_text("utf-8"))
    kinds = [f["kind"] for f in manifest["findings"]]
    assert kinds.count("interruption_noted") == 1 and kinds.count("interruption_unnoted") == 1
    cont = manifest["extra"]["continuity"]
    assert len(cont["timeline"]["sessions"]) == 2
    assert run_dockd("verify", str(workdir / "target"), "--workdir", str(workdir)).returncode == 0


def test_without_model_speech_is_found_but_reason_unknown(workdir, make_recorder, tmp_path):
    rec = _recorder(make_recorder)
    conf = _config(tmp_path, None)
    assert run_dockd("ingest", str(rec), "--workdir", str(workdir),
                     "--config", str(conf)).returncode == 0
    d = json.loads(run_dockd("report", "--workdir", str(workdir), "--json").stdout)["dockings"][0]
    verdicts = sorted(g["verdict"] for g in d["gaps"] if g["kind"] == "interruption")
    assert verdicts == ["no_note", "speech_unclassified"]
    assert all(g["reason"] is None for g in d["gaps"])


def test_note_without_a_known_reason_is_reviewed_and_the_report_says_why(
        workdir, make_recorder, whisper_model, tmp_path):
    # "录像中断了一段时间，现在重新开始录像。" (evaluation set x07): a note, no known reason
    rec = make_recorder(segments=3, segment_seconds=2.0, gaps={2: 90.0},
                        speech={2: SPEECH / "eval_x07.opus"})
    conf = _config(tmp_path, whisper_model)
    r = run_dockd("ingest", str(rec), "--workdir", str(workdir), "--config", str(conf))
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    d = json.loads(run_dockd("report", "--workdir", str(workdir), "--json").stdout)["dockings"][0]
    (gap,) = [g for g in d["gaps"] if g["kind"] == "interruption"]
    assert (gap["verdict"], gap["reason"]) == ("note", "other"), gap
    assert gap["needs_review"] and gap["review"] == ["no known reason named"]
    human = run_dockd("report", "--workdir", str(workdir)).stdout
    flat = "".join(ch for ch in human if not ch.isspace() and ch != "\u2502")  # table folds
    assert "(review:noknownreasonnamed)" in flat and "supervisor" in human
    manifest = json.loads(next((workdir / "target").rglob("manifest.json")).read_text("utf-8"))
    (f,) = [f for f in manifest["findings"] if f["kind"] == "interruption_noted"]
    assert f["severity"] == "warning" and "to review: no known reason named" in f["message"]
    assert f["detail"]["note"]["review"] == ["no known reason named"]
