"""One delivery, start to end: send a clip or a manifest to one target, check what landed,
and record the outcome (landed, corrupt copy moved aside, failed attempt with backoff).

These were ``Pipeline``'s delivery methods; the per-target workers of
:mod:`dockd.stages.deliver_worker` call them, one item at a time, from their own threads.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import tiles
from ..alerts import raise_alert
from ..config import Config
from ..delivery.base import StorageTarget
from ..delivery.layout import manifest_key, signature_key
from ..delivery.publish import manifest_token, publish_keys
from ..delivery.recheck import (
    DELIVERY_FAILED,
    TARGET_UNUSABLE,
    target_delivered_in,
)
from ..delivery.repair import docking_complete_in
from ..delivery.targets import retention_for
from ..errors import DeliveryCancelled, DeliveryError
from ..integrity.checkpoint import TOKEN_SUFFIX
from ..lifecycle import retry_delay
from ..store import State, deliveries, iso, parse_iso
from ..store.rows import DueClipRow, DueManifestRow, LandedClipRow
from .deliver_commit import GroupCommit

log = logging.getLogger(__name__)

StopFn = Callable[[], bool]


@dataclass
class DeliveryContext:
    """What every delivery step needs: the configuration, the state, the targets, the
    dock's signing identity (its public key goes out with manifests) and where staging is."""

    cfg: Config
    state: State
    targets_of: Callable[[], Sequence[StorageTarget]]
    """The targets now (the pipeline's list, which a caller may replace)."""
    signer: Any
    staging_dir: Callable[[int], Path]
    landings: GroupCommit = field(init=False)
    """Where every lane records what landed (one transaction for those landing together)."""

    def __post_init__(self) -> None:
        self.landings = GroupCommit(self.state)

    @property
    def targets(self) -> Sequence[StorageTarget]:
        return self.targets_of()

    def required(self) -> set[str]:
        return {t.name for t in self.targets if t.required}


def deliver_clip(ctx: DeliveryContext, r: DueClipRow, target: StorageTarget,
                 should_stop: StopFn) -> bool:
    """Send one clip copy to ``target`` and check it by read-back; True if it landed."""
    if should_stop():
        return False
    started = time.monotonic()
    key = r["key"] or ""
    try:
        if not r["staged_path"]:
            raise DeliveryError(f"{target.name}: {key}: clip has no staged copy", retry=True)
        retention = retention_for(ctx.cfg.retention, r["retention_class"] or
                                  ctx.cfg.retention.default_class,
                                  _aware(r["docked_at"]))
        receipt = target.put_file(Path(r["staged_path"]), key, sha256=r["sha256"],
                                  size=r["size"], retention=retention)
        # one read-back per delivered copy (#13): a put that read back what the key holds
        # after fsync (local, SFTP) has checked it; otherwise the target reads it back now
        if not receipt.verified and \
                not target.verify(key, sha256=r["sha256"], size=r["size"]):
            corrupt_copy(ctx, target, r)
    except DeliveryCancelled:
        log.info("%s: upload of %s stopped (dockd stopping); resumed after restart",
                 target.name, key)
        return False
    except (DeliveryError, OSError) as exc:
        delivery_failed(ctx, "deliveries", r["clip_id"], target, exc)
        return False
    seconds = time.monotonic() - started
    clip_landed(ctx, r["clip_id"], target.name,
                transfer=None if receipt.already_present else (r["size"], seconds))
    return True


def _aware(text: str) -> datetime:
    when = parse_iso(text)
    if when is None:
        raise DeliveryError(f"docking time {text!r} is not a time", retry=False)
    return when


