"""Alerts: deadline warnings/alarms and permanent delivery failures.

An alert is raised once per (kind, subject) until resolved: it is stored (status and
metrics show it), logged (journald: WARNING for warnings, ERROR for alarms) and handed to
the admin's hook command (``delivery.alert_command``) so mail/SMS/IM can be wired without
code. The hook runs with a timeout; its failure is logged, never fatal.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from typing import Any

from .status.queue import queue_forecasts
from .store import Reader, State
from .store import alerts as store

log = logging.getLogger(__name__)


def raise_alert(state: State, *, level: str, kind: str, subject: str, message: str,
                command: str = "", timeout: float = 30.0) -> bool:
    """Record and announce an alert; returns False if the same one is already open."""
    with state.tx() as conn:
        open_row = store.open_alert(conn, kind, subject)
        if open_row is not None and open_row["level"] == level:
            return False
        if open_row is not None:  # escalation (warning -> alarm): close the old one
            store.resolve_alert_id(conn, open_row["id"], state.now())
        alert_id = store.insert_alert(conn, ts=state.now(), level=level, kind=kind,
                                      subject=subject, message=message)
        state.audit("alert", subject, {"level": level, "kind": kind, "message": message},
                    conn=conn)
    log.log(logging.ERROR if level == "alarm" else logging.WARNING, "%s %s: %s: %s",
            level.upper(), kind, subject, message)
    if command:
        status = run_hook(command, level=level, kind=kind, subject=subject, message=message,
                          timeout=timeout)
        with state.tx() as conn:
            store.set_hook_status(conn, alert_id, status)
    return True


def resolve_alerts(state: State, kind: str, subject: str) -> int:
    with state.tx() as conn:
        return store.resolve(conn, kind, subject, state.now())


def open_alerts(state: Reader) -> list[dict[str, Any]]:
    return [dict(a) for a in store.open_alerts(state)]


def run_hook(command: str, *, level: str, kind: str, subject: str, message: str,
             timeout: float = 30.0) -> str:
    env = dict(os.environ, DOCKD_ALERT_LEVEL=level, DOCKD_ALERT_KIND=kind,
               DOCKD_ALERT_SUBJECT=subject, DOCKD_ALERT_MESSAGE=message)
    try:
        proc = subprocess.run(shlex.split(command), env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("alert hook %r failed: %s", command, exc)
        return f"failed: {exc}"
    if proc.returncode != 0:
        log.error("alert hook %r exited %d: %s", command, proc.returncode,
                  proc.stderr.strip()[-500:])
        return f"exit {proc.returncode}"
    return "ok"


def check_deadlines(state: State, cfg: Any, now: Any) -> list[dict[str, Any]]:
    """Raise/resolve deadline alerts from the queue forecast; returns the open ones."""
    q = queue_forecasts(state, cfg, now)
    seen = set()
    for f in q["dockings"]:
        subject = f"docking/{f.docking_id}"
        seen.add(subject)
        if f.level == "ok":
            resolve_alerts(state, "deadline", subject)
            continue
        raise_alert(state, level=f.level, kind="deadline", subject=subject,
                    message=f"recorder {f.serial} ({f.port}): " + "; ".join(f.reasons),
                    command=cfg.delivery.alert_command)
    for subject in store.open_subjects(state, "deadline"):
        if subject not in seen:  # delivered since
            resolve_alerts(state, "deadline", subject)
    return open_alerts(state)
