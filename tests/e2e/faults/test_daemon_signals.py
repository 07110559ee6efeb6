"""The real daemon (``dockd run``, a subprocess) killed with SIGKILL or stopped with SIGTERM
while it copies, delivers (bandwidth-capped, so delivery takes a while) and clears, then
started again: every invariant of the fault matrix holds at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from dockd.config import load
from dockd.devices.simulator import plug
from dockd.store import State
from tests.conftest import dockd_cmd, run_dockd, wait_for

from .harness import invariants, sha

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CONFIG = """
[web]
port = 0
[offload]
settle_seconds = 0.2
min_free = "0"
[delivery]
retry_seconds = 1
[[targets]]
name = "primary"
kind = "local"
path = "{w}/target"
bandwidth_limit = "6 MB/s"
[[profiles]]
name = "zfy-generic"
clear_policy = "after_delivery"
"""

MOMENTS = {
    # the first moment the database shows, polled every 20 ms
    "copying": "SELECT 1 FROM clips WHERE state != 'discovered' AND EXISTS (SELECT 1 FROM "
               "clips WHERE state = 'discovered')",
    "delivering": "SELECT 1 FROM deliveries WHERE state = 'delivered' AND EXISTS (SELECT 1 "
                  "FROM deliveries WHERE state = 'pending')",
    "clearing": "SELECT 1 FROM clips WHERE state IN ('delivered', 'cleared')",
}


class Daemon:
    def __init__(self, workdir: Path, config: Path, log: Path):
        self.workdir, self.config, self.log = workdir, config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                dockd_cmd("run", "--config", str(self.config), "--workdir", str(self.workdir)),
                stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.parametrize("moment", list(MOMENTS))
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "sigterm"])
def test_daemon_signal_then_restart_keeps_every_invariant(sig, moment, tmp_path, make_recorder):
    w = tmp_path / "w"
    w.mkdir()
    config = tmp_path / "dockd.toml"
    config.write_text(CONFIG.format(w=w))
    cfg = load(config, workdir=w)
    run_dockd("keygen", "--config", str(config), "--workdir", str(w), check=True)
    rec = make_recorder(cfg, dest=w / "ports" / ".incoming" / "r1", segments=4,
                        target_size=12 * 1024 * 1024)
    originals = Counter(sha(p) for p in rec.rglob("*.MP4"))

    def db_says(sql: str) -> bool:
        try:
            with State(cfg.paths.database) as st:
                return bool(st.query(sql))
        except Exception:  # not created yet / busy
            return False

    log = tmp_path / "daemon.log"
    first = Daemon(w, config, log).start()
    second = Daemon(w, config, log)
    try:
        plugged = plug(rec, cfg.paths.ports_dir, 1)
        wait_for(lambda: db_says(MOMENTS[moment]), 90, 0.02, f"the daemon {moment}")
        first.signal(sig)
        second.start()
        def done() -> bool:
            return db_says("SELECT 1 FROM clips") and not db_says(
                "SELECT 1 FROM clips WHERE state != 'cleared'") and not db_says(
                "SELECT 1 FROM dockings WHERE state != 'delivered'")

        for _ in range(2):  # and still so once the restarted daemon saw the port again
            wait_for(lambda: "ready" in log.read_text(errors="replace").split("stop")[-1]
                     and done(), 120, 0.1, "everything delivered and cleared after restart")
            time.sleep(1.5)
        wait_for(done, 60, 0.1, "settled")
        second.signal(signal.SIGTERM)
    finally:
        first.close()
        second.close()
    problems = invariants(cfg, originals, plugged)
    assert problems == [], "\n".join(problems) + "\n" + log.read_text()[-3000:]
