"""``dockd ingest`` tells what it is doing: per clip and overall bytes, rate and ETA (a rich
bar on a terminal, plain lines otherwise, on stderr) and, at the end, what the scan found."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import threading

from dockd.ingest.progress import IngestProgress
from tests.conftest import dockd_cmd, run_dockd


def _recorder_with_a_link(make_recorder):
    rec = make_recorder(segments=3, target_size=3 * 1024 * 1024)
    os.symlink("/etc/passwd", rec / "DCIM" / "escape.MP4")
    return rec


def test_plain_progress_lines_and_scan_findings(workdir, make_recorder):
    rec = _recorder_with_a_link(make_recorder)
    r = run_dockd("ingest", str(rec), "--workdir", str(workdir))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "copied" in ln and "] copied" in ln]
    assert len(lines) == 3, r.stderr
    for ln in lines:
        assert re.search(r"\[\d/3\] copied \S+\.MP4: [\d.]+ (KiB|MiB) in [\d.]+ s "
                         r"\([\d.]+ \S+/s\); overall .+ ETA ", ln), ln
    assert lines[-1].endswith("ETA 0m00s"), lines[-1]
    assert "\x1b[" not in r.stderr  # no terminal codes into a pipe
    assert "scan findings" in r.stdout and "escape.MP4 -> /etc/passwd not followed" in r.stdout


def test_rich_progress_bar_on_a_terminal(workdir, make_recorder):
    rec = _recorder_with_a_link(make_recorder)
    master, slave = pty.openpty()
    proc = subprocess.Popen(dockd_cmd("ingest", str(rec), "--workdir", str(workdir)),
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(10)
    os.close(master)
    assert proc.returncode == 0, out
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "━" in screen  # the bar
    assert "all 3 clip(s)" in screen and "[3/3]" in screen
    assert re.search(r"\d+(\.\d+)? ?[KM]i?B/s", screen), screen[-2000:]
    assert "INFO dockd" not in screen  # the log does not scroll the bar away
    assert "scan findings" in out


def test_plain_lines_during_a_long_clip():
    class Stream:
        def __init__(self) -> None:
            self.text = ""

        def write(self, s: str) -> int:
            self.text += s
            return len(s)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    now = [0.0]
    s = Stream()
    with IngestProgress(s, clock=lambda: now[0]) as p:
        p("begin", clips_total=2, bytes_total=2000, clips_done=0, bytes_done=0)
        p("clip", name="A.MP4", size=1000)
        now[0] = 5.0
        p("advance", name="A.MP4", done=100)  # too soon for a line
        now[0] = 20.0
        p("advance", name="A.MP4", done=500)
        p("copied", name="A.MP4", size=1000)
    lines = s.text.splitlines()
    assert lines[0] == "copying 2 clip(s), 2.0 KiB"
    assert lines[1].startswith("  A.MP4: 50% of 1000 B; overall 500 B/2.0 KiB at 25 B/s")
    assert "ETA 1m00s" in lines[1]
    assert lines[2].startswith("[1/2] copied A.MP4: 1000 B in 20.0 s (50 B/s)")
    assert len(lines) == 3
