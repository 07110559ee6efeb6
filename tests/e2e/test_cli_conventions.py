"""CLI conventions: the default configuration file, and output piped into a reader that
stops early (`dockd devices --json | head`) ends quietly, for every read-out command."""

from __future__ import annotations

import os
import subprocess

import pytest

from dockd import config as cfgmod
from dockd.cli import main
from dockd.config import for_workdir
from dockd.store import State
from tests.conftest import dockd_cmd


def test_etc_dockd_config_toml_is_read_by_default(tmp_path, monkeypatch, capsys):
    conf = tmp_path / "config.toml"
    conf.write_text('[dock]\nid = "dock-77"\n', encoding="utf-8")
    monkeypatch.delenv("DOCKD_CONFIG")
    monkeypatch.setattr(cfgmod, "DEFAULT_CONFIG", conf)
    assert main(["config-check"]) == 0
    assert "dock dock-77" in capsys.readouterr().out
    monkeypatch.setattr(cfgmod, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    assert main(["config-check"]) == 0  # no file: the built-in defaults
    assert "dock dock-01" in capsys.readouterr().out
    monkeypatch.setenv("DOCKD_CONFIG", str(conf))
    assert main(["config-check"]) == 0
    assert "dock dock-77" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["config-check", "--json"], ["devices", "--json"],
                                     ["status", "--json"], ["report", "--json"],
                                     ["queue", "--json"], ["status"]])
def test_output_into_a_closed_pipe_ends_without_traceback(tmp_path, command):
    w = tmp_path / "w"
    State(for_workdir(w).paths.database).close()
    read, write = os.pipe()
    os.close(read)  # the reader is gone before dockd writes a byte (as `| head` after 10 lines)
    try:
        proc = subprocess.run(dockd_cmd(*command, "--workdir", str(w)), stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == ""
    assert proc.returncode in (0, 1, 141)  # rich exits 1 on a broken pipe, quietly


def test_cli_language_from_the_locale_and_lang_flag():
    from dockd.cli_text import TEXT, language_from_locale

    assert set(TEXT["en"]) == set(TEXT["zh"])
    assert language_from_locale({"LANG": "zh_CN.UTF-8"}) == "zh"
    assert language_from_locale({"LANG": "C.UTF-8"}) == "en"
    assert language_from_locale({"LANG": "zh_CN.UTF-8", "LC_ALL": "en_US.UTF-8"}) == "en"
    assert language_from_locale({"LANGUAGE": "zh_CN:en", "LANG": "en_US.UTF-8"}) == "zh"
    assert language_from_locale({}) == "en"


def test_ingest_status_and_config_check_in_chinese(workdir, make_recorder, tmp_path):
    from tests.integration.test_status_data import build_dock

    rec = make_recorder(segments=2)
    zh = dict(os.environ, LANG="zh_CN.UTF-8", LANGUAGE="")
    r = subprocess.run(dockd_cmd("ingest", str(rec), "--workdir", str(workdir)),
                       capture_output=True, text=True, timeout=300, env=zh)
    assert r.returncode == 0, r.stderr
    assert "2/2 个文件已上传并校验" in r.stdout and "清单 " in r.stdout
    assert "已复制" in r.stderr and "预计剩余" in r.stderr
    en = subprocess.run(dockd_cmd("--lang", "en", "config-check"), capture_output=True,
                        text=True, timeout=120, env=zh)
    assert ": OK (dock dock-01" in en.stdout
    zh_check = subprocess.run(dockd_cmd("config-check", "--lang", "zh"), capture_output=True,
                              text=True, timeout=120)
    assert "正确（采集站 dock-01" in zh_check.stdout
    build_dock(tmp_path / "hand")
    st = subprocess.run(dockd_cmd("status", "--lang", "zh", "--workdir", str(tmp_path / "hand")),
                        capture_output=True, text=True, timeout=120)
    assert "采集站 dock-01 — 端口" in st.stdout and "待上传" in st.stdout, st.stdout
    assert "完成 — 可以拔出" in st.stdout or "正在复制" in st.stdout


def test_queue_and_report_in_chinese(tmp_path):
    from tests.integration.test_status_data import build_dock

    build_dock(tmp_path / "hand")
    wide = dict(os.environ, COLUMNS="220")
    q = subprocess.run(dockd_cmd("queue", "--lang", "zh", "--workdir", str(tmp_path / "hand")),
                       capture_output=True, text=True, timeout=120, env=wide)
    assert q.returncode == 0, q.stderr
    assert "上传队列（最早到期在前）" in q.stdout and "上传永久失败" in q.stdout, q.stdout
    assert "failed permanently" not in q.stdout
    assert "告警 上传失败 clip/7" in q.stdout
    rep = subprocess.run(dockd_cmd("report", "--lang", "zh", "--workdir",
                                   str(tmp_path / "hand")),
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0 and "接入 " in rep.stdout, rep.stdout + rep.stderr
    dev = subprocess.run(dockd_cmd("devices", "--lang", "zh", "--workdir",
                                   str(tmp_path / "hand")),
                         capture_output=True, text=True, timeout=120, env=wide)
    assert dev.returncode == 0, dev.stderr
    assert "采集站时钟" in dev.stdout and "记录仪：" in dev.stdout, dev.stdout
    assert "NTP-synchronised" not in dev.stdout and "dock clock" not in dev.stdout
