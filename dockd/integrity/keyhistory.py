"""A dock's signing keys as a signed history, and the set of keys a reviewer trusts.

Every key a dock ever held has a **key record** (``dockd-key-record/1``)::

    {"record": {"format": "dockd-key-record/1", "dock": "dock-01", "key_id": "ed25519:...",
                "public_key": "<PEM>", "prev_key_id": null | "ed25519:...",
                "created_at": "..."},
     "sig_key": "<base64 Ed25519 signature by the key itself over canonical(record)>",
     "sig_prev": null | "<base64 signature by the previous key over canonical(record)>"}

The first key's record (``prev_key_id`` null) binds the key to its dock id; a rotation
(``dockd keygen --force``) is a record signed by the previous key *and* the new one, so
neither key can be claimed for another dock's history. Records are written in canonical
JSON and delivered to every target as ``_keys/<key id>.rec`` beside the ``.pub``.

Trust starts only from keys the reviewer gives (``--pubkey``, a trust file, or the dock's
own key when run on the dock) and spreads along valid rotation records, forwards and
backwards: a reviewer who trusts any one key of a dock trusts all of that dock's keys.
Keys that are merely found on the target are never trusted.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..errors import SigningError, VerifyError
from .keys import key_id, public_key_pem
from .manifest import _strict_json, canonical_bytes, utc_iso

log = logging.getLogger(__name__)

RECORD_FORMAT = "dockd-key-record/1"
RECORD_SUFFIX = ".rec"
HISTORY_DIR = "history"
"""Beside the dock's public key file: the local copy of its key records."""
_RECORD_FIELDS = frozenset({"format", "dock", "key_id", "public_key", "prev_key_id",
                            "created_at"})


@dataclass(frozen=True)
class KeyRecord:
    dock: str
    key_id: str
    public_key: Ed25519PublicKey
    prev_key_id: str | None
    created_at: str
    raw: bytes
    """The canonical file bytes (what is delivered)."""


@dataclass(frozen=True)
class TrustedKey:
    key: Ed25519PublicKey | None
    """None only for a trust-file entry before its key is found (pinned by fingerprint)."""
    dock: str | None
    """The dock this key belongs to; None when the reviewer gave a bare key that no record
    on the target binds (it is then accepted for one dock only: the first it signs for)."""
    how: str
    """Why it is trusted: 'given', 'trust file', 'this dock', 'rotation from <key id>'."""


# --------------------------------------------------------------------------- records


