"""The ``devices`` and ``top`` subcommands' arguments, without their renderers.

Registering a subcommand must not import what it renders with: ``dockd status --json``
(run by monitoring every few seconds) builds the whole parser, and the rich-based views
of ``devices`` and ``top`` cost more start-up than its query (#13: status under 200 ms).
Each ``func`` imports its module when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from ..config import Config

Command = Callable[[Config, argparse.Namespace], int]


def lazy(module: str, name: str) -> Command:
    """``func`` for a subcommand whose code lives in ``module`` (imported when it runs)."""
    def run(cfg: Config, args: argparse.Namespace) -> int:
        fn: Command = getattr(importlib.import_module(module), name)
        return fn(cfg, args)
    run.__name__ = name
    return run


def add_devices_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    p = subparsers.add_parser("devices", parents=list(parents),
                              help="recorders: health, clock and fit for the next shift (R9, R10)")
    p.add_argument("--serial", help="one recorder, with its health history")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=lazy("dockd.status.devices", "cmd_devices"))


def add_top_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register ``top`` on an argparse subparsers object (``parents``: common options)."""
    p = subparsers.add_parser("top", parents=list(parents),
                              help="live dashboard: ports, backlog, deadlines, alarms (q quits)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="refresh interval (default 1 s)")
    p.set_defaults(func=lazy("dockd.status.top", "cmd_top"))
