"""What the dock publishes besides dockings: its key history, RFC 3161 tokens and signed
checkpoints (see :mod:`dockd.integrity.checkpoint`), to every target.

* ``publish_keys``: every key record of the dock (``_keys/<id>.rec``) and public key
  (``_keys/<id>.pub``), so a reviewer who trusts one key of the dock can follow its
  rotations. Delivered before each manifest.
* ``manifest_token``: the TSA's token for a manifest, asked once and kept in the state
  database (``timestamps``), delivered beside the manifest as ``manifest.json.tsr``.
* ``publish_checkpoints``: per target, a checkpoint naming the newest sequence number of
  this dock delivered there without a hole, with its manifest hash; after each docking
  delivered and at least every ``integrity.checkpoint_minutes`` (the daemon's timer).

A TSA that does not answer never holds anything up: the file goes without a token (logged,
and ``dockd verify`` counts files without one).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..config import Config
from ..errors import DeliveryError
from ..integrity.checkpoint import TOKEN_SUFFIX, build_checkpoint, checkpoint_key
from ..integrity.keyhistory import local_records, parse_record, record_name
from ..integrity.tsa import TimestampError, request_token
from ..store import State, iso, trust
from .base import StorageTarget
from .layout import KEYS_DIR, key_path

log = logging.getLogger(__name__)


def publish_keys(target: StorageTarget, cfg: Config, public_pem: bytes, kid: str) -> None:
    """Deliver the dock's current public key and its whole key history to ``target``."""
    target.put_bytes(public_pem, key_path(kid))
    for rkid, data in sorted(local_records(cfg.paths.public_key_file).items()):
        rec = parse_record(data)
        target.put_bytes(rec.public_key.public_bytes(*_pem_args()), key_path(rkid))
        target.put_bytes(data, f"{KEYS_DIR}/{record_name(rkid)}")


def _pem_args() -> tuple[Any, Any]:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo


def timestamp(cfg: Config, data: bytes) -> bytes | None:
    """A token from the configured TSA for ``data``, or None (no TSA, or it failed)."""
    url = cfg.integrity.tsa_url
    if not url:
        return None
    try:
        return request_token(url, data, timeout=cfg.integrity.tsa_timeout_seconds)
    except TimestampError as exc:
        log.warning("no trusted timestamp this time: %s", exc)
        return None


def manifest_token(state: State, cfg: Config, manifest_id: int, body: bytes) -> bytes | None:
    """The manifest's token: from the state database, else asked now (and kept)."""
    subject = f"manifest/{manifest_id}"
    kept = trust.token_of(state, subject)
    if kept is not None:
        return kept
    token = timestamp(cfg, body)
    if token is not None:
        with state.tx() as conn:
            trust.keep_token(conn, subject, hashlib.sha256(body).hexdigest(), token,
                             state.now())
    return token


def chain_head(state: State, dock_id: str, target: str) -> tuple[int, str | None]:
    """The newest sequence number delivered to ``target`` with every earlier one, and its
    manifest hash ((0, None) when nothing is)."""
    seq, head = 0, None
    for r in trust.manifest_chain_on(state, dock_id, target):
        if r["seq"] != seq + 1 or r["state"] != "delivered":
            break
        seq, head = r["seq"], r["sha256"]
    return seq, head


def publish_checkpoints(state: State, cfg: Config, private_key: Any,
                        targets: Sequence[StorageTarget], *, extra: dict[str, Any] | None = None
                        ) -> int:
    """Publish one fresh checkpoint to every target; returns how many landed."""
    from ..integrity.keys import key_id, public_key_pem

    landed = 0
    pem, kid = public_key_pem(private_key), key_id(private_key.public_key())
    for t in targets:
        now: datetime = state.clock()
        seq, head = chain_head(state, cfg.dock.id, t.name)
        body = build_checkpoint(dock=cfg.dock.id, target=t.name, seq=seq, head_sha256=head,
                                created_at=now, private_key=private_key, extra=extra)
        token = timestamp(cfg, body)
        key = checkpoint_key(cfg.dock.id, now)
        error = None
        try:
            publish_keys(t, cfg, pem, kid)  # a rotation since the last docking, for one
            t.put_bytes(body, key)
            if token is not None:
                t.put_bytes(token, key + TOKEN_SUFFIX)
            landed += 1
        except (DeliveryError, OSError) as exc:
            error = str(exc)
            log.warning("checkpoint for %s not published on %s: %s", cfg.dock.id, t.name, exc)
        with state.tx() as conn:
            trust.record_checkpoint(conn, target=t.name, dock_id=cfg.dock.id, seq=seq,
                                    head=head, key=key, created_at=iso(now) or "", body=body,
                                    token=token, published_at=None if error else state.now(),
                                    error=error)
    return landed


def last_checkpoint_at(state: State) -> datetime | None:
    from ..store import parse_iso

    return parse_iso(trust.last_checkpoint_at(state))
