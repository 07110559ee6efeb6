"""Deliveries that failed, tried again: ``dockd retry [--target NAME]`` and the automatic
re-check at start-up (a configuration change takes effect with a restart, so it is
re-checked then too), and the alarms that clear once a target delivers again."""

from __future__ import annotations

import logging
import sqlite3

from ..store import State, deliveries
from ..store import alerts as alert_store

log = logging.getLogger(__name__)

TARGET_UNUSABLE = "target_unusable"
"""Alert kind: the target itself cannot take anything now (read-only, not a directory,
permission, key or credentials, authentication); retried with backoff until it can."""
DELIVERY_FAILED = "delivery_failed"
"""Alert kind: the store refused some content (conflict, write-once copy wrong)."""


def retry_deliveries(state: State, target: str | None = None, *, actor: str = "operator",
                     why: str = "retry requested") -> int:
    """Set failed deliveries (clips and manifests) of ``target`` (all when None) back to
    pending and due now; pending ones waiting out a backoff are due now too. Returns how many
    failed ones were set back."""
    with state.tx() as conn:
        n = deliveries.retry_failed(conn, target)
        if n:
            state.audit("delivery_retry", f"target/{target or '*'}",
                        {"failed_set_back": n, "why": why}, actor=actor, conn=conn)
    if n:
        log.info("%s: %d failed deliver%s to %s set back to pending", why, n,
                 "y" if n == 1 else "ies", target or "every target")
    return n


def target_delivered_in(state: State, conn: sqlite3.Connection, target: str) -> list[str]:
    """Something landed verified on ``target``, inside the caller's transaction (a landed
    copy's record): the target is usable again; and once nothing of it is failed any more,
    its failure alarm is over too. One read of the open alerts when none is open on the
    target, as nearly always. Returns the kinds resolved."""
    subject = f"target/{target}"
    kinds = alert_store.open_kinds(conn, subject, (TARGET_UNUSABLE, DELIVERY_FAILED))
    if DELIVERY_FAILED in kinds and deliveries.failed_count_in(conn, target) != 0:
        kinds.discard(DELIVERY_FAILED)
    now = state.now()
    for kind in sorted(kinds):
        alert_store.resolve(conn, kind, subject, now)
    return sorted(kinds)
