"""The soak (``bench/soak.py``) in short: one minute of random dockings, duplicate serials,
changing clips, recorders pulled out, daemon kill -9 / SIGTERM and an off-site SFTP target
down or erroring, then a drain; nothing lost, duplicated or erased too early, both targets
verify. (The 20-minute figures are in the README, "Guarantees".)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_one_minute_soak_keeps_every_invariant(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "1", "--ports", "6",
         "--serials", "4", "--fault-every", "8", "--seed", "7", "--workdir",
         str(tmp_path / "soak"), "--json"],
        capture_output=True, text=True, timeout=540, cwd=ROOT)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    detail = json.dumps(res, indent=1) + proc.stderr[-2000:]
    assert res["dockings"] >= 5 and res["faults_injected"] >= 4, detail
    assert res["clips_lost"] == 0 and res["duplicates"] == 0, detail
    assert res["premature_erasures"] == 0 and res["deadline_misses"] == 0, detail
    assert res["drained"] and res["still_on_recorders_after_drain"] == 0, detail
    assert all(res["targets_verify"].values()) and res["audit_chain_ok"], detail
    assert res["fds_peak"] < 200, detail  # a leak would grow with every docking
    assert proc.returncode == 0 and res["ok"], detail
