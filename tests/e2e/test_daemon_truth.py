"""What officers and IT see stays true, with the real daemon (``dockd run``) and the directory
source: a recorder pulled mid-copy, restarts with recorders still docked, SIGTERM during copy
and during upload, a backlog that must not starve the watchdog, and a target that is briefly
unusable (issue #12 defects 1, 3, 4, 5, 6; issue #10 defect 5)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from dockd.devices.simulator import plug, unplug
from dockd.status.metrics import metrics_response
from dockd.status.web_data import fleet_data, kiosk_ports, open_state_ro
from tests.conftest import wait_for
from tests.truthkit import Dockd, db_query, load_cfg, run_cli, wait_db, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BIG = 48 * 1024 * 1024


def _setup(workdir: Path, extra: str = ""):
    config = write_config(workdir, extra)
    cfg = load_cfg(workdir, config)
    assert run_cli("keygen", "--config", str(config), "--workdir", str(workdir)).returncode == 0
    return config, cfg


def _cli_json(config: Path, workdir: Path, *args: str):
    r = run_cli(*args, "--json", "--config", str(config), "--workdir", str(workdir))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _port(workdir: Path, port: str) -> dict:
    return db_query(workdir, "SELECT * FROM ports WHERE port = ?", (port,))[0]


def _some_copied(n: int):
    return lambda s: 0 < len(s.query("SELECT 1 FROM clips WHERE state != 'discovered'")) < n


def _all_delivered(n: int, dockings: int):
    def pred(s):
        clips = s.query("SELECT state FROM clips")
        return (len(clips) == n and {c["state"] for c in clips} == {"delivered"}
                and len(s.query("SELECT 1 FROM dockings WHERE state = 'delivered'")) == dockings
                and not s.query("SELECT 1 FROM manifest_deliveries WHERE state != 'delivered'"))
    return pred


def test_unplug_mid_copy_says_plug_it_back_in(workdir, make_recorder, tmp_path):
    config, cfg = _setup(workdir)
    rec = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "r1", segments=8,
                        target_size=BIG * 2)
    d = Dockd(workdir, config, tmp_path / "daemon.log").start()
    try:
        plug(rec, cfg.paths.ports_dir, 1)
        wait_db(workdir, _some_copied(8), "some clips copied")
        kept = workdir / "ports" / ".incoming" / "pulled"
        unplug(cfg.paths.ports_dir, 1, keep_to=kept)
        # the partial docking is signed and delivered; the port must still say "plug it back in"
        wait_db(workdir, lambda s: s.query("SELECT 1 FROM dockings WHERE state = 'delivered'"),
                "partial docking delivered")
        first = db_query(workdir, "SELECT * FROM dockings")[0]
        port = _port(workdir, "port-01")
        assert port["state"] == "incomplete", port
        assert port["docking_id"] == first["id"] and port["serial"] == "A1234567"

        status = _cli_json(config, workdir, "status")
        p1 = next(p for p in status["ports"] if p["port"] == "port-01")
        assert p1["state"] == "incomplete" and "plug it back in" in p1["label"]
        assert [(i["docking_id"], i["serial"]) for i in status["incomplete"]] == [
            (first["id"], "A1234567")]
        assert status["incomplete"][0]["uncopied"] > 0
        text = run_cli("status", "--config", str(config), "--workdir", str(workdir)).stdout
        assert "INCOMPLETE" in text

        report = _cli_json(config, workdir, "report")
        rd = next(x for x in report["dockings"] if x["docking_id"] == first["id"])
        assert rd["incomplete"] and rd["incomplete"]["open"]
        assert rd["incomplete"]["uncopied"] == status["incomplete"][0]["uncopied"]

        with open_state_ro(cfg.paths.database) as ro:
            tile = next(p for p in kiosk_ports(ro, cfg) if p["port"] == "port-01")
            fleet = fleet_data(ro, cfg, ro.clock())
        assert tile["display"] == "incomplete" and tile["attention"]
        assert [x["code"] for x in tile["problems"]] == ["copy_incomplete"]
        rec_row = next(r for r in fleet["recorders"] if r["serial"] == "A1234567")
        assert rec_row["incomplete_dockings"] == [first["id"]]
        body, _ = metrics_response(lambda: open_state_ro(cfg.paths.database), cfg,
                                   lambda: first_clock())
        assert b"dockd_dockings_incomplete 1.0" in body

        # plugged back in: the rest is copied, the tile leaves "incomplete" for good
        plug(kept, cfg.paths.ports_dir, 1)
        wait_db(workdir, _all_delivered(8, 2), "re-docked and delivered", 120)
        wait_for(lambda: _port(workdir, "port-01")["message"] == "delivered and verified",
                 30, 0.1, "tile updated")
        assert _port(workdir, "port-01")["state"] == "done"
        assert _cli_json(config, workdir, "status")["incomplete"] == []
        report = _cli_json(config, workdir, "report")
        rd = next(x for x in report["dockings"] if x["docking_id"] == first["id"])
        assert rd["incomplete"]["open"] is False and rd["incomplete"]["resolved_by"] > first["id"]
        body, _ = metrics_response(lambda: open_state_ro(cfg.paths.database), cfg,
                                   lambda: first_clock())
        assert b"dockd_dockings_incomplete 0.0" in body
        assert d.stop() == 0
    finally:
        d.ensure_dead()


def first_clock():
    from dockd.store import utcnow

    return utcnow()


def test_sigterm_mid_copy_is_a_stop_not_an_unplug(workdir, make_recorder, tmp_path):
    config, cfg = _setup(workdir)
    rec = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "r1", segments=8,
                        target_size=BIG * 2)
    d = Dockd(workdir, config, tmp_path / "daemon.log").start()
    try:
        plug(rec, cfg.paths.ports_dir, 1)
        wait_db(workdir, _some_copied(8), "some clips copied")
        assert d.stop() == 0
        dockings = db_query(workdir, "SELECT * FROM dockings")
        assert [x["state"] for x in dockings] == ["offloading"]  # a stop is not an unplug
        assert db_query(workdir, "SELECT * FROM manifests") == []
        assert _port(workdir, "port-01")["state"] != "incomplete"
        d.start()
        wait_db(workdir, _all_delivered(8, 1), "resumed and delivered", 120)
        manifests = db_query(workdir, "SELECT manifest FROM manifests")
        assert len(manifests) == 1
        doc = json.loads(bytes(manifests[0]["manifest"]))
        assert doc["extra"]["interrupted"] is False and doc["extra"]["not_copied"] == []
        assert len(doc["clips"]) == 8
        assert d.stop() == 0
    finally:
        d.ensure_dead()


def test_sigterm_during_upload_stops_promptly_and_resumes(workdir, make_recorder, tmp_path):
    slow = ('[[targets]]\nname = "primary"\nkind = "local"\npath = "/unused"\n'
            'bandwidth_limit = "64 KiB/s"\nmax_concurrency = 2\n')
    config, cfg = _setup(workdir, slow)
    rec = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "r1", segments=2,
                        target_size=3 * 1024 * 1024)
    d = Dockd(workdir, config, tmp_path / "daemon.log").start()
    try:
        plug(rec, cfg.paths.ports_dir, 1)
        wait_db(workdir, lambda s: s.query("SELECT 1 FROM dockings WHERE state = 'signed'"),
                "signed, uploading")
        wait_for(lambda: list((workdir / "target").rglob("*.partial")), 30, 0.1,
                 "an upload under way")
        assert d.proc is not None
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(25) == 0  # well inside TimeoutStopSec
        stopped_in = time.monotonic() - started
        text = d.text()
        assert "Traceback" not in text and "closed database" not in text, text[-3000:]
        assert "dockd stopped" in text
        rows = db_query(workdir, "SELECT state, attempts FROM deliveries")
        assert {r["state"] for r in rows} <= {"pending", "delivered"}
        assert "pending" in {r["state"] for r in rows}
        time.sleep(1.0)  # nothing keeps running after the process is gone
        assert not list((workdir / "target").rglob("*.MP4"))
        # restart without the cap: everything lands, nothing half-written stays
        write_config(workdir, "")
        d.start()
        wait_db(workdir, _all_delivered(2, 1), "delivered after restart", 120)
        # the checkpoint that follows a manifest may still be in flight: it ends whole
        wait_for(lambda: not list((workdir / "target").rglob("*.partial")), 10, 0.05,
                 "no half-written file on the target")
        assert run_cli("verify", str(workdir / "target"), "--workdir",
                       str(workdir)).returncode == 0
        assert d.stop() == 0
        assert stopped_in < 25
    finally:
        d.ensure_dead()


def test_restart_resumes_the_same_dockings(workdir, make_recorder, tmp_path):
    config, cfg = _setup(workdir, "[notes]\nenabled = false\n")
    a = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "a", segments=3,
                      gaps={2: 60.0}, serial="A0000001")
    b = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "b", segments=2,
                      serial="B0000002")
    d = Dockd(workdir, config, tmp_path / "daemon.log").start()
    try:
        plug(a, cfg.paths.ports_dir, 1)
        plug(b, cfg.paths.ports_dir, 2)
        wait_db(workdir, _all_delivered(5, 2), "both delivered")

        def tiles():
            with open_state_ro(cfg.paths.database) as ro:
                return {p["port"]: p for p in kiosk_ports(ro, cfg)}

        before = tiles()
        assert before["port-01"]["attention"] and before["port-01"]["display"] == "done"
        assert not before["port-02"]["attention"]
        manifests_on_target = sorted((workdir / "target").rglob("manifest.json"))
        assert len(manifests_on_target) == 2
        for _ in range(2):
            assert d.stop() == 0
            d.start()
            for port, serial in (("port-01", "A0000001"), ("port-02", "B0000002")):
                wait_for(lambda port=port, serial=serial: f"port {port} serial {serial}: "
                         "resuming docking" in d.text()
                         or f"port {port} serial {serial}: docking" in d.text()
                         and "signed" in d.text(), 60, 0.1, f"{port} handled after restart")
            wait_db(workdir, lambda s: not s.query(
                "SELECT 1 FROM deliveries WHERE state != 'delivered' UNION ALL "
                "SELECT 1 FROM manifest_deliveries WHERE state != 'delivered'"), "settled")
            assert len(db_query(workdir, "SELECT id FROM dockings")) == 2
            assert len(db_query(workdir, "SELECT id FROM manifests")) == 2
            assert sorted((workdir / "target").rglob("manifest.json")) == manifests_on_target
            after = tiles()
            for port in ("port-01", "port-02"):
                assert after[port]["docking_id"] == before[port]["docking_id"]
                assert after[port]["display"] == "done"
                assert after[port]["delivered"] == before[port]["delivered"]
                assert after[port]["problems"] == before[port]["problems"]
            assert after["port-01"]["attention"]  # the gap without a note stays red
        assert d.stop() == 0
    finally:
        d.ensure_dead()


def _blocking_tool(path: Path, real: str, flag: Path) -> str:
    path.write_text(f"#!/bin/sh\nwhile [ ! -e '{flag}' ]; do sleep 0.1; done\n"
                    f"exec {real} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def test_ready_and_watchdog_while_the_backlog_is_slow(workdir, make_recorder, tmp_path):
    flag = tmp_path / "tools-may-run"
    tools = (f'[tools]\nexiftool = "{_blocking_tool(tmp_path / "exiftool", "exiftool", flag)}"'
             f'\nffprobe = "{_blocking_tool(tmp_path / "ffprobe", "ffprobe", flag)}"\n')
    config, cfg = _setup(workdir, tools)
    # built with the real tools (cfg's are the blocking wrappers)
    r1 = make_recorder(dest=workdir / "ports" / ".incoming" / "r1", segments=2,
                       serial="C0000001")
    r2 = make_recorder(dest=workdir / "ports" / ".incoming" / "r2", segments=8,
                       target_size=BIG * 2, serial="C0000002")
    log = tmp_path / "daemon.log"
    d = Dockd(workdir, config, log).start()
    try:
        plug(r1, cfg.paths.ports_dir, 1)
        wait_db(workdir, lambda s: s.query("SELECT 1 FROM dockings WHERE serial = 'C0000001' "
                                           "AND state = 'offloaded'"), "r1 copied, probing")
        plug(r2, cfg.paths.ports_dir, 2)
        wait_db(workdir, lambda s: 0 < len(s.query(
            "SELECT 1 FROM clips WHERE serial = 'C0000002' AND state != 'discovered'")) < 8,
            "r2 partly copied")
        d.kill9()
    finally:
        d.ensure_dead()
    unplug(cfg.paths.ports_dir, 1)
    unplug(cfg.paths.ports_dir, 2)

    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.5)
    env = {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}
    os.environ.pop("WATCHDOG_PID", None)
    d = Dockd(workdir, config, log, env=env).start(wait_ready=False)
    messages: list[str] = []

    def receive_until(pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
            if pred():
                return True
        return False

    try:
        # the backlog (probing both dockings) cannot run yet: READY=1 and the pings go on
        assert receive_until(lambda: any(m.startswith("READY=1") for m in messages), 30), \
            messages
        n = len(messages)
        assert receive_until(lambda: messages[n:].count("WATCHDOG=1") >= 5, 15), messages
        assert not db_query(workdir, "SELECT 1 FROM manifests")  # still blocked
        flag.touch()
        wait_db(workdir, lambda s: len(s.query(
            "SELECT 1 FROM dockings WHERE state = 'delivered'")) == 2, "backlog delivered", 120)
        assert d.stop() == 0
    finally:
        d.ensure_dead()
        sock.close()


def test_target_not_a_directory_is_retried_and_the_alarm_clears(workdir, make_recorder,
                                                                 tmp_path):
    config, cfg = _setup(workdir, "[delivery]\nretry_seconds = 0.5\n")
    target = workdir / "target"
    target.mkdir(exist_ok=True)  # fine at start-up (`dockd run` refuses a target that is a file)
    rec = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "r1", segments=2)
    d = Dockd(workdir, config, tmp_path / "daemon.log").start()
    try:
        # ... and then the share goes wrong while the daemon runs
        # (the daemon may be writing its key files there right now: try until it is a file)
        def broken() -> bool:
            try:
                if target.is_dir():
                    shutil.rmtree(target)
                if not target.exists():
                    target.write_text("not a directory: the share is not mounted right\n")
            except OSError:
                return False
            return target.is_file()
        wait_for(broken, 30, 0.1, "the target replaced by a file")
        plug(rec, cfg.paths.ports_dir, 1)
        wait_db(workdir, lambda s: len(s.query(
            "SELECT 1 FROM deliveries WHERE attempts >= 2")) == 2, "retried with backoff")
        rows = db_query(workdir, "SELECT * FROM deliveries")
        assert {r["state"] for r in rows} == {"pending"}
        assert all("Not a directory" in r["last_error"] for r in rows)
        alarms = db_query(workdir, "SELECT * FROM alerts WHERE resolved_at IS NULL")
        assert [(a["level"], a["subject"]) for a in alarms] == [("alarm", "target/primary")]
        assert _port(workdir, "port-01")["message"] != "delivered and verified"
        target.unlink()
        target.mkdir()
        wait_db(workdir, _all_delivered(2, 1), "delivered once the target is fixed", 120)
        assert db_query(workdir, "SELECT * FROM alerts WHERE resolved_at IS NULL") == []
        wait_for(lambda: _port(workdir, "port-01")["message"] == "delivered and verified",
                 30, 0.1, "tile says delivered")
        assert d.stop() == 0
    finally:
        d.ensure_dead()


def test_stop_while_a_slow_recorder_is_read_is_not_an_unplug(workdir, make_recorder,
                                                              monkeypatch):
    """#10 defect 5 deterministically: a recorder slow to answer (USB 2.0, a busy card) is
    still being read when dockd stops. The stop must not be recorded as a removal: no
    partial manifest, the docking resumes after the restart."""
    import dataclasses
    import threading

    import dockd.stages.offload as pipeline_mod  # the copy stage calls copy_clip
    from dockd.config import for_workdir
    from dockd.daemon import Daemon
    from dockd.integrity.keys import generate_key
    from dockd.store import State

    cfg = for_workdir(workdir)
    cfg = dataclasses.replace(cfg, offload=dataclasses.replace(cfg.offload, settle_seconds=0.3),
                              web=dataclasses.replace(cfg.web, enabled=False))
    generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
    rec = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "r1", segments=4)
    real_copy = pipeline_mod.copy_clip
    opened = threading.Event()

    def slow_copy(*args, **kw):
        opened.set()
        time.sleep(2.0)  # the device takes a while to answer the first read
        return real_copy(*args, **kw)

    monkeypatch.setattr(pipeline_mod, "copy_clip", slow_copy)
    state = State(cfg.paths.database)
    daemon = Daemon(cfg, state=state, install_signals=False)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert daemon.ready.wait(30)
        plug(rec, cfg.paths.ports_dir, 1)
        assert opened.wait(30)
        daemon.request_stop()
        thread.join(60)
        assert not thread.is_alive()
        dockings = state.query("SELECT state, error FROM dockings")
        assert [d["state"] for d in dockings] == ["offloading"], dockings
        assert state.query("SELECT 1 FROM manifests") == []
        assert state.query("SELECT 1 FROM audit WHERE action = 'undocked'") == []
    finally:
        daemon.request_stop()
        thread.join(60)
        state.close()


def test_redocked_while_the_partial_docking_is_still_checked(workdir, make_recorder, tmp_path):
    """Plugged back in while the part copied before the unplug is still being checked: the
    new docking starts once that work is done (the Docked event is not lost)."""
    flag = tmp_path / "tools-may-run"
    tools = (f'[tools]\nexiftool = "{_blocking_tool(tmp_path / "exiftool", "exiftool", flag)}"'
             f'\nffprobe = "{_blocking_tool(tmp_path / "ffprobe", "ffprobe", flag)}"\n')
    config, cfg = _setup(workdir, tools)
    rec = make_recorder(dest=workdir / "ports" / ".incoming" / "r1", segments=8,
                        target_size=BIG * 2)
    d = Dockd(workdir, config, tmp_path / "daemon.log").start()
    try:
        plug(rec, cfg.paths.ports_dir, 1)
        wait_db(workdir, _some_copied(8), "some clips copied")
        kept = workdir / "ports" / ".incoming" / "pulled"
        unplug(cfg.paths.ports_dir, 1, keep_to=kept)
        wait_db(workdir, lambda s: s.query("SELECT 1 FROM dockings WHERE state = 'interrupted'"),
                "partial docking closed, being checked")
        plug(kept, cfg.paths.ports_dir, 1)
        wait_for(lambda: d.text().count("recorder tree appeared") >= 2, 30, 0.1, "re-docked")
        time.sleep(1.0)
        flag.touch()
        wait_db(workdir, _all_delivered(8, 2), "re-docked and delivered", 120)
        assert d.stop() == 0
    finally:
        d.ensure_dead()