def make_record(dock: str, new_key: Ed25519PrivateKey, created_at: datetime,
                prev_key: Ed25519PrivateKey | None = None) -> bytes:
    """The canonical key record for ``new_key`` (signed by it and by ``prev_key``)."""
    record = {
        "format": RECORD_FORMAT, "dock": dock, "key_id": key_id(new_key.public_key()),
        "public_key": public_key_pem(new_key).decode("ascii"),
        "prev_key_id": key_id(prev_key.public_key()) if prev_key is not None else None,
        "created_at": utc_iso(created_at),
    }
    body = canonical_bytes(record)
    doc = {"record": record, "sig_key": _b64(new_key.sign(body)),
           "sig_prev": _b64(prev_key.sign(body)) if prev_key is not None else None}
    return canonical_bytes(doc)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise VerifyError(f"malformed key record: {what} is not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VerifyError(f"malformed key record: {what} is not base64") from None
    if len(raw) != 64:
        raise VerifyError(f"malformed key record: {what} is not a 64-byte signature")
    return raw


def parse_record(data: bytes) -> KeyRecord:
    """Decode a key record and check its self-signature (``VerifyError`` if anything is off).

    The previous key's signature is checked by ``check_rotation`` once that key is known.
    """
    doc = _strict_json(data, "key record")
    if set(doc) != {"record", "sig_key", "sig_prev"} or not isinstance(doc["record"], dict):
        raise VerifyError("malformed key record: fields")
    rec = doc["record"]
    if set(rec) != _RECORD_FIELDS or rec.get("format") != RECORD_FORMAT:
        raise VerifyError("malformed key record: record fields or format")
    if canonical_bytes(doc) != data:
        raise VerifyError("malformed key record: not in canonical form")
    for f in ("dock", "key_id", "public_key", "created_at"):
        if not isinstance(rec[f], str):
            raise VerifyError(f"malformed key record: {f} is not a string")
    if rec["prev_key_id"] is not None and not isinstance(rec["prev_key_id"], str):
        raise VerifyError("malformed key record: prev_key_id")
    try:
        pub = serialization.load_pem_public_key(rec["public_key"].encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise VerifyError("malformed key record: public_key is not an Ed25519 PEM key"
                          ) from None
    if not isinstance(pub, Ed25519PublicKey):
        raise VerifyError("malformed key record: public_key is not Ed25519")
    if key_id(pub) != rec["key_id"]:
        raise VerifyError(f"key record: key_id {rec['key_id']} is not the id of its key")
    body = canonical_bytes(rec)
    try:
        pub.verify(_unb64(doc["sig_key"], "sig_key"), body)
    except InvalidSignature:
        raise VerifyError(f"key record of {rec['key_id']}: bad self-signature") from None
    if (doc["sig_prev"] is None) != (rec["prev_key_id"] is None):
        raise VerifyError("malformed key record: sig_prev and prev_key_id disagree")
    return KeyRecord(rec["dock"], rec["key_id"], pub, rec["prev_key_id"], rec["created_at"],
                     data)


def check_rotation(record: KeyRecord, prev_key: Ed25519PublicKey) -> None:
    """``VerifyError`` unless the previous key signed ``record`` (a genuine rotation)."""
    doc = _strict_json(record.raw, "key record")
    body = canonical_bytes(doc["record"])
    try:
        prev_key.verify(_unb64(doc["sig_prev"], "sig_prev"), body)
    except InvalidSignature:
        raise VerifyError(f"key record of {record.key_id}: not signed by the previous key "
                          f"{record.prev_key_id}") from None


def record_name(kid: str) -> str:
    return kid.replace(":", "_") + RECORD_SUFFIX


# --------------------------------------------------------------------------- local history


def history_dir(public_key_file: Path) -> Path:
    return Path(public_key_file).parent / HISTORY_DIR


def write_local_record(public_key_file: Path, kid: str, data: bytes) -> Path:
    d = history_dir(public_key_file)
    d.mkdir(mode=0o755, parents=True, exist_ok=True)
    p = d / record_name(kid)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return p


def local_records(public_key_file: Path) -> dict[str, bytes]:
    """The dock's own key records: key id -> canonical bytes (empty if none yet)."""
    d = history_dir(public_key_file)
    out: dict[str, bytes] = {}
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*" + RECORD_SUFFIX)):
        data = p.read_bytes()
        try:
            out[parse_record(data).key_id] = data
        except VerifyError as exc:
            log.warning("ignoring key record %s: %s", p, exc)
    return out


def ensure_genesis(dock: str, private_key: Ed25519PrivateKey, public_key_file: Path,
                   now: datetime) -> bytes:
    """The key record of the dock's current key, written now if the key has none (keys made
    before key histories existed get a genesis record on first use)."""
    kid = key_id(private_key.public_key())
    have = local_records(public_key_file)
    if kid in have:
        return have[kid]
    data = make_record(dock, private_key, now)
    write_local_record(public_key_file, kid, data)
    log.info("wrote key record for %s (dock %s)", kid, dock)
    return data


# --------------------------------------------------------------------------- trust


def expand_trust(anchors: Mapping[str, TrustedKey], records: Iterable[KeyRecord],
                 problems: list[str]) -> dict[str, TrustedKey]:
    """Spread trust from ``anchors`` along valid rotation records (both directions).

    A record binds its key to a dock: an anchor without a dock takes the dock of its own
    valid self-signed record. A record that names a trusted key's dock differently is a
    problem (a key claimed by two docks).
    """
    trusted = dict(anchors)
    recs = {r.key_id: r for r in records}
    for kid, tk in list(trusted.items()):
        r = recs.get(kid)
        if r is None:
            continue
        if tk.dock is None:
            trusted[kid] = TrustedKey(tk.key, r.dock, tk.how)
        elif r.dock != tk.dock:
            problems.append(f"key {kid} is trusted for dock {tk.dock}, but its key record "
                            f"names dock {r.dock}")
    changed = True
    while changed:
        changed = False
        for r in recs.values():
            if r.prev_key_id is None:
                continue
            new_t, prev_t = trusted.get(r.key_id), trusted.get(r.prev_key_id)
            if (new_t is None) == (prev_t is None):
                continue  # neither side trusted yet, or both already
            prev_pub = prev_t.key if prev_t is not None else _pub_of(recs, r.prev_key_id)
            if prev_pub is None:
                continue
            try:
                check_rotation(r, prev_pub)
            except VerifyError as exc:
                problems.append(f"_keys/{record_name(r.key_id)}: {exc}")
                continue
            known = new_t or prev_t
            assert known is not None
            if known.dock is not None and known.dock != r.dock:
                problems.append(f"_keys/{record_name(r.key_id)}: rotation names dock {r.dock} "
                                f"but key {r.prev_key_id} belongs to dock {known.dock}")
                continue
            if new_t is None:
                trusted[r.key_id] = TrustedKey(r.public_key, r.dock,
                                               f"rotation from {r.prev_key_id}")
            else:
                trusted[r.prev_key_id] = TrustedKey(prev_pub, r.dock,
                                                    f"rotation to {r.key_id}")
            changed = True
    return trusted


def _pub_of(recs: Mapping[str, KeyRecord], kid: str) -> Ed25519PublicKey | None:
    r = recs.get(kid)
    return r.public_key if r is not None else None


def parse_trust_file(path: Path) -> list[tuple[str, str]]:
    """``dock-id  ed25519:<fingerprint>`` per line (``#`` comments, blank lines allowed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SigningError(f"cannot read trust file {path}: {exc.strerror or exc}") from exc
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace("=", " ").replace("\t", " ").split()
        if len(parts) != 2 or not parts[1].startswith("ed25519:"):
            raise SigningError(f"{path}:{n}: expected 'DOCK-ID ed25519:FINGERPRINT'")
        out.append((parts[0], parts[1]))
    return out


# --------------------------------------------------------------------------- keygen


def keygen(dock: str, key_file: Path, public_key_file: Path, now: datetime, *,
           force: bool = False) -> tuple[str, str | None]:
    """Create the dock key (or rotate it with ``force``); return (new key id, old key id).

    A rotation loads the old private key first and writes a key record signed by both keys,
    so the history stays one chain; an old key that cannot be loaded stops the rotation
    (``SigningError``) rather than silently starting a second, unlinked history.
    """
    from .keys import generate_key, load_private_key

    old: Ed25519PrivateKey | None = None
    if force and (Path(key_file).exists() or Path(key_file).is_symlink()):
        old = load_private_key(key_file)
        ensure_genesis(dock, old, public_key_file, now)
    kid = generate_key(key_file, public_key_file, overwrite=force)
    new = load_private_key(key_file)
    write_local_record(public_key_file, kid, make_record(dock, new, now, old))
    old_kid = key_id(old.public_key()) if old is not None else None
    if old_kid:
        log.warning("rotated dock %s signing key %s -> %s", dock, old_kid, kid)
    return kid, old_kid
