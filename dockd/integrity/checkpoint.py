"""Signed checkpoints: "dock D's chain on this target ends at sequence N with hash H".

Manifests chain by hash and carry the dock's monotonic sequence number, so a manifest
deleted from the middle of the chain shows as a gap. The newest ones, though, leave no
gap; the checkpoint closes that hole. After every docking and at least hourly the dock
publishes to every target a checkpoint naming the newest sequence number delivered there
and its manifest hash. Deleting the newest docking then requires deleting the newest
checkpoint too, and the age of the newest remaining checkpoint gives that away.

A checkpoint is one canonical JSON file (pure functions here, no I/O)::

    {"checkpoint": {"format": "dockd-checkpoint/1", "dock": "dock-01", "target": "primary",
                    "seq": 12, "head_sha256": "<hex>" | null, "created_at": "...",
                    "key_id": "ed25519:...", "extra": {...}},
     "signature": "<base64 Ed25519 over canonical(checkpoint)>"}

stored as ``_checkpoints/<dock>/<YYYYMMDDThhmmss.ffffffZ>.json`` with its RFC 3161 token
(if a TSA is configured) beside it as ``.json.tsr``. ``extra`` carries what other parts
sign into the checkpoint (the audit trail's head, for one).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..delivery.layout import sanitize_component
from ..errors import VerifyError
from .keys import key_id
from .manifest import _strict_json, canonical_bytes, utc_iso

CHECKPOINT_FORMAT = "dockd-checkpoint/1"
CHECKPOINTS_DIR = "_checkpoints"
TOKEN_SUFFIX = ".tsr"
_FIELDS = frozenset({"format", "dock", "target", "seq", "head_sha256", "created_at",
                     "key_id", "extra"})
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Checkpoint:
    dock: str
    target: str
    seq: int
    head_sha256: str | None
    created_at: datetime
    key_id: str
    extra: dict[str, Any]
    signature: bytes


def build_checkpoint(*, dock: str, target: str, seq: int, head_sha256: str | None,
                     created_at: datetime, private_key: Ed25519PrivateKey,
                     extra: Mapping[str, Any] | None = None) -> bytes:
    """The canonical, signed checkpoint document."""
    if seq < 0 or (seq == 0) != (head_sha256 is None):
        raise ValueError("a checkpoint names a head hash exactly when seq > 0")
    body = {"format": CHECKPOINT_FORMAT, "dock": dock, "target": target, "seq": seq,
            "head_sha256": head_sha256, "created_at": utc_iso(created_at),
            "key_id": key_id(private_key.public_key()), "extra": dict(extra or {})}
    sig = private_key.sign(canonical_bytes(body))
    return canonical_bytes({"checkpoint": body,
                            "signature": base64.b64encode(sig).decode("ascii")})


def parse_checkpoint(data: bytes) -> tuple[Checkpoint, bytes]:
    """Decode and validate a checkpoint; return it and the signed body bytes."""
    doc = _strict_json(data, "checkpoint")
    if set(doc) != {"checkpoint", "signature"} or not isinstance(doc["checkpoint"], dict):
        raise VerifyError("malformed checkpoint: fields")
    body = doc["checkpoint"]
    if set(body) != _FIELDS or body["format"] != CHECKPOINT_FORMAT:
        raise VerifyError("malformed checkpoint: checkpoint fields or format")
    if canonical_bytes(doc) != data:
        raise VerifyError("malformed checkpoint: not in canonical form")
    seq, head = body["seq"], body["head_sha256"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise VerifyError("malformed checkpoint: seq")
    if (head is None) != (seq == 0) or (head is not None and not (
            isinstance(head, str) and _SHA256_RE.fullmatch(head))):
        raise VerifyError("malformed checkpoint: head_sha256")
    for f in ("dock", "target", "created_at", "key_id"):
        if not isinstance(body[f], str):
            raise VerifyError(f"malformed checkpoint: {f}")
    if not isinstance(body["extra"], dict):
        raise VerifyError("malformed checkpoint: extra")
    try:
        created = datetime.fromisoformat(body["created_at"])
    except ValueError:
        raise VerifyError("malformed checkpoint: created_at") from None
    if created.tzinfo is None:
        raise VerifyError("malformed checkpoint: created_at has no time zone")
    try:
        sig = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise VerifyError("malformed checkpoint: signature is not base64") from None
    if len(sig) != 64:
        raise VerifyError("malformed checkpoint: signature is not 64 bytes")
    cp = Checkpoint(body["dock"], body["target"], seq, head, created.astimezone(UTC),
                    body["key_id"], body["extra"], sig)
    return cp, canonical_bytes(body)


def check_checkpoint(cp: Checkpoint, body: bytes, key: Ed25519PublicKey) -> None:
    try:
        key.verify(cp.signature, body)
    except InvalidSignature:
        raise VerifyError(f"bad signature: the checkpoint was not signed by {cp.key_id}"
                          ) from None


def checkpoint_key(dock: str, created_at: datetime) -> str:
    """Where a checkpoint is stored on a target (one file per checkpoint, never replaced)."""
    t = created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{CHECKPOINTS_DIR}/{sanitize_component(dock)}/{t}.json"