def corrupt_copy(ctx: DeliveryContext, target: StorageTarget, r: DueClipRow) -> None:
    """The copy on the target does not match the clip's SHA-256: move it aside and send
    again where the target allows it; a write-once store needs an operator."""
    key = r["key"] or ""
    quarantine = getattr(target, "quarantine", None)
    if quarantine is None:
        raise DeliveryError(
            f"{target.name}: {key}: the stored copy does not match SHA-256 "
            f"{r['sha256']} and this write-once target cannot replace it: operator "
            "action needed", retry=False)
    moved = quarantine(key)
    ctx.state.audit("quarantined", f"clip/{r['clip_id']}",
                    {"target": target.name, "key": key, "moved_to": moved,
                     "expected_sha256": r["sha256"]})
    raise DeliveryError(f"{target.name}: {key}: copy on target was corrupt (moved to "
                        f"{moved}); sending again", retry=True)


def clip_landed(ctx: DeliveryContext, clip_id: int, target: str,
                transfer: tuple[int, float] | None = None) -> bool:
    """Record a verified copy in one write transaction, shared with the copies other lanes
    landed meanwhile (``ctx.landings``, a group commit; #13: not one fsync per step): the
    delivery is marked delivered, a signed clip on every required target becomes
    delivered, a signed docking a re-sent copy completed becomes delivered again, alerts on
    the target that the landing ends are resolved, and the tiles of dockings waiting for
    this clip are refreshed. Once that committed, the staged copy is dropped when nothing
    needs it any more. Returns whether the staged copy (or the docking's staging folder)
    was removed."""
    state = ctx.state
    required = ctx.required()
    everywhere = required | {t.name for t in ctx.targets}

    def record(conn: sqlite3.Connection) -> tuple[LandedClipRow, bool, bool] | None:
        now = state.now()
        deliveries.mark_delivered(conn, clip_id, target, now)
        if transfer is not None:
            deliveries.record_transfer(conn, now, target, *transfer)
        target_delivered_in(state, conn, target)
        c = deliveries.landed_clip(conn, clip_id)
        if c is None:
            return None
        have = set(json.loads(c["delivered_to"] or "[]"))
        if required <= have and c["clip_state"] == "signed":
            state.advance_clip_in(conn, clip_id, "signed", "delivered", {"delivered_at": now})
            tiles.clip_verified_in(state, conn, c["serial"], clip_id)
        completed = c["docking_state"] == "signed" and \
            docking_complete_in(state, conn, c["docking_id"], required)  # a re-sent copy
        drop = (not ctx.cfg.delivery.keep_staged and bool(c["staged_path"])
                and c["docking_state"] in ("signed", "delivered") and everywhere <= have)
        return c, completed, drop

    done = ctx.landings.run(record)
    if done is None:
        return False
    c, completed, drop = done
    log.info("port %s serial %s: %s verified on %s", c["port"], c["serial"], c["safe_name"],
             target)
    if completed and not ctx.cfg.delivery.keep_staged:
        shutil.rmtree(ctx.staging_dir(c["docking_id"]), ignore_errors=True)
        return True
    return drop and _unlink_staged(c["staged_path"] or "")


def _unlink_staged(staged: str) -> bool:
    try:
        Path(staged).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot remove staged copy %s: %s", staged, exc)
        return False
    return True


def deliver_manifest(ctx: DeliveryContext, m: DueManifestRow, target: StorageTarget,
                     should_stop: StopFn) -> bool:
    """Publish the dock's key, the manifest (with its timestamp token) and its signature on
    ``target``: the docking's commit marker, sent after all its clips. True if it landed."""
    if should_stop():
        return False
    cfg, signer = ctx.cfg, ctx.signer
    try:
        publish_keys(target, cfg, signer.public_pem, signer.key_id)
        token = manifest_token(ctx.state, cfg, m["id"], bytes(m["manifest"]))
        if token is not None:
            target.put_bytes(token, manifest_key(m["prefix"]) + TOKEN_SUFFIX)
        target.put_bytes(bytes(m["manifest"]), manifest_key(m["prefix"]))
        target.put_bytes(bytes(m["signature"]), signature_key(m["prefix"]))
    except DeliveryCancelled:
        return False
    except (DeliveryError, OSError) as exc:
        delivery_failed(ctx, "manifest_deliveries", m["id"], target, exc)
        return False
    manifest_landed(ctx, m["id"], m["docking_id"], target.name)
    return True


