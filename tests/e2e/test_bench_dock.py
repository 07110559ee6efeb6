"""bench/dock.py end to end at toy size, so the many-ports harness cannot silently rot: the
real daemon (through the bench's paced launcher), two recorders plugged at once, a local
and an SFTP target (OpenSSH on 127.0.0.1), every recorder reported delivered with its
figures. No timing is asserted (figures are for bench/RESULTS.md, not for tests)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sshd import SSHD

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Path(SSHD).exists() or shutil.which("dd") is None,
                    reason="needs OpenSSH server and dd")
def test_dock_bench_reports_every_recorder_delivered(tmp_path: Path) -> None:
    out = tmp_path / "dock.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "dock.py"), "--ports", "2", "--clips", "2",
         "--recorder-size", "2MiB", "--rate", "35MB/s", "--target", "both",
         "--workdir", str(tmp_path / "w"), "--timeout", "240", "--json", str(out),
         "--keep"],
        capture_output=True, text=True, timeout=420, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["rate"] == "35MB/s"
    [run] = report["results"]
    assert run["n"] == 2 and run["target"] == "both" and run["ok"] is True
    ports = run["ports"]
    assert sorted(p["port"] for p in ports) == ["port-01", "port-02"]
    assert len({p["serial"] for p in ports}) == 2
    for p in ports:
        assert p["state"] == "delivered"
        assert p["clips"] == 2 and p["clips_delivered"] == 2
        assert p["bytes"] == 2 * 1024 * 1024
        assert 0 < p["copy_s"] <= p["dock_to_delivered_s"]
    assert run["bytes"] == 4 * 1024 * 1024
    assert run["floor_s"] > 0 and run["aggregate_copy_mb_s"] > 0
    assert run["peak_rss_mb"] > 0 and run["open_files_max"] >= run["open_files_idle"] > 0
    assert "port-01" in proc.stdout and "port-02" in proc.stdout
    # delivered means on both targets: every clip and each docking's signed manifest
    work = tmp_path / "w" / "n02-both"
    for root in (work / "target", work / "sshd" / "store"):
        clips = sorted(root.rglob("*.MP4"))
        assert len(clips) == 4 and all(c.stat().st_size > 0 for c in clips), root
        assert len(list(root.rglob("manifest.json.sig"))) == 2, root
