"""Operator commands that change what the dock waits for: ``dockd ack PORT`` (the officer
was told about an incomplete copy) and ``dockd retry [--target NAME]`` (a failed delivery
may succeed now). Both write to the state database; a running daemon sees the change on
its next pass (within a second for deliveries)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .config import Config
from .store import State, require_database


def add_operator_parsers(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    p = sub.add_parser("ack", parents=list(parents),
                       help="acknowledge an incomplete copy shown on PORT (clips stay on the "
                            "recorder; plugging it back in copies them)")
    p.add_argument("port", nargs="?", help="port label, e.g. port-03")
    p.add_argument("--docking", type=int, help="acknowledge this docking instead")
    p.add_argument("--by", default="operator", help="who acknowledges (for the audit trail)")
    p.set_defaults(func=cmd_ack)

    p = sub.add_parser("retry", parents=list(parents),
                       help="try failed deliveries again now (after fixing the target)")
    p.add_argument("--target", help="only this target (a name from the configuration)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_retry)


def _writable_state(cfg: Config) -> State:
    require_database(cfg.paths.database)  # a clear error, not a new empty database
    return State(cfg.paths.database)


def cmd_ack(cfg: Config, args: argparse.Namespace) -> int:
    if not args.port and args.docking is None:
        print("dockd ack: give a PORT or --docking N", file=sys.stderr)
        return 2
    with _writable_state(cfg) as state:
        from .tiles import acknowledge  # here: registering the parser stays light

        done = acknowledge(state, port=args.port, docking_id=args.docking, actor=args.by)
    if not done:
        what = f"docking {args.docking}" if args.docking is not None else f"port {args.port}"
        print(f"dockd ack: nothing to acknowledge on {what} (no incomplete copy open)",
              file=sys.stderr)
        return 1
    print(f"acknowledged incomplete docking {done[0]}")
    return 0


def cmd_retry(cfg: Config, args: argparse.Namespace) -> int:
    names = [t.name for t in cfg.targets]
    if args.target is not None and args.target not in names:
        print(f"dockd retry: no target named {args.target!r} (configured: "
              f"{', '.join(names) or 'none'})", file=sys.stderr)
        return 2
    from .delivery.recheck import retry_deliveries

    with _writable_state(cfg) as state:
        n = retry_deliveries(state, args.target, actor="operator")
    if args.json:
        print(json.dumps({"target": args.target, "set_back": n}))
    else:
        print(f"{n} failed deliver{'y' if n == 1 else 'ies'} set back to pending"
              + (f" for {args.target}" if args.target else "")
              + ("; the daemon sends them on its next pass" if n else ""))
    return 0