def manifest_landed(ctx: DeliveryContext, manifest_id: int, docking_id: int,
                    target: str) -> None:
    state = ctx.state
    required = ctx.required()
    with state.tx() as conn:
        deliveries.mark_manifest_delivered(conn, manifest_id, target, state.now())
        state.audit("delivered_to", f"docking/{docking_id}",
                    {"target": target, "manifest_id": manifest_id}, conn=conn)
        have = deliveries.manifest_targets(conn, manifest_id)
        undelivered = deliveries.count_clips(conn, docking_id, "signed")
        d = deliveries.docking_who(conn, docking_id)
        finished = (d is not None and required <= have and undelivered == 0
                    and d.get("state") == "signed")
        if finished:
            state.advance_docking_in(conn, docking_id, "signed", "delivered",
                                     {"delivered_at": state.now()})
            state.audit("delivered", f"docking/{docking_id}",
                        {"targets": sorted(have)}, conn=conn)
            tiles.refresh_delivered_message_in(state, conn, docking_id)
        target_delivered_in(state, conn, target)
    if finished and d is not None:
        log.info("port %s serial %s: docking %d delivered and verified on %s", d.get("port"),
                 d.get("serial"), docking_id, ", ".join(sorted(have)))
        if not ctx.cfg.delivery.keep_staged:
            shutil.rmtree(ctx.staging_dir(docking_id), ignore_errors=True)


def delivery_failed(ctx: DeliveryContext, table: deliveries.Table, ident: int,
                    target: StorageTarget, exc: BaseException) -> None:
    """A failed attempt: backoff (or ``failed`` for good when the store refused the content),
    an alarm where an operator must act, and a log line naming the recorder."""
    state, cfg = ctx.state, ctx.cfg
    retry = bool(getattr(exc, "retry", True))
    unusable = bool(getattr(exc, "target_state", False))
    attempts = deliveries.attempts_of(state, table, ident, target.name) + 1
    delay = retry_delay(attempts, cfg.delivery.retry_seconds)
    retry_after = getattr(exc, "retry_after", None)
    if retry and retry_after:  # the server said when (503 Slow Down, Retry-After)
        delay = max(delay, float(retry_after))
    now = state.clock()
    next_try = datetime.fromtimestamp(now.timestamp() + delay, tz=now.tzinfo)
    with state.tx() as conn:
        deliveries.record_failure(conn, table, ident, target.name, attempts=attempts,
                                  error=str(exc), next_try=iso(next_try), retry=retry)
        if not retry:
            state.audit("delivery_failed", f"{table}/{ident}",
                        {"target": target.name, "error": str(exc)}, conn=conn)
    if not retry:
        raise_alert(state, level="alarm", kind=DELIVERY_FAILED, subject=f"target/{target.name}",
                    message=f"{target.describe()}: the store refused the content, not "
                            f"retrying (fix it, then `dockd retry`): {exc}",
                    command=cfg.delivery.alert_command)
    elif unusable:
        raise_alert(state, level="alarm", kind=TARGET_UNUSABLE, subject=f"target/{target.name}",
                    message=f"{target.describe()}: target unusable, retrying with "
                            f"backoff until it is fixed: {exc}",
                    command=cfg.delivery.alert_command)
    level = logging.WARNING if retry and not unusable else logging.ERROR
    who = (deliveries.who_clip(state, ident) if table == "deliveries"
           else deliveries.who_manifest(state, ident))
    log.log(level, "port %s serial %s: delivery of %s to %s failed (attempt %d, %s): %s",
            who.get("port"), who.get("serial"), who.get("safe_name"), target.name, attempts,
            "will retry" if retry else "permanent, not retrying", exc)


class UnexpectedError(DeliveryError):
    """An exception no delivery step expected (a bug, a library's surprise): recorded as a
    failed attempt with backoff, like a network error, so the worker carries on."""

    def __init__(self, exc: BaseException):
        super().__init__(f"unexpected {type(exc).__name__}: {exc}", retry=True)
