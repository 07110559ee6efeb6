"""The dock's Ed25519 key: permissions, refusal to overwrite, loading, key id."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dockd.errors import SigningError
from dockd.integrity import keys


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def test_generate_writes_0600_private_and_0644_public(tmp_path: Path) -> None:
    kf, pf = tmp_path / "keys" / "dock.key", tmp_path / "keys" / "dock.pub"
    old = os.umask(0o022)
    try:
        kid = keys.generate_key(kf, pf)
    finally:
        os.umask(old)
    assert _mode(kf) == 0o600
    assert _mode(pf) == 0o644
    assert _mode(kf.parent) == 0o700
    assert kf.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pf.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert re.fullmatch(r"ed25519:[0-9a-f]{32}", kid)
    assert not [p for p in kf.parent.iterdir() if p.name.endswith(".tmp")]


def test_private_key_never_readable_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        keys.generate_key(tmp_path / "dock.key", tmp_path / "dock.pub")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "dock.key") == 0o600


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    kf, pf = tmp_path / "dock.key", tmp_path / "dock.pub"
    first = keys.generate_key(kf, pf)
    before = kf.read_bytes()
    with pytest.raises(SigningError, match="already exists"):
        keys.generate_key(kf, pf)
    assert kf.read_bytes() == before
    second = keys.generate_key(kf, pf, overwrite=True)
    assert second != first
    assert kf.read_bytes() != before
    assert _mode(kf) == 0o600
    assert keys.key_id(keys.load_private_key(kf).public_key()) == second


def test_refuses_when_only_public_key_exists(tmp_path: Path) -> None:
    (tmp_path / "dock.pub").write_text("x")
    with pytest.raises(SigningError, match="dock.pub already exists"):
        keys.generate_key(tmp_path / "dock.key", tmp_path / "dock.pub")
    assert not (tmp_path / "dock.key").exists()


def test_key_id_is_stable_and_matches_loaded_keys(tmp_path: Path) -> None:
    kf, pf = tmp_path / "dock.key", tmp_path / "dock.pub"
    kid = keys.generate_key(kf, pf)
    priv = keys.load_private_key(kf)
    pub = keys.load_public_key(pf)
    assert keys.key_id(priv.public_key()) == kid
    assert keys.key_id(pub) == kid
    assert keys.key_id(keys.load_public_key(pf)) == kid
    assert keys.public_key_pem(priv) == pf.read_bytes()


def test_key_id_is_sha256_of_raw_public_key() -> None:
    raw = bytes(range(32))
    priv = Ed25519PrivateKey.from_private_bytes(raw)
    pub_raw = priv.public_key().public_bytes(serialization.Encoding.Raw,
                                              serialization.PublicFormat.Raw)
    assert keys.key_id(priv.public_key()) == "ed25519:" + hashlib.sha256(pub_raw).hexdigest()[:32]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_refuses_group_or_world_accessible_key(tmp_path: Path, mode: int) -> None:
    kf = tmp_path / "dock.key"
    keys.generate_key(kf, tmp_path / "dock.pub")
    os.chmod(kf, mode)
    pem = kf.read_bytes()
    body = b"".join(pem.splitlines()[1:-1]).decode()
    with pytest.raises(SigningError) as info:
        keys.load_private_key(kf)
    msg = str(info.value)
    assert f"chmod 600 {kf}" in msg
    assert f"{mode:04o}" in msg
    assert body not in msg and body[:16] not in msg
    assert "PRIVATE KEY" not in msg


def test_malformed_key_message_has_no_key_bytes(tmp_path: Path) -> None:
    kf = tmp_path / "dock.key"
    secret = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
    fd = os.open(kf, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n".encode())
    os.close(fd)
    with pytest.raises(SigningError) as info:
        keys.load_private_key(kf)
    assert "not an unencrypted PEM" in str(info.value)
    assert secret not in str(info.value)
    assert info.value.__cause__ is None


def test_missing_key_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="does not exist.*keygen"):
        keys.load_private_key(tmp_path / "nope.key")


def test_public_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "x.pub").write_bytes(other)
    with pytest.raises(SigningError, match="not an Ed25519 key"):
        keys.load_public_key(tmp_path / "x.pub")
    (tmp_path / "y.pub").write_bytes(b"garbage")
    with pytest.raises(SigningError, match="not a PEM public key"):
        keys.load_public_key(tmp_path / "y.pub")


def test_systemd_credential_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cred = tmp_path / "creds"
    cred.mkdir()
    cred_kid = keys.generate_key(cred / "dock.key", cred / "dock.pub")
    file_kid = keys.generate_key(tmp_path / "dock.key", tmp_path / "dock.pub")
    assert keys.key_id(keys.load_private_key(tmp_path / "dock.key").public_key()) == file_kid
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred))
    assert keys.resolve_key_file(tmp_path / "dock.key") == cred / "dock.key"
    assert keys.key_id(keys.load_private_key(tmp_path / "dock.key").public_key()) == cred_kid
    (cred / "dock.key").unlink()
    assert keys.resolve_key_file(tmp_path / "dock.key") == tmp_path / "dock.key"


def test_symlinked_key_is_refused(tmp_path: Path) -> None:
    keys.generate_key(tmp_path / "dock.key", tmp_path / "dock.pub")
    (tmp_path / "link.key").symlink_to(tmp_path / "dock.key")
    with pytest.raises(SigningError, match="cannot open signing key"):
        keys.load_private_key(tmp_path / "link.key")
