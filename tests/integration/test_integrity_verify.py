"""Offline verification of a delivered tree built with the real layout, manifest, key
records, checkpoints and local target."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockd.delivery.layout import MANIFEST_NAME, SIGNATURE_NAME
from dockd.integrity.keys import key_id
from dockd.integrity.verify import format_report, verify_path
from tests.evidence import Dock, fixed_key, flip, make_target, writable

KEY = fixed_key(b"k")
KID = key_id(KEY.public_key())
KEYS = {KID: KEY.public_key()}


@dataclass
class Delivered:
    dock: Dock
    root: Path
    prefixes: list[str]
    manifests: list[bytes]


@pytest.fixture
def tree(tmp_path: Path) -> Delivered:
    dock = Dock(make_target(tmp_path / "target"), key=KEY)
    dock.dock({"a_0001.mp4": b"first clip " * 100, "a_0002.mp4": b"second"})
    dock.dock({"a_0003.mp4": b"third"})
    dock.checkpoint()
    return Delivered(dock, dock.root, dock.prefixes, dock.manifests)


def test_clean_tree_passes(tree: Delivered) -> None:
    r = verify_path(tree.root, KEYS)
    assert r.ok, r.problems
    assert (r.manifests, r.files, r.problems, r.warnings) == (2, 3, [], [])
    assert format_report(r).startswith("OK: 2 manifest(s), 3 file(s) checked")
    assert any("newest checkpoint" in i and "sequence number 2" in i for i in r.info)
    assert any("no trusted timestamps" in i for i in r.info)


def test_published_keys_alone_are_untrusted(tree: Delivered) -> None:
    r = verify_path(tree.root)
    assert not r.ok and not r.trusted
    assert r.problems[0].startswith("UNTRUSTED: no trusted key given") and KID in r.problems[0]
    assert format_report(r).startswith("UNTRUSTED")


def test_flipped_clip_byte(tree: Delivered) -> None:
    clip = tree.root / tree.prefixes[0] / "a_0001.mp4"
    expected = hashlib.sha256(clip.read_bytes()).hexdigest()
    flip(clip, 5)
    actual = hashlib.sha256(clip.read_bytes()).hexdigest()
    r = verify_path(tree.root, KEYS)
    assert not r.ok
    assert r.problems == [f"{tree.prefixes[0]}/a_0001.mp4: SHA-256 mismatch "
                          f"(manifest {expected[:4]}…, file {actual[:4]}…)"]
    assert "PROBLEM" in format_report(r) and format_report(r).startswith("FAILED")


def test_flipped_manifest_byte_fails_signature(tree: Delivered) -> None:
    flip(tree.root / tree.prefixes[1] / MANIFEST_NAME, 40)
    r = verify_path(tree.root, KEYS)
    assert not r.ok
    assert any(p.startswith(f"{tree.prefixes[1]}/{MANIFEST_NAME}: manifest hash mismatch")
               for p in r.problems)


def test_flipped_signature_byte_fails(tree: Delivered) -> None:
    sig = tree.root / tree.prefixes[0] / SIGNATURE_NAME
    i = sig.read_bytes().index(b'"signature":"') + 20
    flip(sig, i)
    r = verify_path(tree.root, KEYS)
    assert r.problems[0].startswith(f"{tree.prefixes[0]}/{SIGNATURE_NAME}: bad signature")


def test_deleted_clip_is_missing(tree: Delivered) -> None:
    (tree.root / tree.prefixes[1] / "a_0003.mp4").unlink()
    r = verify_path(tree.root, KEYS)
    assert r.problems == [f"{tree.prefixes[1]}/a_0003.mp4: missing"]


def test_truncated_clip_reports_size(tree: Delivered) -> None:
    clip = tree.root / tree.prefixes[0] / "a_0002.mp4"
    writable(clip).write_bytes(b"secon")
    r = verify_path(tree.root, KEYS)
    assert r.problems == [f"{tree.prefixes[0]}/a_0002.mp4: size 5 != manifest 6"]


def test_extra_file_and_stray_partial(tree: Delivered) -> None:
    d = tree.root / tree.prefixes[0]
    (d / "inserted.mp4").write_bytes(b"forged")
    (d / "a_0009.mp4.partial").write_bytes(b"half")
    r = verify_path(tree.root, KEYS)
    assert r.problems == [f"{tree.prefixes[0]}/inserted.mp4: not in manifest"]
    assert r.warnings == [f"{tree.prefixes[0]}/a_0009.mp4.partial: stray partial upload"]


def test_missing_signature_and_missing_manifest(tree: Delivered) -> None:
    (tree.root / tree.prefixes[0] / SIGNATURE_NAME).unlink()
    (tree.root / tree.prefixes[1] / MANIFEST_NAME).unlink()
    r = verify_path(tree.root, KEYS)
    assert f"{tree.prefixes[0]}/{SIGNATURE_NAME}: missing" in r.problems
    assert f"{tree.prefixes[1]}: 2 file(s) but no {MANIFEST_NAME}" in r.problems
    # neither docking stands in the chain now: the checkpoint says two are missing
    assert any("docking(s) 1-2 missing" in p for p in r.problems)


def test_single_docking_dir_and_single_clip(tree: Delivered) -> None:
    d = tree.root / tree.prefixes[1]
    r = verify_path(d, KEYS)
    assert r.ok and r.manifests == 1 and r.files == 1
    assert len(r.warnings) == 1 and "is missing under" in r.warnings[0]  # predecessor elsewhere

    clip = tree.root / tree.prefixes[0] / "a_0002.mp4"
    r = verify_path(clip, KEYS)
    assert r.ok and r.files == 1 and r.warnings == []
    flip(tree.root / tree.prefixes[0] / "a_0001.mp4")  # other clips do not matter here
    assert verify_path(clip, KEYS).ok
    flip(clip)
    r = verify_path(clip, KEYS)
    assert r.problems[0].startswith(f"{tree.prefixes[0]}/a_0002.mp4: SHA-256 mismatch")
    stray = tree.root / tree.prefixes[0] / "stray.mp4"
    stray.write_bytes(b"x")
    assert verify_path(stray, KEYS).problems == [f"{tree.prefixes[0]}/stray.mp4: not in manifest"]


def test_single_clip_without_manifest(tmp_path: Path) -> None:
    f = tmp_path / "x.mp4"
    f.write_bytes(b"x")
    r = verify_path(f, KEYS)
    assert not r.ok and r.problems[-1] == f"{f}: no {MANIFEST_NAME} beside it"


def test_untrusted_key(tree: Delivered) -> None:
    other = fixed_key(b"o").public_key()
    r = verify_path(tree.root, {key_id(other): other})
    signed = [p for p in r.problems if f"signed by {KID}, which is not a trusted key" in p]
    assert len(signed) == 3  # two manifests and the checkpoint
    assert not r.ok


def test_fork_in_chain_is_a_problem(tree: Delivered) -> None:
    tree.dock.seq, tree.dock.head = 1, hashlib.sha256(tree.manifests[0]).hexdigest()
    p3 = tree.dock.dock({"b.mp4": b"b"})
    r = verify_path(tree.root, KEYS)
    fork = [p for p in r.problems if p.startswith("dock dock-01: fork in the manifest chain:")]
    assert len(fork) == 1 and tree.prefixes[1] in fork[0] and p3 in fork[0]


def test_missing_predecessor_is_a_problem(tree: Delivered) -> None:
    tree.dock.seq, tree.dock.head = 3, "ab" * 32
    tree.dock.dock({"c.mp4": b"c"})
    r = verify_path(tree.root, KEYS)
    assert not r.ok
    assert any("predecessor manifest abababababab… (sequence number 3) is missing" in p
               for p in r.problems)
    assert "dock dock-01: docking(s) with sequence number(s) 3 missing (deleted?) from the " \
           "target" in r.problems


def test_predecessor_of_another_dock_is_a_problem(tree: Delivered) -> None:
    other = Dock(tree.dock.target, dock_id="dock-02", key=fixed_key(b"2"))
    other.seq, other.head = 2, hashlib.sha256(tree.manifests[1]).hexdigest()
    other.dock({"d.mp4": b"d"})
    keys = {**KEYS, other.kid: other.key.public_key()}
    r = verify_path(tree.root, keys)
    assert any("is a manifest of dock dock-01, not dock-02" in p for p in r.problems)


def test_moved_docking_directory_is_warned(tree: Delivered) -> None:
    src = tree.root / tree.prefixes[1]
    dst = tree.root / "999" / "0012345" / "A1234567" / "2024-05-01" / src.name
    dst.parent.mkdir(parents=True)
    os.rename(src, dst)
    r = verify_path(tree.root, KEYS)
    assert r.ok
    assert r.warnings == [f"999/0012345/A1234567/2024-05-01/{src.name}: stored here, but its "
                          f"manifest belongs under {tree.prefixes[1]}"]


def test_symlinked_docking_folder_is_a_problem(tree: Delivered, tmp_path: Path) -> None:
    src = tree.root / tree.prefixes[1]
    elsewhere = tmp_path / "elsewhere"
    os.rename(src, elsewhere)
    src.symlink_to(elsewhere, target_is_directory=True)
    r = verify_path(tree.root, KEYS)
    assert not r.ok
    assert f"{tree.prefixes[1]}: is a symlink (not followed; a docking folder must be a real " \
           "directory)" in r.problems
    assert any("docking(s) 2 missing" in p for p in r.problems)


def test_unreadable_docking_folder_is_a_problem(tree: Delivered) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every directory")
    d = tree.root / tree.prefixes[1]
    d.chmod(0)
    try:
        r = verify_path(tree.root, KEYS)
    finally:
        d.chmod(0o755)
    assert not r.ok and any("cannot list" in p for p in r.problems)


def test_nonexistent_path(tmp_path: Path) -> None:
    r = verify_path(tmp_path / "nope", KEYS)
    assert not r.ok and r.problems == [f"{tmp_path / 'nope'}: does not exist"]


def test_manifests_from_before_sequence_numbers_are_warned_not_failed(tmp_path: Path) -> None:
    """An upgraded dock: its first manifests have no ``seq`` (older format); the migration
    numbered them, so the chain continues at 3 and only real holes fail."""
    import json

    from dockd.delivery.layout import MANIFEST_NAME, SIGNATURE_NAME
    from dockd.integrity.manifest import canonical_bytes, sign_manifest

    dock = Dock(make_target(tmp_path / "target"), key=KEY)
    for _ in range(3):
        dock.dock({f"c{dock.seq}.mp4": b"x" * (dock.seq + 1)})
    head = None
    for prefix in dock.prefixes[:2]:  # rewrite the first two as the old code wrote them
        d = dock.root / prefix
        m = json.loads((d / MANIFEST_NAME).read_bytes())
        del m["seq"]
        m["prev_manifest_sha256"] = head
        body = canonical_bytes(m)
        for name, data in ((MANIFEST_NAME, body), (SIGNATURE_NAME, sign_manifest(body, KEY))):
            writable(d / name).write_bytes(data)
        head = hashlib.sha256(body).hexdigest()
    d = dock.root / dock.prefixes[2]
    m = json.loads((d / MANIFEST_NAME).read_bytes())
    m["prev_manifest_sha256"] = head
    body = canonical_bytes(m)
    for name, data in ((MANIFEST_NAME, body), (SIGNATURE_NAME, sign_manifest(body, KEY))):
        writable(d / name).write_bytes(data)
    dock.head = hashlib.sha256(body).hexdigest()
    dock.checkpoint()
    r = verify_path(dock.root, KEYS)
    assert r.ok, r.problems
    assert sum("from before sequence numbers" in w for w in r.warnings) == 2


@pytest.mark.timeout(60)
def test_fifo_in_place_of_a_manifest_is_a_problem_not_a_hang(tree: Delivered) -> None:
    m = tree.root / tree.prefixes[1] / MANIFEST_NAME
    m.unlink()
    os.mkfifo(m)
    r = verify_path(tree.root, KEYS)
    assert not r.ok
    assert any(p.startswith(f"{tree.prefixes[1]}/{MANIFEST_NAME}: cannot read") and
               "not a regular file" in p for p in r.problems), r.problems
    assert any("docking(s) 2 missing" in p for p in r.problems)
