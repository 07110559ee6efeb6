"""Offline verification of a delivered tree built with the real layout, manifest and target."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dockd.delivery.layout import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    clip_key,
    docking_prefix,
    key_path,
)
from dockd.delivery.local import LocalTarget
from dockd.integrity.keys import key_id, public_key_pem
from dockd.integrity.manifest import (
    ManifestClip,
    build_manifest,
    canonical_bytes,
    manifest_sha256,
    sign_manifest,
)
from dockd.integrity.verify import format_report, verify_path
from dockd.model import RecorderHealth, RecorderIdentity

KEY = Ed25519PrivateKey.from_private_bytes(b"k" * 32)
KID = key_id(KEY.public_key())
KEYS = {KID: KEY.public_key()}
REC = RecorderIdentity(serial="A1234567", officer_no="0012345", officer_name="张三",
                       unit_no="110100")


@dataclass
class Delivered:
    root: Path
    prefixes: list[str]
    manifests: list[bytes]


def _deliver(target: LocalTarget, n: int, prev: str | None, *, docking_id: int,
             clips: dict[str, bytes], dock: str = "dock-01", skip_prev: bool = False) -> tuple:
    docked = datetime(2024, 5, 1, 9, 0, tzinfo=UTC) + timedelta(hours=n)
    prefix = docking_prefix(REC, docked, dock, "port-01", docking_id)
    mclips = []
    for name, data in clips.items():
        sha = hashlib.sha256(data).hexdigest()
        target.put_bytes(data, clip_key(prefix, name))
        mclips.append(ManifestClip(name=name, original_path=f"DCIM/{name}", size=len(data),
                                   sha256=sha))
    m = build_manifest(dock_id=dock, port="port-01", docking_id=docking_id, docked_at=docked,
                       recorder=REC, health=RecorderHealth(), clips=mclips, findings=[],
                       prev_manifest_sha256=prev, key_id=KID, created_at=docked)
    body = canonical_bytes(m)
    target.put_bytes(public_key_pem(KEY), key_path(KID))
    target.put_bytes(body, f"{prefix}/{MANIFEST_NAME}")
    target.put_bytes(sign_manifest(body, KEY), f"{prefix}/{SIGNATURE_NAME}")
    return prefix, body


@pytest.fixture
def tree(tmp_path: Path) -> Delivered:
    root = tmp_path / "target"
    root.mkdir()
    t = LocalTarget("primary", root)
    p1, m1 = _deliver(t, 0, None, docking_id=1,
                      clips={"a_0001.mp4": b"first clip " * 100, "a_0002.mp4": b"second"})
    p2, m2 = _deliver(t, 1, manifest_sha256(m1), docking_id=2, clips={"a_0003.mp4": b"third"})
    return Delivered(root, [p1, p2], [m1, m2])


def _writable(p: Path) -> Path:
    p.chmod(0o644)
    return p


def _flip(p: Path, i: int = 0) -> None:
    data = bytearray(_writable(p).read_bytes())
    data[i] ^= 0x01
    p.write_bytes(bytes(data))


def test_clean_tree_passes(tree: Delivered) -> None:
    r = verify_path(tree.root, KEYS)
    assert r.ok, r.problems
    assert (r.manifests, r.files, r.problems, r.warnings) == (2, 3, [], [])
    assert format_report(r).startswith("OK: 2 manifest(s), 3 file(s) checked")


def test_published_keys_are_used_with_a_warning(tree: Delivered) -> None:
    r = verify_path(tree.root)
    assert r.ok, r.problems
    assert len(r.warnings) == 1
    assert KID in r.warnings[0] and "taken from the target itself" in r.warnings[0]


def test_flipped_clip_byte(tree: Delivered) -> None:
    clip = tree.root / tree.prefixes[0] / "a_0001.mp4"
    expected = hashlib.sha256(clip.read_bytes()).hexdigest()
    _flip(clip, 5)
    actual = hashlib.sha256(clip.read_bytes()).hexdigest()
    r = verify_path(tree.root, KEYS)
    assert not r.ok
    assert r.problems == [f"{tree.prefixes[0]}/a_0001.mp4: SHA-256 mismatch "
                          f"(manifest {expected[:4]}…, file {actual[:4]}…)"]
    assert "PROBLEM" in format_report(r) and format_report(r).startswith("FAILED")


def test_flipped_manifest_byte_fails_signature(tree: Delivered) -> None:
    _flip(tree.root / tree.prefixes[1] / MANIFEST_NAME, 40)
    r = verify_path(tree.root, KEYS)
    assert not r.ok
    assert r.problems[0].startswith(f"{tree.prefixes[1]}/{MANIFEST_NAME}: manifest hash mismatch")


def test_flipped_signature_byte_fails(tree: Delivered) -> None:
    sig = tree.root / tree.prefixes[0] / SIGNATURE_NAME
    i = sig.read_bytes().index(b'"signature":"') + 20
    _flip(sig, i)
    r = verify_path(tree.root, KEYS)
    assert [p.split(": ")[0] for p in r.problems] == [f"{tree.prefixes[0]}/{MANIFEST_NAME}"]
    assert "signature" in r.problems[0]


def test_deleted_clip_is_missing(tree: Delivered) -> None:
    (tree.root / tree.prefixes[1] / "a_0003.mp4").unlink()
    r = verify_path(tree.root, KEYS)
    assert r.problems == [f"{tree.prefixes[1]}/a_0003.mp4: missing"]


def test_truncated_clip_reports_size(tree: Delivered) -> None:
    clip = tree.root / tree.prefixes[0] / "a_0002.mp4"
    _writable(clip).write_bytes(b"secon")
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
    assert len(r.problems) == 2


def test_single_docking_dir_and_single_clip(tree: Delivered) -> None:
    d = tree.root / tree.prefixes[1]
    r = verify_path(d, KEYS)
    assert r.ok and r.manifests == 1 and r.files == 1
    assert len(r.warnings) == 1 and "is not under" in r.warnings[0]  # predecessor elsewhere

    clip = tree.root / tree.prefixes[0] / "a_0002.mp4"
    r = verify_path(clip, KEYS)
    assert r.ok and r.files == 1 and r.warnings == []
    _flip(tree.root / tree.prefixes[0] / "a_0001.mp4")  # other clips do not matter here
    assert verify_path(clip, KEYS).ok
    _flip(clip)
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


def test_unknown_key(tree: Delivered) -> None:
    other = Ed25519PrivateKey.from_private_bytes(b"o" * 32).public_key()
    r = verify_path(tree.root, {key_id(other): other})
    assert len(r.problems) == 2
    assert all(f"unknown key id {KID}" in p for p in r.problems)


def test_fork_in_chain_is_a_problem(tree: Delivered) -> None:
    t = LocalTarget("primary", tree.root)
    p3, _ = _deliver(t, 2, manifest_sha256(tree.manifests[0]), docking_id=3,
                     clips={"b.mp4": b"b"})
    r = verify_path(tree.root, KEYS)
    assert len(r.problems) == 1
    assert r.problems[0].startswith("dock dock-01: fork in the manifest chain:")
    assert tree.prefixes[1] in r.problems[0] and p3 in r.problems[0]


def test_missing_predecessor_is_a_warning(tree: Delivered) -> None:
    t = LocalTarget("primary", tree.root)
    _deliver(t, 3, "ab" * 32, docking_id=4, clips={"c.mp4": b"c"})
    r = verify_path(tree.root, KEYS)
    assert r.ok
    assert len(r.warnings) == 1 and "predecessor manifest abababababab… is not under" in r.warnings[0]


def test_predecessor_of_another_dock_is_a_problem(tree: Delivered) -> None:
    t = LocalTarget("primary", tree.root)
    _deliver(t, 4, manifest_sha256(tree.manifests[1]), docking_id=5, clips={"d.mp4": b"d"},
             dock="dock-02")
    r = verify_path(tree.root, KEYS)
    assert len(r.problems) == 1 and "is a manifest of dock dock-01, not dock-02" in r.problems[0]


def test_moved_docking_directory_is_warned(tree: Delivered) -> None:
    src = tree.root / tree.prefixes[1]
    dst = tree.root / "999" / "0012345" / "A1234567" / "2024-05-01" / src.name
    dst.parent.mkdir(parents=True)
    os.rename(src, dst)
    r = verify_path(tree.root, KEYS)
    assert r.ok
    assert r.warnings == [f"999/0012345/A1234567/2024-05-01/{src.name}: stored here, but its "
                          f"manifest belongs under {tree.prefixes[1]}"]


def test_nonexistent_path(tmp_path: Path) -> None:
    r = verify_path(tmp_path / "nope", KEYS)
    assert not r.ok and r.problems == [f"{tmp_path / 'nope'}: does not exist"]
