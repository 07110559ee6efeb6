"""CLI conventions: the default configuration file, and output piped into a reader that
stops early (`dockd devices --json | head`) ends quietly, for every read-out command."""

from __future__ import annotations

import os
import subprocess

import pytest

from dockd import config as cfgmod
from dockd.cli import main
from dockd.config import for_workdir
from dockd.state import State

from .conftest import dockd_cmd


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
