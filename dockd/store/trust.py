"""Deletion detection and trusted time (issue 9): RFC 3161 tokens, published checkpoints,
the manifest chain as each target holds it, and the target audit's bookkeeping (what was
delivered where, and when each object was last re-read)."""

from __future__ import annotations

import sqlite3
from typing import Any

from .readonly import Reader

# --------------------------------------------------------------------------- timestamps


def token_of(r: Reader, subject: str) -> bytes | None:
    """The RFC 3161 token kept for ``subject`` (e.g. ``manifest/12``), if any."""
    row = r.query_one("SELECT token FROM timestamps WHERE subject = ?", (subject,))
    return bytes(row["token"]) if row is not None else None


def keep_token(conn: sqlite3.Connection, subject: str, sha256: str, token: bytes,
               now: str) -> None:
    """Keep a token (the first one kept for a subject stays), in the caller's transaction."""
    conn.execute("INSERT OR IGNORE INTO timestamps (subject, sha256, token, created_at) "
                 "VALUES (?, ?, ?, ?)", (subject, sha256, token, now))


# --------------------------------------------------------------------------- checkpoints


def manifest_chain_on(r: Reader, dock_id: str, target: str) -> list[dict[str, Any]]:
    """The dock's manifests in sequence order with their delivery state on ``target``
    (seq, sha256, state; state None where never queued there)."""
    return r.query(
        "SELECT m.seq, m.sha256, md.state FROM manifests m LEFT JOIN manifest_deliveries md "
        "ON md.manifest_id = m.id AND md.target = ? WHERE m.dock_id = ? ORDER BY m.seq",
        (target, dock_id))


def record_checkpoint(conn: sqlite3.Connection, *, target: str, dock_id: str, seq: int,
                      head: str | None, key: str, created_at: str, body: bytes,
                      token: bytes | None, published_at: str | None,
                      error: str | None) -> None:
    """One checkpoint, published (``published_at``) or not (``error``)."""
    conn.execute(
        "INSERT INTO checkpoints (target, dock_id, seq, head, key, created_at, body, "
        "token, published_at, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (target, dock_id, seq, head, key, created_at, body, token, published_at, error))


def last_checkpoint_at(r: Reader) -> str | None:
    """When the newest published checkpoint was made (ISO text)."""
    row = r.query_one("SELECT max(created_at) AS t FROM checkpoints WHERE error IS NULL")
    return row["t"] if row and row["t"] else None


# --------------------------------------------------------------------------- target audit


def delivered_clips_on(r: Reader, target: str) -> list[dict[str, Any]]:
    """(key, size, sha256) of every clip verified on ``target``, by key."""
    return r.query(
        "SELECT d.key, c.size, c.sha256 FROM deliveries d JOIN clips c ON c.id = d.clip_id "
        "WHERE d.target = ? AND d.state = 'delivered' ORDER BY d.key", (target,))


def delivered_manifests_on(r: Reader, target: str) -> list[dict[str, Any]]:
    """(id, prefix, manifest, signature, token) of every manifest delivered to ``target``."""
    return r.query(
        "SELECT m.id, m.prefix, m.manifest, m.signature, t.token FROM manifest_deliveries md "
        "JOIN manifests m ON m.id = md.manifest_id LEFT JOIN timestamps t ON "
        "t.subject = 'manifest/' || m.id WHERE md.target = ? AND md.state = 'delivered' "
        "ORDER BY m.id", (target,))


def published_checkpoints_on(r: Reader, target: str) -> list[dict[str, Any]]:
    """(key, body, token) of every checkpoint published on ``target``."""
    return r.query("SELECT key, body, token FROM checkpoints WHERE target = ? AND "
                   "published_at IS NOT NULL ORDER BY id", (target,))


def last_rehashed(r: Reader, target: str) -> dict[str, str | None]:
    """Per key on ``target``: when the target audit last re-read it."""
    return {row["key"]: row["rehashed_at"] for row in r.query(
        "SELECT key, rehashed_at FROM target_audit WHERE target = ?", (target,))}


def record_rehash(conn: sqlite3.Connection, target: str, key: str, now: str,
                  problem: str | None) -> None:
    """The target audit re-read ``key`` on ``target`` now (``problem``: what it found)."""
    conn.execute("INSERT INTO target_audit (target, key, rehashed_at, problem) "
                 "VALUES (?, ?, ?, ?) ON CONFLICT(target, key) DO UPDATE SET "
                 "rehashed_at = excluded.rehashed_at, problem = excluded.problem",
                 (target, key, now, problem))
