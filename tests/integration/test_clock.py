"""Clocks (R10): the dock's NTP state, the time-set file, and setting a recorder's clock only
after all its clips are copied — recorded in the audit trail."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dockd.config import Config, HealthConfig, ProfileConfig
from dockd.daemon import build_pipeline
from dockd.devices import clock, health
from dockd.ingest.probe import Prober
from dockd.store import State, parse_iso
from tests.e2e.test_health_hooks import pin_ntp, sim, with_profile

SHANGHAI = ZoneInfo("Asia/Shanghai")


def fake_runner(stdout: str = "", rc: int = 0, stderr: str = "",
                exc: Exception | None = None) -> Any:
    calls: list[list[str]] = []

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if exc is not None:
            raise exc
        return subprocess.CompletedProcess(cmd, rc, stdout, stderr)

    run.calls = calls  # type: ignore[attr-defined]
    return run


def synced(tmp_path: Path, runner: Any, *, which: bool = True, marker: bool = False,
           adj: int | None | Exception = None) -> tuple[bool | None, str]:
    path = tmp_path / "synchronized"
    if marker:
        path.touch()
    else:
        path.unlink(missing_ok=True)

    def adjtimex() -> int | None:
        if isinstance(adj, Exception):
            raise adj
        return adj

    return clock.dock_clock_synced(runner=runner,
                                   which=lambda n: f"/usr/bin/{n}" if which else None,
                                   marker=path, adjtimex=adjtimex)


# --------------------------------------------------------------------------- the dock's clock


def test_timedatectl_yes_and_no(tmp_path: Path) -> None:
    run = fake_runner("yes\n")
    assert synced(tmp_path, run) == (True, "timedatectl: NTPSynchronized=yes")
    assert run.calls == [["/usr/bin/timedatectl", "show", "-p", "NTPSynchronized", "--value"]]
    ok, detail = synced(tmp_path, fake_runner("no\n"), adj=0)
    assert ok is False and "NTPSynchronized=no" in detail


def test_without_systemd_falls_back_to_timesyncd_marker_then_kernel(tmp_path: Path) -> None:
    down = fake_runner("", rc=1, stderr="System has not been booted with systemd")
    assert synced(tmp_path, down, marker=True)[0] is True
    ok, detail = synced(tmp_path, down, adj=5)
    assert ok is False and "TIME_ERROR" in detail
    assert synced(tmp_path, down, adj=0)[0] is True
    assert synced(tmp_path, fake_runner(exc=subprocess.TimeoutExpired("t", 5)), adj=1)[0] is True
    assert synced(tmp_path, fake_runner(exc=FileNotFoundError("t")), which=True, adj=0)[0]


def test_unknown_never_fails(tmp_path: Path) -> None:
    ok, detail = synced(tmp_path, fake_runner("maybe"), which=False, adj=OSError("no libc"))
    assert ok is None and "cannot tell" in detail
    assert synced(tmp_path, fake_runner(), which=False, adj=None)[0] is None


def test_real_system_answers_without_raising() -> None:
    ok, detail = clock.dock_clock_synced()
    assert ok in (True, False, None) and detail


def test_dock_clock_doc_warns_when_required(caplog: pytest.LogCaptureFixture) -> None:
    doc = clock.dock_clock_doc(HealthConfig(), lambda: (False, "kernel: no"))
    assert doc == {"ntp_synced": False, "detail": "kernel: no", "required": True}
    assert "not NTP-synchronised" in caplog.text


# --------------------------------------------------------------------------- time-set file


def test_set_recorder_clock_writes_local_time_atomically(tmp_path: Path) -> None:
    profile = ProfileConfig(timeset_file="TIMESET.TXT")
    (tmp_path / "TIMESET.TXT").write_text("2000-01-01 00:00:00\n")
    now = datetime(2026, 11, 23, 1, 2, 3, 900000, tzinfo=UTC)
    out = clock.set_recorder_clock(tmp_path, profile, SHANGHAI, now)
    assert (tmp_path / "TIMESET.TXT").read_bytes() == b"2026-11-23 09:02:03\n"
    assert out == {"file": "TIMESET.TXT", "time_local": "2026-11-23 09:02:03",
                   "tz": "Asia/Shanghai", "time_utc": "2026-11-23T01:02:03+00:00"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TIMESET.TXT"]  # no temp left


@pytest.mark.parametrize("name", ["", "../x.txt", "a/b.txt", ".."])
def test_set_recorder_clock_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(clock.ClockSetError):
        clock.set_recorder_clock(tmp_path, ProfileConfig(timeset_file=name), SHANGHAI,
                                 datetime.now(UTC))


def test_set_recorder_clock_refuses_symlink_and_gone_root(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("keep")
    (tmp_path / "T.TXT").symlink_to(tmp_path / "elsewhere")
    profile = ProfileConfig(timeset_file="T.TXT")
    with pytest.raises(clock.ClockSetError, match="not a regular file"):
        clock.set_recorder_clock(tmp_path, profile, SHANGHAI, datetime.now(UTC))
    assert (tmp_path / "elsewhere").read_text() == "keep"
    with pytest.raises(clock.ClockSetError, match="gone"):
        clock.set_recorder_clock(tmp_path / "nope", profile, SHANGHAI, datetime.now(UTC))
    with pytest.raises(ValueError):
        clock.timeset_text(datetime(2026, 1, 1), SHANGHAI)


def test_unwritable_temp_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "T.TXT.partial").mkdir()  # the temp name cannot be opened for writing
    with pytest.raises(clock.ClockSetError, match="cannot write"):
        clock.set_recorder_clock(tmp_path, ProfileConfig(timeset_file="T.TXT"), SHANGHAI,
                                 datetime.now(UTC))
    assert not (tmp_path / "T.TXT").exists()


def test_needs_setting() -> None:
    assert not clock.needs_setting(None)
    assert not clock.needs_setting(-1.0)
    assert clock.needs_setting(1.5) and clock.needs_setting(-86400)


# --------------------------------------------------------------------------- through the pipeline


def _dock(cfg: Config, root: Path) -> tuple[State, Any, Any]:
    state = State(cfg.paths.database)
    prober = Prober(cfg.tools)
    return state, prober, build_pipeline(cfg, state, prober)


def test_day_off_recorder_flagged_then_corrected_after_copy(
        cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_ntp(monkeypatch)
    cfg = with_profile(cfg, timeset_file="TIMESET.TXT")
    root = sim(cfg, tmp_path / "rec", segments=3, clock_offset_s=86400)
    timeset = root / "TIMESET.TXT"
    state, prober, pipe = _dock(cfg, root)
    try:
        docking_id, known = pipe.begin_docking("p1", root)
        # flagged at docking, before anything is written to the recorder
        row = state.query_one("SELECT * FROM recorder_health WHERE docking_id = ?",
                              (docking_id,))
        assert row is not None and row["clock_offset_s"] == 86400
        v = health.fitness(health.sample_from_row(row), [], cfg.health, state.clock(), None)
        assert not v.fit and v.reasons == ["clock off by +86400 s"]
        assert not timeset.exists()
        out = pipe.offload(docking_id, root, known)
        assert out.copied == 3
        clips = state.clips_of(docking_id)
        assert {c["state"] for c in clips} == {"copied"}
        # written after every clip was copied
        assert timeset.exists()
        audit = state.query("SELECT * FROM audit WHERE action = 'clock_set'")
        assert len(audit) == 1 and audit[0]["subject"] == f"docking/{docking_id}"
        detail = json.loads(audit[0]["detail"])
        assert detail["old_offset_s"] == 86400 and detail["serial"] == "A1234567"
        set_at = parse_iso(audit[0]["ts"])
        assert set_at is not None
        assert all(parse_iso(c["copied_at"]) <= set_at for c in clips)  # type: ignore[operator]
        staged_mtimes = [Path(c["staged_path"]).stat().st_mtime for c in clips]
        assert timeset.stat().st_mtime >= max(staged_mtimes)
        # content: the dock's local time at the moment of writing, one line
        text = timeset.read_text()
        assert text == detail["new_time_local"] + "\n"
        written = datetime.strptime(text.strip(), clock.TIMESET_FORMAT).replace(tzinfo=cfg.tz)
        assert abs(written - datetime.now(UTC)) < timedelta(minutes=1)
        assert abs(written - set_at) < timedelta(seconds=1)
        # idempotent: a resumed offload does not set it twice
        pipe.offload(docking_id, root, [])
        assert len(state.query("SELECT 1 FROM audit WHERE action = 'clock_set'")) == 1
        assert state.verify_audit_chain() == []
        pipe.finish(docking_id)
        manifest = json.loads(state.query_one("SELECT manifest FROM manifests WHERE "
                                              "docking_id = ?", (docking_id,))["manifest"])
        assert manifest["health"]["clock_offset_s"] == 86400
        extra = manifest["extra"]  # the signed manifest carries the clock facts (R10)
        assert extra["dock_clock"]["ntp_synced"] is True
        assert extra["recorder_clock_set"]["new_time_local"] == text.strip()
    finally:
        prober.close()
        state.close()


def test_clock_not_set_while_clips_remain_uncopied(
        cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_ntp(monkeypatch)
    cfg = with_profile(cfg, timeset_file="TIMESET.TXT")
    root = sim(cfg, tmp_path / "rec", segments=2, clock_offset_s=3600)
    state, prober, pipe = _dock(cfg, root)
    try:
        docking_id, _ = pipe.begin_docking("p1", root)
        assert clock.set_clock_after_offload(state, cfg, docking_id, root,
                                             cfg.profiles[0]) is None
        assert not (root / "TIMESET.TXT").exists()
        assert state.query("SELECT 1 FROM audit WHERE action LIKE 'clock_set%'") == []
    finally:
        prober.close()
        state.close()


@pytest.mark.parametrize("case", ["no_file", "disabled", "small_offset", "ntp_unsynced",
                                  "write_fails"])
def test_clock_set_guards(cfg: Config, tmp_path: Path, case: str) -> None:
    """The decision alone, on a docking row whose clips are all copied (none discovered)."""
    offset = 0.8 if case == "small_offset" else 86400.0
    cfg = with_profile(cfg, timeset_file="" if case == "no_file" else "TIMESET.TXT")
    if case == "disabled":
        cfg = dataclasses.replace(cfg, health=dataclasses.replace(cfg.health, set_clock=False))
    root = tmp_path / "rec"
    root.mkdir()
    if case == "write_fails":
        (root / "TIMESET.TXT").mkdir()
    with State(cfg.paths.database) as state:
        with state.tx() as conn:
            conn.execute("INSERT INTO recorders (serial) VALUES ('S1')")
            conn.execute("INSERT INTO dockings (serial, port, state, docked_at, clock_offset_s) "
                         "VALUES ('S1', 'p1', 'offloaded', ?, ?)", (state.now(), offset))
        answer = (False, "no") if case == "ntp_unsynced" else (True, "yes")
        out = clock.set_clock_after_offload(state, cfg, 1, root, cfg.profiles[0],
                                            synced_fn=lambda: answer)
        assert out is None
        assert not (root / "TIMESET.TXT").is_file()
        actions = [r["action"] for r in state.query("SELECT action FROM audit")]
    assert actions == (["clock_set_failed"] if case == "write_fails" else [])


def test_writable_window_wraps_the_write(cfg: Config, tmp_path: Path) -> None:
    cfg = with_profile(cfg, timeset_file="TIMESET.TXT")
    root = tmp_path / "rec"
    root.mkdir()
    events: list[str] = []

    class Window:
        def __enter__(self) -> None:
            events.append("rw")

        def __exit__(self, *exc: object) -> None:
            events.append("ro:" + str((root / "TIMESET.TXT").exists()))

    with State(cfg.paths.database) as state:
        with state.tx() as conn:
            conn.execute("INSERT INTO recorders (serial) VALUES ('S1')")
            conn.execute("INSERT INTO dockings (serial, port, state, docked_at, clock_offset_s) "
                         "VALUES ('S1', 'p1', 'offloaded', ?, -7200)", (state.now(),))
        out = clock.set_clock_after_offload(state, cfg, 1, root, cfg.profiles[0],
                                            writable=Window, synced_fn=lambda: (None, "?"))
    assert out is not None and out["old_offset_s"] == -7200 and out["dock_ntp_synced"] is None
    assert events == ["rw", "ro:True"]
