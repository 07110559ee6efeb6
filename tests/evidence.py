"""Building delivered trees the way a dock does (real layout, manifests, key records,
checkpoints, local target), for verification tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dockd.delivery.layout import (
    KEYS_DIR,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    clip_key,
    docking_prefix,
    key_path,
)
from dockd.delivery.local import LocalTarget
from dockd.integrity.checkpoint import TOKEN_SUFFIX, build_checkpoint, checkpoint_key
from dockd.integrity.keyhistory import make_record, record_name
from dockd.integrity.keys import key_id, public_key_pem
from dockd.integrity.manifest import (
    ManifestClip,
    build_manifest,
    canonical_bytes,
    manifest_sha256,
    sign_manifest,
)
from dockd.model import RecorderHealth, RecorderIdentity

REC = RecorderIdentity(serial="A1234567", officer_no="0012345", officer_name="张三",
                       unit_no="110100")
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def fixed_key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes((seed * 32)[:32])


@dataclass
class Dock:
    """A simulated dock writing to one local target."""

    target: LocalTarget
    dock_id: str = "dock-01"
    key: Ed25519PrivateKey = field(default_factory=lambda: fixed_key(b"k"))
    seq: int = 0
    head: str | None = None
    prefixes: list[str] = field(default_factory=list)
    manifests: list[bytes] = field(default_factory=list)
    docking_id: int = 0
    record: bool = True
    """Publish the key's genesis record (a key record binds the key to ``dock_id``)."""

    def __post_init__(self) -> None:
        if self.record:
            self.publish_record(make_record(self.dock_id, self.key, T0))

    @property
    def root(self) -> Path:
        return self.target.root

    @property
    def kid(self) -> str:
        return key_id(self.key.public_key())

    def publish_record(self, data: bytes) -> None:
        from dockd.integrity.keyhistory import parse_record

        rec = parse_record(data)
        self.target.put_bytes(rec.public_key.public_bytes(
            *_pem()), key_path(rec.key_id))
        self.target.put_bytes(data, f"{KEYS_DIR}/{record_name(rec.key_id)}")

    def rotate(self, new: Ed25519PrivateKey, at: datetime | None = None) -> None:
        self.publish_record(make_record(self.dock_id, new, at or T0, self.key))
        self.key = new

    def dock(self, clips: dict[str, bytes], *, token: bytes | None = None,
             serial: str = "A1234567") -> str:
        self.seq += 1
        self.docking_id += 1
        docked = T0 + timedelta(hours=self.seq)
        rec = RecorderIdentity(serial=serial, officer_no=REC.officer_no,
                               officer_name=REC.officer_name, unit_no=REC.unit_no)
        prefix = docking_prefix(rec, docked, self.dock_id, "port-01", self.docking_id)
        mclips = []
        for name, data in clips.items():
            self.target.put_bytes(data, clip_key(prefix, name))
            mclips.append(ManifestClip(name=name, original_path=f"DCIM/{name}", size=len(data),
                                       sha256=hashlib.sha256(data).hexdigest()))
        m = build_manifest(dock_id=self.dock_id, port="port-01", docking_id=self.docking_id,
                           docked_at=docked, recorder=rec, health=RecorderHealth(),
                           clips=mclips, findings=[], prev_manifest_sha256=self.head,
                           key_id=self.kid, created_at=docked, seq=self.seq)
        body = canonical_bytes(m)
        self.target.put_bytes(public_key_pem(self.key), key_path(self.kid))
        if token is not None:
            self.target.put_bytes(token, f"{prefix}/{MANIFEST_NAME}{TOKEN_SUFFIX}")
        self.target.put_bytes(body, f"{prefix}/{MANIFEST_NAME}")
        self.target.put_bytes(sign_manifest(body, self.key), f"{prefix}/{SIGNATURE_NAME}")
        self.head = manifest_sha256(body)
        self.prefixes.append(prefix)
        self.manifests.append(body)
        return prefix

    def checkpoint(self, at: datetime | None = None, token_for: object = None) -> str:
        at = at or datetime.now(UTC)
        body = build_checkpoint(dock=self.dock_id, target=self.target.name, seq=self.seq,
                                head_sha256=self.head, created_at=at, private_key=self.key)
        key = checkpoint_key(self.dock_id, at)
        self.target.put_bytes(body, key)
        if callable(token_for):
            self.target.put_bytes(token_for(body), key + TOKEN_SUFFIX)
        return key


def _pem() -> tuple:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo


def make_target(root: Path, name: str = "primary") -> LocalTarget:
    root.mkdir(parents=True, exist_ok=True)
    return LocalTarget(name, root)


def writable(p: Path) -> Path:
    p.chmod(0o644)
    return p


def flip(p: Path, i: int = 0) -> None:
    data = bytearray(writable(p).read_bytes())
    data[i % len(data)] ^= 0x01
    p.write_bytes(bytes(data))
