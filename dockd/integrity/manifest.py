"""Canonical JSON manifests and their Ed25519 signature documents (pure: no I/O).

A docking produces one manifest: who docked which recorder where and when, the
recorder's health and clock, and for every clip its stored name, size, SHA-256, times and
probe summary. The manifest is serialised once with ``canonical_bytes`` and those exact
bytes are hashed, signed and delivered; nobody ever re-serialises a manifest to check it.

The signature lives in a separate document (``manifest.json.sig``)::

    {"alg":"Ed25519","format":"dockd-signature/1","key_id":"ed25519:...",
     "manifest_sha256":"...","signature":"<base64 of the 64-byte signature>"}

itself in canonical form; ``check_signature`` accepts nothing else (any non-canonical
spelling is "malformed"), so every altered byte of either file is detected.

Manifests chain: ``prev_manifest_sha256`` is the SHA-256 of the dock's previous manifest
(``None`` for the first), which lets a verifier notice a manifest that went missing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..errors import VerifyError
from ..model import Finding, RecorderHealth, RecorderIdentity
from .keys import key_id as _key_id

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "dockd-manifest/1"
SIGNATURE_FORMAT = "dockd-signature/1"
SIGNATURE_ALG = "Ed25519"
_SIG_FIELDS = frozenset({"format", "alg", "key_id", "manifest_sha256", "signature"})
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- canonical JSON


def canonical_bytes(obj: Any) -> bytes:
    """The one serialisation of ``obj``: sorted keys, no spaces, UTF-8, no NaN/inf.

    Accepts dict (str keys), list/tuple, str, int, bool, None and finite float. Anything
    else (datetimes included: pass ISO strings) raises ``ValueError`` naming where it is.
    """
    _check_plain(obj, "$")
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _is_plain(obj: Any) -> bool:
    """:func:`_check_plain` without the error message: the fast pass over a whole manifest
    (tens of thousands of values for a recorder of many clips); the slow one runs only to
    say where a value that fails is."""
    kind = type(obj)
    if kind is str:
        return obj.isascii() or _encodes(obj)
    if kind is dict:
        return all(type(k) is str and (k.isascii() or _encodes(k)) and _is_plain(v)
                   for k, v in obj.items())
    if kind is list or kind is tuple:
        return all(_is_plain(v) for v in obj)
    if obj is None or kind is bool or kind is int:
        return True
    if kind is float:
        return math.isfinite(obj)
    return False  # subclasses, datetimes, anything else: the slow pass decides or explains


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_plain(obj: Any, where: str) -> None:
    if _is_plain(obj):
        return
    _explain_plain(obj, where)


def _explain_plain(obj: Any, where: str) -> None:
    if obj is None or isinstance(obj, bool | int):
        return
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: string is not valid Unicode (lone surrogate)") from None
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where}: {obj!r} cannot be written to a manifest")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a string")
            _explain_plain(k, f"{where}.<key>")
            _explain_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _explain_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, datetime):
        raise ValueError(f"{where}: datetime must be written as an ISO 8601 string first")
    raise ValueError(f"{where}: {type(obj).__name__} cannot be written to a manifest")


def manifest_sha256(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


def parse_manifest(manifest_bytes: bytes) -> dict[str, Any]:
    """Decode manifest bytes into a dict; ``VerifyError`` if they are not a JSON object."""
    obj = _strict_json(manifest_bytes, "manifest")
    if obj.get("format") != MANIFEST_FORMAT:
        raise VerifyError(f"malformed manifest: format is {obj.get('format')!r}, "
                          f"expected {MANIFEST_FORMAT!r}")
    return obj


def _strict_json(data: bytes, what: str) -> dict[str, Any]:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerifyError(f"malformed {what}: not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise VerifyError(f"malformed {what}: not a JSON object")
    return obj


# --------------------------------------------------------------------------- building


def utc_iso(t: datetime | str | None) -> str | None:
    """ISO 8601 in UTC (``+00:00``); naive datetimes are refused as ambiguous.

    A string is taken as already formatted by the caller and returned unchanged.
    """
    if t is None or isinstance(t, str):
        return t
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive datetime {t.isoformat()} (a manifest needs timezone-aware times)")
    return t.astimezone(UTC).isoformat()


def _aware_iso(t: datetime | str | None) -> str | None:
    """ISO 8601 keeping the offset the value carries (the recorder's own spelling)."""
    if t is None or isinstance(t, str):
        return t
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive datetime {t.isoformat()} (a manifest needs timezone-aware times)")
    return t.isoformat()


def correct_clock(recorded: datetime | None, clock_offset_s: float | None) -> datetime | None:
    """Recorder-clock time corrected to the dock's clock (offset = recorder minus dock)."""
    if recorded is None:
        return None
    if clock_offset_s is None:
        return recorded
    return recorded - timedelta(seconds=clock_offset_s)


def printable_path(path: str) -> str:
    """The recorder's spelling of a path, made printable (idempotent).

    Undecodable bytes (surrogate escapes) become ``\\xNN``, other non-printable characters
    ``\\uNNNN``/``\\UNNNNNNNN``; everything else, backslashes included (FAT names cannot
    hold one), is kept as is, so an already printable path is returned unchanged.
    """
    out = []
    for ch in path:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:
            out.append(f"\\x{cp - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif cp <= 0xFFFF:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(f"\\U{cp:08x}")
    return "".join(out)


@dataclass(frozen=True)
class ManifestClip:
    """One delivered clip as the manifest describes it.

    ``start_recorded`` is the start as the recorder's clock (file name) says it, aware in the
    recorder's zone; ``start``/``end`` are corrected by the clock offset (see
    ``correct_clock``) and written in UTC. Times may also be given as ISO strings, which are
    written verbatim. ``metadata`` is ``ProbeResult.summary()``; findings are ``Finding``
    objects or their ``as_dict()`` form.
    """

    name: str
    original_path: str
    size: int
    sha256: str
    start_recorded: datetime | str | None = None
    start: datetime | str | None = None
    end: datetime | str | None = None
    duration_s: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    findings: tuple[Finding | Mapping[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        if not self.name or "/" in self.name or "\\" in self.name or self.name in {".", ".."}:
            raise ValueError(f"clip name {self.name!r} is not a plain file name")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ValueError(f"clip {self.name}: size must be a non-negative int")
        if not _SHA256_RE.fullmatch(self.sha256):
            raise ValueError(f"clip {self.name}: sha256 must be 64 lowercase hex digits")
        return {
            "name": self.name,
            "original_path": printable_path(self.original_path),
            "size": self.size,
            "sha256": self.sha256,
            "start_recorded": _aware_iso(self.start_recorded),
            "start": utc_iso(self.start),
            "end": utc_iso(self.end),
            "duration_s": self.duration_s,
            "metadata": _plain(self.metadata),
            "findings": [_finding(f) for f in self.findings],
        }


def _finding(f: Finding | Mapping[str, Any]) -> Any:
    return _plain(f.as_dict() if isinstance(f, Finding) else f)


def _plain(obj: Any) -> Any:
    """Copy mappings to dicts and sequences to lists so the result is plain JSON data."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def build_manifest(
    *,
    dock_id: str,
    port: str,
    docking_id: int,
    docked_at: datetime,
    recorder: RecorderIdentity,
    health: RecorderHealth,
    clips: Sequence[ManifestClip],
    findings: Sequence[Finding | Mapping[str, Any]],
    prev_manifest_sha256: str | None,
    key_id: str,
    created_at: datetime,
    extra: Mapping[str, Any] | None = None,
    seq: int | None = None,
    usb_serial: str | None = None,
) -> dict[str, Any]:
    """The manifest of one docking as plain data, ready for ``canonical_bytes``.

    ``seq`` is the dock's monotonic sequence number (1 for its first manifest): with
    ``prev_manifest_sha256`` it lets a verifier see any manifest that went missing.
    ``usb_serial`` is the serial udev read from the USB device (None where there is none),
    recorded beside the serial the recorder's device-info file claims.

    Raises ``ValueError`` for data that cannot be written faithfully (naive datetimes,
    NaN, duplicate clip names, malformed hashes).
    """
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1):
        raise ValueError("seq must be a positive int")
    if prev_manifest_sha256 is not None and not _SHA256_RE.fullmatch(prev_manifest_sha256):
        raise ValueError("prev_manifest_sha256 must be None or 64 lowercase hex digits")
    clip_dicts = [c.as_dict() for c in clips]
    seen: set[str] = set()
    for c in clip_dicts:
        if c["name"] in seen:
            raise ValueError(f"duplicate clip name {c['name']!r} in one docking")
        seen.add(c["name"])
    offset = health.clock_offset_s
    manifest = {
        "format": MANIFEST_FORMAT,
        "dock": dock_id,
        "port": port,
        "docking": {"id": docking_id, "docked_at": utc_iso(docked_at)},
        "recorder": {
            "serial": recorder.serial,
            "officer_no": recorder.officer_no,
            "officer_name": recorder.officer_name,
            "unit_no": recorder.unit_no,
            "unit_name": recorder.unit_name,
            "model": recorder.model,
            "vendor": recorder.vendor,
            "usb_serial": usb_serial,
        },
        "health": {
            "battery_percent": health.battery_percent,
            "firmware": health.firmware,
            "storage_total": health.storage_total,
            "storage_free": health.storage_free,
            "recorder_clock": _aware_iso(health.recorder_clock),
            "clock_reference": utc_iso(health.clock_reference),
            "clock_offset_s": offset,
        },
        "clips": clip_dicts,
        "findings": [_finding(f) for f in findings],
        "prev_manifest_sha256": prev_manifest_sha256,
        "seq": seq,
        "key_id": key_id,
        "created_at": utc_iso(created_at),
        "extra": _plain(dict(extra or {})),
    }
    _check_plain(manifest, "manifest")
    return manifest


# --------------------------------------------------------------------------- signatures


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The canonical signature document for ``manifest_bytes``."""
    kid = _key_id(private_key.public_key())
    doc = {
        "format": SIGNATURE_FORMAT,
        "alg": SIGNATURE_ALG,
        "key_id": kid,
        "manifest_sha256": manifest_sha256(manifest_bytes),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii"),
    }
    log.debug("signed manifest %s with %s", doc["manifest_sha256"], kid)
    return canonical_bytes(doc)


def parse_signature(sig_bytes: bytes) -> dict[str, str]:
    """Decode and strictly validate a signature document; ``VerifyError`` if malformed."""
    doc = _strict_json(sig_bytes, "signature file")

    def bad(reason: str) -> VerifyError:
        return VerifyError(f"malformed signature file: {reason}")

    if set(doc) != _SIG_FIELDS:
        raise bad(f"fields {sorted(doc)}, expected {sorted(_SIG_FIELDS)}")
    if not all(isinstance(v, str) for v in doc.values()):
        raise bad("every field must be a string")
    if doc["format"] != SIGNATURE_FORMAT:
        raise bad(f"format {doc['format']!r}, expected {SIGNATURE_FORMAT!r}")
    if doc["alg"] != SIGNATURE_ALG:
        raise bad(f"alg {doc['alg']!r}, expected {SIGNATURE_ALG!r}")
    if not _SHA256_RE.fullmatch(doc["manifest_sha256"]):
        raise bad("manifest_sha256 is not 64 lowercase hex digits")
    try:
        raw = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise bad("signature is not base64") from None
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != doc["signature"]:
        raise bad("signature is not the base64 of 64 bytes")
    if canonical_bytes(doc) != sig_bytes:
        raise bad("not in canonical form")
    return doc


def check_signature(
    manifest_bytes: bytes, sig_bytes: bytes, public_keys: Mapping[str, Ed25519PublicKey]
) -> None:
    """Raise ``VerifyError`` unless ``sig_bytes`` is a valid signature of ``manifest_bytes``
    by one of ``public_keys`` (key id -> key).

    Messages: ``malformed signature file: ...``; ``manifest hash mismatch: signature is for
    <hex>, manifest is <hex>``; ``unknown key id <id> (known: ...)``; ``bad signature: ...``.
    """
    doc = parse_signature(sig_bytes)
    actual = manifest_sha256(manifest_bytes)
    if doc["manifest_sha256"] != actual:
        raise VerifyError(
            f"manifest hash mismatch: signature is for {doc['manifest_sha256']}, "
            f"manifest is {actual}"
        )
    kid = doc["key_id"]
    key = public_keys.get(kid)
    if key is None:
        known = ", ".join(sorted(public_keys)) or "none"
        raise VerifyError(f"unknown key id {kid} (known: {known})")
    try:
        key.verify(base64.b64decode(doc["signature"]), manifest_bytes)
    except InvalidSignature:
        raise VerifyError(f"bad signature: the manifest was not signed by {kid}") from None

