"""A dock's keys as a signed history: rotation with ``dockd keygen --force``, delivered to
the targets, verified with only the first key trusted; key records resist tampering."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dockd.errors import VerifyError
from dockd.integrity.keyhistory import (
    TrustedKey,
    check_rotation,
    expand_trust,
    make_record,
    parse_record,
)
from dockd.integrity.keys import key_id, load_public_key
from dockd.integrity.verify import verify_path
from tests.conftest import dockd_cmd, run_dockd
from tests.evidence import Dock, fixed_key, make_target

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_keygen_twice_names_the_force_flag(workdir: Path) -> None:
    assert run_dockd("keygen", "--workdir", str(workdir)).returncode == 0
    again = run_dockd("keygen", "--workdir", str(workdir))
    assert again.returncode == 1
    assert "dockd keygen --force" in again.stderr and "pass overwrite" not in again.stderr


def test_rotation_through_the_cli_verifies_with_only_the_first_key(
        workdir: Path, make_recorder, tmp_path: Path) -> None:
    """ingest, keygen --force, ingest, keygen --force, ingest: a reviewer holding only the
    first public key verifies all three dockings (and rejects a key outside the history)."""
    first_pub = tmp_path / "first.pub"
    kids = []
    for i in range(3):
        if i:
            r = run_dockd("keygen", "--force", "--workdir", str(workdir))
            assert r.returncode == 0 and "rotated to signing key" in r.stdout, r.stderr
        rec = make_recorder(segments=1, serial=f"A000000{i}")
        r = run_dockd("ingest", str(rec), "--workdir", str(workdir))
        assert r.returncode == 0, r.stdout + r.stderr
        kids.append(key_id(load_public_key(workdir / "keys" / "dock.pub")))
        if i == 0:
            shutil.copy(workdir / "keys" / "dock.pub", first_pub)
    assert len(set(kids)) == 3
    target = workdir / "target"
    r = subprocess.run(dockd_cmd("verify", str(target), "--pubkey", str(first_pub)),
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout
    assert r.stdout.startswith("OK: 3 manifest(s)")
    assert f"trusted key {kids[2]} (dock dock-01): rotation from {kids[1]}" in r.stdout
    from dockd.store import State

    with State(workdir / "state" / "dockd.db") as st:
        rotated = st.query("SELECT detail FROM audit WHERE action = 'key_rotated'")
    assert len(rotated) == 2 and kids[2] in rotated[1]["detail"]
    # the on-dock case uses the current key and its history the same way
    assert run_dockd("verify", str(target), "--workdir", str(workdir)).returncode == 0
    # a reviewer who holds only the newest key verifies the older manifests too
    newest = tmp_path / "newest.pub"
    shutil.copy(workdir / "keys" / "dock.pub", newest)
    r = subprocess.run(dockd_cmd("verify", str(target), "--pubkey", str(newest)),
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout


def test_two_rotations_verified_with_the_first_key(tmp_path: Path) -> None:
    k1, k2, k3 = fixed_key(b"1"), fixed_key(b"2"), fixed_key(b"3")
    dock = Dock(make_target(tmp_path / "t"), key=k1)
    dock.dock({"a.mp4": b"a"})
    dock.rotate(k2)
    dock.dock({"b.mp4": b"b"})
    dock.rotate(k3)
    dock.dock({"c.mp4": b"c"})
    dock.checkpoint()
    r = verify_path(dock.root, {key_id(k1.public_key()): k1.public_key()})
    assert r.ok, r.problems
    assert r.manifests == 3
    # the rotation record of k3 removed: the last docking is no longer vouched for
    (dock.root / "_keys" / (key_id(k3.public_key()).replace(":", "_") + ".rec")).unlink()
    r = verify_path(dock.root, {key_id(k1.public_key()): k1.public_key()})
    assert not r.ok
    assert any(f"signed by {key_id(k3.public_key())}, which is not a trusted key" in p
               for p in r.problems)


def test_rotation_record_must_be_signed_by_the_previous_key() -> None:
    k1, k2, forger = fixed_key(b"1"), fixed_key(b"2"), fixed_key(b"f")
    good = parse_record(make_record("dock-01", k2, NOW, k1))
    check_rotation(good, k1.public_key())
    # a record naming k1 as predecessor but signed by someone else
    forged = make_record("dock-01", k2, NOW, forger).replace(
        key_id(forger.public_key()).encode(), key_id(k1.public_key()).encode())
    with pytest.raises(VerifyError):
        parse_record(forged)  # the self-signature covers prev_key_id too
    problems: list[str] = []
    trusted = expand_trust({key_id(k1.public_key()): TrustedKey(k1.public_key(), None, "given")},
                           [parse_record(make_record("dock-01", k1, NOW)),
                            parse_record(make_record("dock-01", fixed_key(b"x"), NOW, forger))],
                           problems)
    assert set(trusted) == {key_id(k1.public_key())} and problems == []
    assert trusted[key_id(k1.public_key())].dock == "dock-01"


def test_every_single_byte_change_of_a_key_record_is_detected() -> None:
    data = make_record("dock-01", fixed_key(b"2"), NOW, fixed_key(b"1"))
    prev = fixed_key(b"1").public_key()
    for i in range(len(data)):
        b = bytearray(data)
        b[i] ^= 0x01
        with pytest.raises(VerifyError):
            rec = parse_record(bytes(b))
            check_rotation(rec, prev)
            if rec.dock != "dock-01" or rec.prev_key_id != key_id(prev):
                raise VerifyError("changed meaning")


def test_ingest_without_key_stops_with_the_keygen_command(tmp_path: Path, make_recorder) -> None:
    cfg = tmp_path / "dock.toml"
    w = tmp_path / "w"
    cfg.write_text(f"""
[paths]
state_dir = "{w}/state"
staging_dir = "{w}/staging"
ports_dir = "{w}/ports"
key_file = "{w}/keys/dock.key"
public_key_file = "{w}/keys/dock.pub"

[[targets]]
name = "primary"
kind = "local"
path = "{w}/target"
""")
    rec = make_recorder(segments=1)
    r = run_dockd("ingest", str(rec), "--config", str(cfg))
    assert r.returncode == 1
    assert "dockd keygen" in r.stderr and "no signing key" in r.stderr
    assert not (w / "keys").exists() and not (w / "target").exists()
    r = run_dockd("ingest", str(rec), "--config", str(cfg), "--create-key")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (w / "keys" / "dock.key").exists()
