"""End to end: simulated recorders through ingest and the real daemon to a local target.

Covers the spine's acceptance: ingest/status/verify on a work directory, byte flips caught by
verify, kill -9 during copy and during delivery, a recorder removed mid-copy and re-docked,
a corrupt clip, hostile file names, and no clip delivered twice.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from dockd.config import for_workdir
from dockd.devices.simulator import plug, unplug
from dockd.store import State
from tests.conftest import garbage, run_dockd, wait_for

pytestmark = pytest.mark.slow

BIG = 48 * 1024 * 1024  # per recorder: enough that copying takes a measurable while


def target_files(target: Path) -> list[Path]:
    """Delivered clips: not the keys, revisions or audit trail (top-level ``_`` folders)."""
    return sorted(p for p in target.rglob("*") if p.is_file()
                  and not p.relative_to(target).parts[0].startswith("_")
                  and p.name not in ("manifest.json", "manifest.json.sig"))


def db(workdir: Path) -> State:
    return State(for_workdir(workdir).paths.database)


def test_ingest_status_verify_and_tamper(workdir, make_recorder):
    rec = make_recorder(segments=3, gaps={2: 60.0})
    r = run_dockd("ingest", str(rec), "--workdir", str(workdir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3/3 clip(s) delivered and verified" in r.stdout

    st = run_dockd("status", "--workdir", str(workdir), "--json")
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["clips_by_state"] == {"delivered": 3}
    assert data["backlog"]["clips"] == 0

    target = workdir / "target"
    ok = run_dockd("verify", str(target), "--workdir", str(workdir))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    clips = target_files(target)
    assert len(clips) == 3 and all(c.suffix == ".MP4" for c in clips)

    # one byte of a clip changed -> verify names the file and the mismatch
    victim = clips[1]
    os.chmod(victim, 0o644)
    data_b = bytearray(victim.read_bytes())
    data_b[len(data_b) // 2] ^= 0x01
    victim.write_bytes(bytes(data_b))
    bad = run_dockd("verify", str(target), "--workdir", str(workdir))
    assert bad.returncode == 1
    assert victim.name in bad.stdout and "SHA-256 mismatch" in bad.stdout
    data_b[len(data_b) // 2] ^= 0x01
    victim.write_bytes(bytes(data_b))
    assert run_dockd("verify", str(target), "--workdir", str(workdir)).returncode == 0

    # one byte of the manifest changed -> signature failure
    manifest = next(target.rglob("manifest.json"))
    os.chmod(manifest, 0o644)
    text = manifest.read_bytes()
    i = text.index(b'"size":') + 7
    manifest.write_bytes(text[:i] + bytes([text[i] ^ 0x01]) + text[i + 1:])
    bad = run_dockd("verify", str(target), "--workdir", str(workdir))
    assert bad.returncode == 1
    assert "signature" in bad.stdout.lower() or "manifest" in bad.stdout.lower()


def test_ingest_twice_does_not_copy_or_deliver_again(workdir, make_recorder):
    rec = make_recorder(segments=2)
    assert run_dockd("ingest", str(rec), "--workdir", str(workdir)).returncode == 0
    before = target_files(workdir / "target")
    again = run_dockd("ingest", str(rec), "--workdir", str(workdir), "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    res = json.loads(again.stdout)
    assert res["skipped_known"] == 2 and res["clips_total"] == 0
    assert target_files(workdir / "target") == before
    assert run_dockd("verify", str(workdir / "target"), "--workdir", str(workdir)).returncode == 0


def test_changed_file_with_same_name_is_copied_again_and_flagged(workdir, make_recorder):
    rec = make_recorder(segments=2)
    assert run_dockd("ingest", str(rec), "--workdir", str(workdir)).returncode == 0
    clip = sorted(rec.rglob("*.MP4"))[0]
    b = bytearray(clip.read_bytes())
    b[-1] ^= 0xFF
    clip.write_bytes(bytes(b))
    res = json.loads(run_dockd("ingest", str(rec), "--workdir", str(workdir), "--json").stdout)
    assert res["ok"] and res["clips_total"] == 1 and res["skipped_known"] == 1
    with db(workdir) as s:
        row = s.query_one("SELECT findings FROM clips WHERE docking_id = ?", (res["docking_id"],))
    assert "changed_since_copy" in row["findings"]


def test_corrupt_clip_is_kept_flagged_and_delivered(workdir, make_recorder):
    rec = make_recorder(segments=2)
    folder = next(p for p in rec.rglob("*") if p.is_dir() and list(p.glob("*.MP4")))
    bad = folder / "A1234567_012345_20261123101010_0099.MP4"
    bad.write_bytes(garbage(50_000))
    r = run_dockd("ingest", str(rec), "--workdir", str(workdir), "--json")
    res = json.loads(r.stdout)
    assert res["ok"], res
    assert res["clips_delivered"] == 3
    with db(workdir) as s:
        row = s.query_one("SELECT * FROM clips WHERE safe_name = ?", (bad.name,))
    assert row["state"] == "delivered"
    assert "probe_failed" in row["findings"]
    landed = [p for p in target_files(workdir / "target") if p.name == bad.name]
    assert len(landed) == 1 and landed[0].read_bytes() == bad.read_bytes()


def test_hostile_names_never_escape(workdir, make_recorder, tmp_path):
    rec = make_recorder(segments=1)
    folder = next(p for p in rec.rglob("*") if p.is_dir() and list(p.glob("*.MP4")))
    secret = tmp_path / "secret.MP4"
    secret.write_bytes(b"not for the dock")
    os.symlink(secret, folder / "link_20261123000000_0001.MP4")
    os.symlink("/etc", folder / "etcdir")
    odd = os.fsencode(folder) + b"/A1_0_20261123000001_\xff\x01.MP4"
    with open(odd, "wb") as fh:
        fh.write(b"\x00" * 1000)
    dotdot = folder / "..MP4"
    dotdot.write_bytes(b"\x00" * 10)
    r = run_dockd("ingest", str(rec), "--workdir", str(workdir), "--json")
    res = json.loads(r.stdout)
    assert res["ok"], res
    target = workdir / "target"
    everything = [p for p in workdir.rglob("*")]
    # nothing written outside the work dir's staging/target, and the symlinked file not copied
    assert not any(p.read_bytes() == b"not for the dock" for p in everything if p.is_file())
    for p in everything:
        assert workdir in p.resolve().parents or p.resolve() == workdir
    names = [p.name for p in target_files(target)]
    assert len(names) == 3  # the real clip, the odd-bytes file and ..MP4
    assert all(n.isprintable() and "/" not in n and n not in (".", "..") for n in names)
    with db(workdir) as s:
        findings = " ".join(r["findings"] for r in s.query("SELECT findings FROM dockings"))
        findings += " ".join(r["findings"] for r in s.query("SELECT findings FROM clips"))
    assert "symlink_skipped" in findings and "hostile_name" in findings
    assert run_dockd("verify", str(target), "--workdir", str(workdir)).returncode == 0


def _wait_state(workdir: Path, pred, what: str, timeout: float = 60):
    def check():
        try:
            with db(workdir) as s:
                return pred(s)
        except Exception:  # database not there yet / busy
            return False

    return wait_for(check, timeout, 0.02, what)


def _all_delivered(s: State, n: int) -> bool:
    rows = s.query("SELECT state FROM clips")
    return len(rows) >= n and all(r["state"] == "delivered" for r in rows) and bool(
        s.query("SELECT 1 FROM dockings WHERE state = 'delivered'"))


def _check_final(workdir: Path, n: int) -> None:
    target = workdir / "target"
    files = target_files(target)
    assert len(files) == n, [str(f) for f in files]
    assert not list(target.rglob("*.partial"))
    with db(workdir) as s:
        rows = s.query("SELECT * FROM clips")
        assert len(rows) == n and {r["state"] for r in rows} == {"delivered"}
        shas = {r["sha256"] for r in rows}
    import hashlib

    assert {hashlib.sha256(f.read_bytes()).hexdigest() for f in files} == shas
    r = run_dockd("verify", str(target), "--workdir", str(workdir))
    assert r.returncode == 0, r.stdout


def test_daemon_kill9_during_copy_then_restart(workdir, make_recorder, daemon_factory):
    cfg = for_workdir(workdir)
    run_dockd("keygen", "--workdir", str(workdir), check=True)
    rec = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "r1", segments=8,
                        target_size=BIG * 2)
    d = daemon_factory(workdir)
    plug(rec, cfg.paths.ports_dir, 1)
    _wait_state(workdir, lambda s: 0 < len(s.query(
        "SELECT 1 FROM clips WHERE state != 'discovered'")) < 8, "some clips copied")
    d.kill9()
    with db(workdir) as s:
        copied_before = {r["id"]: r["sha256"] for r in s.query(
            "SELECT id, sha256 FROM clips WHERE state != 'discovered'")}
    assert 0 < len(copied_before) < 8
    daemon_factory(workdir)
    _wait_state(workdir, lambda s: _all_delivered(s, 8), "all delivered after restart", 120)
    with db(workdir) as s:
        after = {r["id"]: r["sha256"] for r in s.query("SELECT id, sha256 FROM clips")}
        assert len(s.query("SELECT id FROM dockings")) == 1  # same docking resumed
    assert all(after[k] == v for k, v in copied_before.items())
    _check_final(workdir, 8)


def test_daemon_kill9_during_delivery_then_restart(workdir, make_recorder, daemon_factory):
    cfg = for_workdir(workdir)
    run_dockd("keygen", "--workdir", str(workdir), check=True)
    rec = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "r1", segments=10,
                        target_size=BIG * 3)
    d = daemon_factory(workdir)
    plug(rec, cfg.paths.ports_dir, 2)
    _wait_state(workdir, lambda s: s.query(
        "SELECT 1 FROM deliveries WHERE state = 'delivered'") and s.query(
        "SELECT 1 FROM deliveries WHERE state = 'pending'"), "delivery under way", 120)
    d.kill9()
    daemon_factory(workdir)
    _wait_state(workdir, lambda s: _all_delivered(s, 10), "all delivered after restart", 120)
    _check_final(workdir, 10)


def test_recorder_removed_mid_copy_then_redocked(workdir, make_recorder, daemon_factory,
                                                 tmp_path):
    cfg = for_workdir(workdir)
    run_dockd("keygen", "--workdir", str(workdir), check=True)
    rec = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "r1", segments=8,
                        target_size=BIG * 2)
    daemon_factory(workdir)
    plug(rec, cfg.paths.ports_dir, 1)
    _wait_state(workdir, lambda s: 0 < len(s.query(
        "SELECT 1 FROM clips WHERE state != 'discovered'")) < 8, "some clips copied")
    kept = workdir / "ports" / ".incoming" / "pulled"
    unplug(cfg.paths.ports_dir, 1, keep_to=kept)
    _wait_state(workdir, lambda s: s.query(
        "SELECT 1 FROM dockings WHERE state IN ('interrupted', 'signed', 'delivered')"),
        "docking closed after removal")
    with db(workdir) as s:
        first = s.query("SELECT * FROM dockings")[0]
        copied_first = s.query("SELECT id FROM clips WHERE docking_id = ? AND state != "
                               "'discovered'", (first["id"],))
    plug(kept, cfg.paths.ports_dir, 1)
    _wait_state(workdir, lambda s: _all_delivered(s, 8) and len(s.query(
        "SELECT 1 FROM dockings WHERE state = 'delivered'")) == 2, "re-docked and delivered",
        120)
    with db(workdir) as s:
        dockings = s.query("SELECT * FROM dockings ORDER BY id")
        clips = s.query("SELECT * FROM clips")
    assert len(dockings) == 2
    # the clips copied in the first docking were not copied again in the second
    assert sum(c["docking_id"] == dockings[1]["id"] for c in clips) == 8 - len(copied_first)
    # the deadline of every clip is the first docking's (R3 counts from the first return)
    assert {c["deadline_at"] for c in clips} == {first["deadline_at"]}
    _check_final(workdir, 8)


def test_demo_runs_end_to_end(tmp_path):
    w = tmp_path / "demo"
    r = run_dockd("demo", "--workdir", str(w), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last == f"Delivered to: {w / 'target'}"
    assert run_dockd("verify", str(w / "target"), "--workdir", str(w)).returncode == 0
    assert shutil.which("ffprobe")


def test_demo_on_a_terminal_uses_a_free_port_and_keeps_the_page_up(tmp_path):
    """web.port taken by someone else: the demo serves its own page on a free port, and on a
    terminal keeps it up after the run until the user presses Enter."""
    import pty
    import queue
    import re
    import socket
    import subprocess
    import threading
    import urllib.request

    from tests.conftest import dockd_cmd

    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    conf = tmp_path / "demo.toml"
    conf.write_text(f"[web]\nport = {taken}\n", encoding="utf-8")
    master, slave = pty.openpty()
    proc = subprocess.Popen(dockd_cmd("demo", "--workdir", str(tmp_path / "d"), "--config",
                                      str(conf)), stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    os.close(slave)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not any("press Enter to quit" in ln for ln in seen):
            seen.append(lines.get(timeout=300))
        url = re.search(r"(http://127\.0\.0\.1:(\d+))/", seen[-1])
        assert url and int(url.group(2)) != taken, seen[-5:]
        assert any("Delivered to:" in ln for ln in seen)
        time.sleep(1.0)  # still up after a while, not only at the last moment
        with urllib.request.urlopen(url.group(1) + "/api/ports", timeout=10) as resp:
            assert resp.status == 200 and b"port-01" in resp.read()
        os.write(master, b"\n")
        assert proc.wait(60) == 0
    finally:
        squatter.close()
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        proc.stdout.close()
