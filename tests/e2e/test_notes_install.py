"""A model on every install (issue 14): the documented install step assembles Whisper where
the default configuration looks, and a dock installed so classifies a note's reason;
`dockd config-check` warns when notes are enabled without a model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dockd.config import Config, load
from dockd.daemon import build_notes
from dockd.integrity.notes import DEFAULT_MODEL_DIR, VERDICT_UNCLASSIFIED, NoteAnalyzer
from tests.conftest import run_dockd

ROOT = Path(__file__).resolve().parents[2]
SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"


def _documented_model_step() -> str:
    doc = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- install-model -->\s*```sh\n(.*?)```", doc, re.S)
    assert m, "docs/install.md lost its model step"
    return m.group(1)


def test_default_configuration_points_at_the_installed_model() -> None:
    assert Config().notes.model_dir == DEFAULT_MODEL_DIR
    assert load(ROOT / "config.example.toml").notes.model_dir == DEFAULT_MODEL_DIR
    assert DEFAULT_MODEL_DIR in _documented_model_step()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not found")
def test_documented_install_step_gives_reasons(tmp_path: Path) -> None:
    """Run the documented step into a temporary prefix (fresh: nothing there yet), then
    check a fixture note through the daemon's own analyser with the example configuration
    moved under the same prefix."""
    prefix = tmp_path / "root"
    step = (_documented_model_step()
            .replace("/var/lib/dockd", str(prefix / "var/lib/dockd"))
            .replace("/opt/dockd/bin/python", sys.executable))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", step], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model loads from" in proc.stdout

    conf = tmp_path / "config.toml"
    conf.write_text((ROOT / "config.example.toml").read_text(encoding="utf-8")
                    .replace("/var/lib/dockd", str(prefix / "var/lib/dockd")), encoding="utf-8")
    cfg = load(conf)
    analyzer = build_notes(cfg)
    assert analyzer is not None and analyzer.missing_model is None
    assert analyzer.model_dir == prefix / "var/lib/dockd/models/whisper-base"
    res = analyzer.analyze(SPEECH / "zh_battery.wav")
    assert (res.verdict, res.reason) == ("note", "battery"), res
    check = run_dockd("config-check", "--config", str(conf), "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["warnings"] == []


def test_config_check_warns_without_a_model(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    conf = tmp_path / "c.toml"
    conf.write_text(f'[notes]\nmodel_dir = "{missing}"\n', encoding="utf-8")
    r = run_dockd("config-check", "--config", str(conf))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"warning: notes.model_dir: no Whisper model at {missing}" in r.stdout
    (w,) = json.loads(run_dockd("config-check", "--config", str(conf), "--json").stdout)[
        "warnings"]
    assert "fetch-whisper-base.sh" in w
    conf.write_text('[notes]\nmodel_dir = ""\n', encoding="utf-8")
    assert "warning: notes.model_dir is empty" in run_dockd("config-check", "--config",
                                                            str(conf)).stdout
    conf.write_text('[notes]\nenabled = false\nmodel_dir = ""\n', encoding="utf-8")
    assert "warning" not in run_dockd("config-check", "--config", str(conf)).stdout
    # a directory that exists but holds no model is a configuration error, as before
    missing.mkdir()
    conf.write_text(f'[notes]\nmodel_dir = "{missing}"\n', encoding="utf-8")
    r = run_dockd("config-check", "--config", str(conf))
    assert r.returncode == 1 and "holds no model.bin" in r.stdout


def test_analyzer_without_the_model_detects_speech_only(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("faster_whisper")
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not found")
    a = NoteAnalyzer(tmp_path / "absent")
    assert a.model_dir is None and a.missing_model == tmp_path / "absent"
    assert "no Whisper model at" in caplog.text
    res = a.analyze(SPEECH / "zh_battery.wav")
    assert res.verdict == VERDICT_UNCLASSIFIED and res.needs_review
