"""Issue 9 acceptance: forged and deleted evidence fail ``dockd verify``, run as a reviewer
would (from an unrelated directory, no dock configuration), with and without the genuine
dock's public key."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dockd.delivery.layout import KEYS_DIR
from dockd.integrity.keys import key_id
from tests.conftest import dockd_cmd
from tests.evidence import Dock, fixed_key, make_target


def reviewer_verify(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dockd verify`` as a reviewer runs it: from ``cwd``, no config, no work directory."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(dockd_cmd("verify", str(target), *args), cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _pub(dock: Dock, dest: Path) -> Path:
    from dockd.integrity.keys import public_key_pem

    dest.write_bytes(public_key_pem(dock.key))
    return dest


# --------------------------------------------------------------------------- the attack


@pytest.fixture(scope="module")
def two_docks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A genuine dock with three dockings and an attacker's dock (same dock id, same
    recorder serial) with one, both through the real ``dockd ingest``."""
    from dockd.config import Config
    from dockd.devices.simulator import RecorderSpec, simulate_recorder

    base = tmp_path_factory.mktemp("docks")
    c = Config()

    def recorder(name: str, seed: int) -> Path:
        spec = RecorderSpec(segments=1, segment_seconds=1.0, start=datetime(
            2026, 11, 1, 8, seed, tzinfo=c.tz))
        return simulate_recorder(base / name, spec, profile=c.profiles[0], tz=c.tz,
                                 tools=c.tools).root

    def ingest(workdir: Path, rec: Path) -> None:
        r = subprocess.run(dockd_cmd("ingest", str(rec), "--workdir", str(workdir)),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr

    for i in range(3):
        ingest(base / "genuine", recorder(f"rec-{i}", i))
    ingest(base / "attacker", recorder("forged", 1))
    return {"genuine": base / "genuine", "attacker": base / "attacker"}


def _dockings(target: Path) -> list[Path]:
    return sorted((p.parent for p in target.rglob("manifest.json")),
                  key=lambda d: d.name.rsplit("_", 1)[-1].zfill(6))


def test_forged_docking_with_planted_key_fails(two_docks: dict[str, Path],
                                               tmp_path: Path) -> None:
    target = tmp_path / "target"
    shutil.copytree(two_docks["genuine"] / "target", target)
    forged = _dockings(two_docks["attacker"] / "target")[0]
    genuine = _dockings(target)[1]
    # the insider replaces the genuine second docking by the forged one and plants the
    # attacker dock's public key and key record (claiming the same dock id)
    shutil.rmtree(genuine)
    shutil.copytree(forged, genuine.parent / forged.name)
    for f in (two_docks["attacker"] / "target" / KEYS_DIR).iterdir():
        shutil.copy(f, target / KEYS_DIR / f.name)
    from dockd.integrity.keys import load_public_key

    attacker_kid = key_id(load_public_key(two_docks["attacker"] / "keys" / "dock.pub"))
    elsewhere = tmp_path / "unrelated"

    r = reviewer_verify(target, elsewhere, "--pubkey",
                        str(two_docks["genuine"] / "keys" / "dock.pub"))
    assert r.returncode == 1, r.stdout
    assert r.stdout.startswith("FAILED")
    assert f"signed by {attacker_kid}, which is not a trusted key" in r.stdout
    assert "sequence number(s) 2 missing (deleted?)" in r.stdout

    r = reviewer_verify(target, elsewhere)
    assert r.returncode == 1, r.stdout
    assert r.stdout.startswith("UNTRUSTED")
    assert "no trusted key given" in r.stdout
    # even untrusted, the forgery shows: two first dockings of one dock and a hole
    assert "fork in the manifest chain" in r.stdout
    assert "sequence number(s) 2 missing" in r.stdout


def test_genuine_target_passes_only_with_the_genuine_key(two_docks: dict[str, Path],
                                                         tmp_path: Path) -> None:
    target = two_docks["genuine"] / "target"
    r = reviewer_verify(target, tmp_path, "--pubkey",
                        str(two_docks["genuine"] / "keys" / "dock.pub"))
    assert r.returncode == 0, r.stdout
    assert r.stdout.startswith("OK: 3 manifest(s)") and "newest checkpoint" in r.stdout
    r = reviewer_verify(target, tmp_path, "--pubkey",
                        str(two_docks["attacker"] / "keys" / "dock.pub"))
    assert r.returncode == 1 and "which is not a trusted key" in r.stdout


# --------------------------------------------------------------------------- deletion


@pytest.fixture
def history(tmp_path: Path) -> Dock:
    """Three dockings; the hourly checkpoints: one after each docking, the last one fresh."""
    dock = Dock(make_target(tmp_path / "target"), key=fixed_key(b"g"))
    now = datetime.now(UTC)
    for i, at in enumerate((now - timedelta(hours=5), now - timedelta(hours=3),
                            now - timedelta(minutes=5))):
        dock.dock({f"clip_{i}.mp4": f"clip {i}".encode() * 50})
        dock.checkpoint(at)
    return dock


def _both(dock: Dock, tmp_path: Path) -> list[subprocess.CompletedProcess[str]]:
    pub = _pub(dock, tmp_path / "genuine.pub")
    elsewhere = tmp_path / "unrelated"
    return [reviewer_verify(dock.root, elsewhere, "--pubkey", str(pub)),
            reviewer_verify(dock.root, elsewhere)]


def test_intact_history_passes(history: Dock, tmp_path: Path) -> None:
    with_key, without = _both(history, tmp_path)
    assert with_key.returncode == 0, with_key.stdout
    assert without.returncode == 1 and without.stdout.startswith("UNTRUSTED")


@pytest.mark.parametrize("which,expected", [
    (0, "sequence number(s) 1 missing"),
    (1, "sequence number(s) 2 missing"),
])
def test_deleted_first_or_middle_docking_fails(history: Dock, tmp_path: Path, which: int,
                                               expected: str) -> None:
    shutil.rmtree(history.root / history.prefixes[which])
    for r in _both(history, tmp_path):
        assert r.returncode == 1, r.stdout
        assert expected in r.stdout
        if which == 1:
            assert "(sequence number 2) is missing" in r.stdout  # docking 3's predecessor


def test_deleted_newest_docking_fails_by_its_checkpoint(history: Dock, tmp_path: Path) -> None:
    shutil.rmtree(history.root / history.prefixes[2])
    for r in _both(history, tmp_path):
        assert r.returncode == 1, r.stdout
        assert "names sequence number 3, but the newest docking on the target has 2" in r.stdout


def test_deleted_newest_docking_with_its_checkpoint_fails_by_age(history: Dock,
                                                                 tmp_path: Path) -> None:
    shutil.rmtree(history.root / history.prefixes[2])
    newest = max((history.root / "_checkpoints").rglob("*.json"))
    newest.unlink()
    for r in _both(history, tmp_path):
        assert r.returncode == 1, r.stdout
        assert "newest checkpoint" in r.stdout and "is 3.0 h old (limit 2.0 h)" in r.stdout
    # the age is what gives it away: with no limit only the age is reported
    pub = _pub(history, tmp_path / "g.pub")
    r = reviewer_verify(history.root, tmp_path / "u", "--pubkey", str(pub),
                        "--max-checkpoint-age", "0")
    assert r.returncode == 0 and "(sequence number 2) is 3.0 h old" in r.stdout


def test_all_checkpoints_deleted_fails(history: Dock, tmp_path: Path) -> None:
    shutil.rmtree(history.root / "_checkpoints")
    for r in _both(history, tmp_path):
        assert r.returncode == 1
        assert "no valid checkpoint on the target" in r.stdout


def test_symlinked_docking_folder_fails_from_the_cli(history: Dock, tmp_path: Path) -> None:
    d = history.root / history.prefixes[1]
    moved = tmp_path / "moved"
    d.rename(moved)
    d.symlink_to(moved, target_is_directory=True)
    for r in _both(history, tmp_path):
        assert r.returncode == 1 and "is a symlink" in r.stdout


# --------------------------------------------------------------------------- dock binding


def test_key_of_another_dock_cannot_sign_for_this_dock(tmp_path: Path) -> None:
    """Two docks of the fleet, both trusted: dock-02's key cannot pass a docking off as
    dock-01's, by --pubkey (bound by its key record) or by a trust file."""
    target = make_target(tmp_path / "target")
    d1 = Dock(target, dock_id="dock-01", key=fixed_key(b"1"))
    d1.dock({"a.mp4": b"a"})
    d1.checkpoint()
    d2 = Dock(target, dock_id="dock-02", key=fixed_key(b"2"))
    d2.dock({"b.mp4": b"b"})
    d2.checkpoint()
    # dock-02's key signs a docking that claims to be dock-01's (a second key record for
    # that key cannot even be stored: the target refuses to replace one)
    liar = Dock(target, dock_id="dock-01", key=d2.key, record=False)
    liar.seq, liar.head, liar.docking_id = d1.seq, d1.head, 10
    liar.dock({"c.mp4": b"c"})
    pubs = [_pub(d, tmp_path / f"{d.dock_id}.pub") for d in (d1, d2)]
    r = reviewer_verify(target.root, tmp_path / "u", "--pubkey", str(pubs[0]), "--pubkey",
                        str(pubs[1]))
    assert r.returncode == 1
    assert f"claims dock dock-01 but is signed by {d2.kid}, a key of dock dock-02" in r.stdout
    trust = tmp_path / "trust.txt"
    trust.write_text(f"# fleet\ndock-01 {d1.kid}\ndock-02 {d2.kid}\n")
    r = reviewer_verify(target.root, tmp_path / "u", "--trust", str(trust))
    assert r.returncode == 1
    assert f"claims dock dock-01 but is signed by {d2.kid}, a key of dock dock-02" in r.stdout
    # without the lie, the same trust file passes both docks
    shutil.rmtree(target.root / liar.prefixes[0])
    r = reviewer_verify(target.root, tmp_path / "u", "--trust", str(trust))
    assert r.returncode == 0, r.stdout
