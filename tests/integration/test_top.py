"""``dockd top``: one frame rendered at 80x24 with rich's console capture, the one-shot mode,
and the live dashboard under tmux quitting on ``q``."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

import pytest
from rich.cells import cell_len
from rich.console import Console

from dockd.status.commands import add_top_parser
from dockd.status.top import frame, run_top
from dockd.status.web_data import open_state_ro
from tests.integration.test_status_data import build_dock


def _render(dock, width: int = 80, height: int = 24) -> str:
    console = Console(width=width, height=height, record=True, color_system=None,
                      file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the console
    with open_state_ro(dock.db) as st:
        console.print(frame(st, dock.cfg, height))
    console.file.close()
    return console.export_text()


def test_frame_fits_80x24_and_shows_everything(tmp_path):
    dock = build_dock(tmp_path / "w")
    text = _render(dock)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 24, text
    assert max(cell_len(line) for line in lines) <= 80, text
    assert "dock-01" in lines[0] and "ALARM" in lines[0] and "staging" in lines[0]
    for port in ("port-01", "port-02", "port-03", "port-04", "port-05"):
        assert port in text
    assert "63%" in text and "012345 张三" in text  # progress, officer
    assert "DONE - unplug" in text and "charging only" in text and "ERROR" in text
    assert "gap w/o spoken note" in text and "copy failed" in text
    assert "backlog 8 clip(s)" in text and "#2" in text  # forecast row for docking 2
    assert "primary: 1.9 MiB/s, 8 left" in text  # throughput per target
    assert "ALARM delivery_failed clip/7" in text and "WARNING deadline docking/2" in text


def test_many_ports_on_a_small_terminal_keep_to_the_screen(tmp_path):
    dock = build_dock(tmp_path / "w")
    text = _render(dock, 80, 14)
    assert len(text.rstrip("\n").splitlines()) <= 14, text
    assert "port-02" in text and "port-04" in text  # ports needing attention stay visible


def test_once_prints_one_frame_without_a_terminal(tmp_path):
    dock = build_dock(tmp_path / "w")
    console = Console(width=80, height=24, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    assert run_top(dock.cfg, console=console) == 0  # not a terminal -> one frame
    console.file.close()
    assert "port-01" in console.export_text()


def test_parser_registers_top():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_top_parser(sub, [])
    args = parser.parse_args(["top", "--once", "--interval", "2"])
    assert args.once and args.interval == 2.0 and callable(args.func)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (Debian: tmux)")
def test_live_dashboard_under_tmux_quits_on_q(tmp_path):
    build_dock(tmp_path / "w")
    sock = str(tmp_path / "tmux.sock")
    tmux = ["tmux", "-S", sock]
    cmd = (f"{sys.executable} -m dockd.cli top --workdir {tmp_path / 'w'}; "
           f"echo EXITED $? > {tmp_path / 'rc'}; sleep 30")
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "24", cmd], check=True,
                   env={"TERM": "xterm-256color", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    try:
        screen = ""
        for _ in range(100):
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True,
                                    text=True).stdout
            if "port-05" in screen:
                break
            time.sleep(0.1)
        assert "dockd top" in screen and "port-01" in screen and "63%" in screen, screen
        subprocess.run([*tmux, "send-keys", "q"], check=True)
        for _ in range(100):
            if (tmp_path / "rc").exists():
                break
            time.sleep(0.1)
        assert (tmp_path / "rc").read_text().split() == ["EXITED", "0"]
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
