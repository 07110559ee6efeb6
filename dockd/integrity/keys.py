"""The dock's Ed25519 signing key: generate, load, fingerprint.

The private key is a PKCS#8 PEM file that only the dockd user may read (mode 0600). It is
created with ``O_CREAT | O_EXCL`` and mode 0600 from the first instant, so it is never
group/world readable, not even between ``open`` and ``chmod``. Loading refuses a key file
that group or others may read or write, and says which ``chmod`` fixes it.

systemd credentials: when the unit passes the key with ``LoadCredential=dock.key:/path``,
systemd exposes it as ``$CREDENTIALS_DIRECTORY/dock.key`` (a private, non-swappable
ramfs readable by the service only). ``load_private_key`` prefers that file over the
configured path when it exists, so the key file itself can stay root-owned and unreadable
to the dockd user. See ``resolve_key_file``.

The key id is a fingerprint of the public key: ``ed25519:`` + the first 32 hex digits of
SHA-256 over the raw 32-byte public key. It is written into every manifest and signature
so a reviewer can tell which dock key signed what.

Nothing here ever puts key bytes into an exception message or a log line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..errors import SigningError

log = logging.getLogger(__name__)

CREDENTIAL_NAME = "dock.key"
KEY_ID_PREFIX = "ed25519:"


def key_id(public_key: Ed25519PublicKey) -> str:
    """Fingerprint of ``public_key``: ``ed25519:`` + sha256(raw key).hexdigest()[:32]."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_ID_PREFIX + hashlib.sha256(raw).hexdigest()[:32]


def public_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    """The public half of ``private_key`` as PEM SubjectPublicKeyInfo."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def resolve_key_file(key_file: Path) -> Path:
    """``$CREDENTIALS_DIRECTORY/dock.key`` when systemd provides it, else ``key_file``."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        candidate = Path(cred_dir) / CREDENTIAL_NAME
        if candidate.exists():
            return candidate
    return Path(key_file)


def generate_key(key_file: Path, public_key_file: Path, *, overwrite: bool = False) -> str:
    """Create a new Ed25519 key pair; return its key id.

    The private key is written 0600 (parent directory created 0700), the public key 0644.
    An existing key is never replaced unless ``overwrite`` is true: losing the dock key means
    the dock's earlier signatures can only be checked with the old public key.
    """
    key_file, public_key_file = Path(key_file), Path(public_key_file)
    if not overwrite:
        for p in (key_file, public_key_file):
            if p.exists() or p.is_symlink():
                raise SigningError(
                    f"{p} already exists; refusing to replace a signing key "
                    "(run `dockd keygen --force` to rotate to a new key; the rotation is signed "
                    "by the old key so earlier manifests stay verifiable)"
                )
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        public_key_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _write_new(key_file, pem, 0o600, overwrite=overwrite)
        _write_new(public_key_file, public_key_pem(private_key), 0o644, overwrite=overwrite)
    except FileExistsError as exc:
        raise SigningError(f"{exc.filename2 or exc.filename} appeared while generating; "
                           "refusing to replace a signing key") from exc
    except OSError as exc:
        raise SigningError(f"cannot write key pair: {exc.strerror or exc}: {exc.filename}") from exc
    kid = key_id(private_key.public_key())
    log.info("generated dock signing key %s in %s", kid, key_file)
    return kid


def _write_new(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write ``data`` to a fresh temp file created with ``mode`` (O_EXCL), then publish it.

    Publishing is ``os.link`` (fails if ``path`` exists) unless ``overwrite``, then
    ``os.replace``; either way ``path`` never holds a half-written key.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # umask may have taken bits from a 0644 public key
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if not overwrite or tmp.exists():
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load the dock's private key (from ``$CREDENTIALS_DIRECTORY/dock.key`` if present).

    Refuses a file that group or others can read or write, with the ``chmod`` that fixes it.
    """
    real = resolve_key_file(path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise SigningError(f"signing key {real} does not exist (create it with: dockd keygen)") from exc
    except OSError as exc:
        raise SigningError(f"cannot open signing key {real}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SigningError(f"signing key {real} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise SigningError(
                f"signing key {real} is accessible by group/others (mode {mode:04o}); "
                f"fix with: chmod 600 {real}"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError as exc:
        raise SigningError(f"cannot read signing key {real}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # the exception text is deliberately dropped: it must never echo key material
        raise SigningError(
            f"signing key {real} is not an unencrypted PEM PKCS#8 private key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"signing key {real} is not an Ed25519 key")
    log.debug("loaded signing key %s from %s", key_id(key.public_key()), real)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM SubjectPublicKeyInfo Ed25519 public key."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read public key {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningError(f"public key {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"public key {path} is not an Ed25519 key")
    return key


def own_key(public_key_file: Path) -> dict[str, Ed25519PublicKey]:
    """``{key id: key}`` for the dock's own public key: what checks run on the dock itself
    trust (``verify_path(target, own_key(cfg.paths.public_key_file))``)."""
    k = load_public_key(public_key_file)
    return {key_id(k): k}
