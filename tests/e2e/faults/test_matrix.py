"""Issue #10's fault matrix, in process: every pipeline state × every fault, then recovery,
then the invariants (see ``harness``). ``kill9`` here is a crash at the hook point (a
``BaseException`` nothing catches, then a fresh process on the same files); the real
daemon is killed with SIGKILL / SIGTERM in ``test_daemon_signals``."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import FAULTS, STATES, Dock, check_invariants

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("at", STATES)
def test_fault_then_recovery_keeps_every_invariant(at, fault, tmp_path: Path, template, prober,
                                                   monkeypatch):
    dock = Dock(tmp_path / "w", template, prober, fault, at)
    dock.install(monkeypatch)
    dock.run()
    assert dock.fired, f"the pipeline never reached {at}"
    problems = check_invariants(dock)
    assert problems == [], "\n".join(problems)
    if fault in ("target_wrong_bytes", "target_lying_checksum") and dock.corrupted:
        # a copy that landed wrong was caught by verification, never marked delivered
        assert (tmp_path / "w" / "offsite" / "_quarantine").exists()
