"""Command line: a thin argparse layer over the library. Every command takes
``--config PATH`` and ``--workdir DIR``; read-out commands take ``--json``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, logredact, secrets
from .config import Config, load, schema_keys
from .errors import ConfigError, DockdError

log = logging.getLogger("dockd")


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", type=Path, metavar="PATH", help="TOML configuration file")
    p.add_argument("--workdir", type=Path, metavar="DIR",
                   help="keep state, staging, keys, ports and a local target under DIR")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return p


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="dockd", parents=[common],
        description="Docking-station daemon for body-worn recorders: offload, check, sign, "
                    "deliver.")
    parser.add_argument("--version", action="version", version=f"dockd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run the daemon (watch the dock's ports)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", parents=[common],
                       help="simulate a dock session end to end on a local target")
    p.add_argument("--keep-going", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=300.0, help="give up after SECONDS")
    p.add_argument("--notes-model", type=Path, metavar="DIR",
                   help="faster-whisper model directory for spoken-note reasons "
                        "(make demo passes the base model it fetched)")
    p.set_defaults(func=cmd_demo)

    from .devices.simulator import add_simulate_parser
    add_simulate_parser(sub, parents=[common])

    from .status.devices import add_devices_parser
    add_devices_parser(sub, parents=[common])

    from .devices.ports import add_ports_parser
    add_ports_parser(sub, parents=[common])

    from .status.top import add_top_parser
    add_top_parser(sub, parents=[common])

    p = sub.add_parser("ingest", parents=[common],
                       help="one-shot import of a recorder tree mounted at PATH")
    p.add_argument("path", type=Path)
    p.add_argument("--port", default="manual", help="port label recorded in the manifest")
    _json_flag(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("status", parents=[common], help="ports, backlog and deadlines")
    _json_flag(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("queue", parents=[common],
                       help="delivery backlog by deadline, forecast and alerts (R3)")
    _json_flag(p)
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("report", parents=[common],
                       help="recording timelines: gaps and spoken notes per docking (R1, R2)")
    p.add_argument("--docking", type=int, help="only this docking")
    p.add_argument("--serial", help="only this recorder")
    p.add_argument("--limit", type=int, default=20, help="at most this many dockings (newest)")
    _json_flag(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("verify", parents=[common],
                       help="verify delivered files against their signed manifests (offline)")
    p.add_argument("path", type=Path, help="target directory, docking directory or one clip")
    p.add_argument("--pubkey", type=Path, action="append", default=[],
                   help="trusted public key file (repeatable); default: the dock's own key, "
                        "else the keys published on the target")
    _json_flag(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("keygen", parents=[common], help="create the dock's Ed25519 signing key")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    _json_flag(p)
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("config-check", parents=[common],
                       help="check a configuration file; report every problem")
    _json_flag(p)
    p.set_defaults(func=cmd_config_check)
    return parser


def setup_logging(verbose: int, level: str = "INFO") -> None:
    lvl = logging.DEBUG if verbose else getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logredact.install(level=lvl)  # no credential in any line, at any level


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "config-check":
        return cmd_config_check(None, args)
    try:
        cfg = load(args.config, workdir=args.workdir)
    except ConfigError as exc:
        print(f"dockd: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.verbose, cfg.logging.level)
    try:
        cfg = secrets.with_credentials(cfg, args.config)
    except ConfigError as exc:
        print(f"dockd: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(cfg, args) or 0)
    except DockdError as exc:
        print(f"dockd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


# ----------------------------------------------------------------------------- commands


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from .daemon import Daemon

    return Daemon(cfg).run()


def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.notes_model:
        import dataclasses

        cfg = dataclasses.replace(cfg, notes=dataclasses.replace(
            cfg.notes, model_dir=str(args.notes_model.absolute())))
    return run_demo(cfg, workdir_given=args.workdir is not None, timeout=args.timeout)


def cmd_ingest(cfg: Config, args: argparse.Namespace) -> int:
    from .oneshot import ingest_tree

    result = ingest_tree(cfg, args.path, port=args.port)
    if args.json:
        _print_json(result)
    else:
        print(f"docking {result['docking_id']}: {result['clips_delivered']}/"
              f"{result['clips_total']} clip(s) delivered and verified to "
              f"{', '.join(result['targets'])}"
              + (f", {result['skipped_known']} already delivered earlier"
                 if result["skipped_known"] else ""))
        for problem in result["problems"]:
            print(f"  problem: {problem}")
        print(f"manifest {result['manifest_sha256']}")
    return 0 if result["ok"] else 1


def _readout(cfg: Config, args: argparse.Namespace, data_fn: Any, render_fn: Any) -> int:
    """The read-out commands' shape: read the state (read-only), print JSON or rich."""
    from rich.console import Console

    from .state import open_readonly

    with open_readonly(cfg.paths.database) as state:
        data = data_fn(state)
    if args.json:
        _print_json(data)
    else:
        console = Console()
        console.print(render_fn(data, console))
    return 0


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    from .state import utcnow
    from .status.views import render_status, status_data

    return _readout(cfg, args, lambda st: status_data(st, cfg.dock.id, utcnow()),
                    lambda data, console: render_status(data, width=console.width))


def cmd_queue(cfg: Config, args: argparse.Namespace) -> int:
    from .state import utcnow
    from .status.queue import queue_data, render_queue

    return _readout(cfg, args, lambda st: queue_data(st, cfg, utcnow()),
                    lambda data, _console: render_queue(data))


def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    from .status.report import render_report, report_data

    return _readout(cfg, args,
                    lambda st: report_data(st, docking_id=args.docking, serial=args.serial,
                                           limit=args.limit),
                    lambda data, _console: render_report(data))


def cmd_verify(cfg: Config, args: argparse.Namespace) -> int:
    from .integrity.keys import key_id, load_public_key
    from .integrity.verify import format_report, verify_path

    keys = {}
    paths = list(args.pubkey)
    if not paths and cfg.paths.public_key_file.exists():
        paths.append(cfg.paths.public_key_file)
    for p in paths:
        k = load_public_key(p)
        keys[key_id(k)] = k
    report = verify_path(args.path, keys or None)
    if args.json:
        _print_json({"ok": report.ok, "manifests": report.manifests, "files": report.files,
                     "problems": report.problems, "warnings": report.warnings})
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def cmd_keygen(cfg: Config, args: argparse.Namespace) -> int:
    from .integrity.keys import generate_key

    kid = generate_key(cfg.paths.key_file, cfg.paths.public_key_file, overwrite=args.force)
    if args.json:
        _print_json({"key_id": kid, "private_key": str(cfg.paths.key_file),
                     "public_key": str(cfg.paths.public_key_file)})
    else:
        print(f"created signing key {kid}")
        print(f"  private: {cfg.paths.key_file} (mode 0600, never leaves this dock)")
        print(f"  public:  {cfg.paths.public_key_file} (give this to reviewers)")
    return 0


def cmd_config_check(_cfg: Config | None, args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config, workdir=args.workdir)
    except ConfigError as exc:
        if args.json:
            _print_json({"ok": False, "problems": exc.problems})
        else:
            print(f"{args.config or 'defaults'}: {len(exc.problems)} problem(s):")
            for p in exc.problems:
                print(f"  {p}")
        return 1
    if args.json:
        _print_json({"ok": True, "keys": schema_keys(), "dock": cfg.dock.id})
    else:
        print(f"{args.config or 'defaults'}: OK (dock {cfg.dock.id}, {len(cfg.targets)} "
              f"target(s), {len(cfg.profiles)} profile(s))")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
