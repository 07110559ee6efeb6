"""Command line: a thin argparse layer over the library. Every command takes
``--config PATH`` and ``--workdir DIR``; read-out commands take ``--json``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, logredact, secrets
from .cli_text import language_from_locale, set_language, tr
from .config import Config, default_config, load, schema_keys
from .errors import ConfigError, DockdError

log = logging.getLogger("dockd")


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", type=Path, metavar="PATH",
                   help="TOML configuration file (default: $DOCKD_CONFIG, else "
                        "/etc/dockd/config.toml when it exists)")
    p.add_argument("--workdir", type=Path, metavar="DIR",
                   help="keep state, staging, keys, ports and a local target under DIR")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("--lang", choices=("en", "zh"), default=argparse.SUPPRESS,
                   help="language of the output for people (default: the locale's; "
                        "JSON stays English)")
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

    from .status.commands import add_devices_parser, add_top_parser
    add_devices_parser(sub, parents=[common])

    from .devices.ports_cli import add_ports_parser
    add_ports_parser(sub, parents=[common])

    add_top_parser(sub, parents=[common])

    from .operator import add_operator_parsers
    add_operator_parsers(sub, parents=[common])

    p = sub.add_parser("ingest", parents=[common],
                       help="one-shot import of a recorder tree mounted at PATH")
    p.add_argument("path", type=Path)
    p.add_argument("--port", default="manual", help="port label recorded in the manifest")
    p.add_argument("--create-key", action="store_true",
                   help="create the dock's signing key if it is missing (implied by --workdir)")
    p.add_argument("--reverify", action="store_true",
                   help="at the end, re-read every delivered byte on local targets (each copy "
                        "is already read back once as it lands)")
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
                   help="public key file of a dock you trust (repeatable); its rotations "
                        "are followed through the signed key history")
    p.add_argument("--trust", type=Path, action="append", default=[], metavar="FILE",
                   help="trust file: one 'DOCK-ID ed25519:FINGERPRINT' per line (repeatable)")
    p.add_argument("--tsa-cert", type=Path, action="append", default=[], metavar="PEM",
                   help="certificate of a Time-Stamp Authority (or its CA) you trust")
    p.add_argument("--max-checkpoint-age", type=float, metavar="HOURS",
                   help="fail when a dock's newest checkpoint is older (default: "
                        "integrity.checkpoint_max_age_hours; 0 = only report)")
    _json_flag(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("keygen", parents=[common], help="create the dock's Ed25519 signing key")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    _json_flag(p)
    p.set_defaults(func=cmd_keygen)

    from .custody.cli import add_custody_parsers
    add_custody_parsers(sub, parents=[common])

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
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (`dockd devices --json | head`): no traceback, and no second
        # error when Python flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_language(getattr(args, "lang", None) or language_from_locale())
    if args.config is None:
        args.config = default_config()
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
        print(tr("error", error=exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


# ----------------------------------------------------------------------------- commands


def refuse_unfit(cfg: Config, where: Path | None) -> int:
    """Print the ways ``cfg`` does not fit this machine (as config-check does); 0 if none."""
    from .preflight import machine_problems

    problems = machine_problems(cfg)
    if not problems:
        return 0
    print(tr("refuse", where=where or "configuration", n=len(problems)), file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 2


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from .daemon import Daemon

    if rc := refuse_unfit(cfg, args.config):
        return rc
    return Daemon(cfg, require_web=True).run()


def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.notes_model:
        import dataclasses

        cfg = dataclasses.replace(cfg, notes=dataclasses.replace(
            cfg.notes, model_dir=str(args.notes_model.absolute())))
    return run_demo(cfg, workdir_given=args.workdir is not None, timeout=args.timeout)


def cmd_ingest(cfg: Config, args: argparse.Namespace) -> int:
    from .ingest.progress import IngestProgress
    from .oneshot import ingest_tree

    if rc := refuse_unfit(cfg, args.config):
        return rc
    with IngestProgress() as progress:
        result = ingest_tree(cfg, args.path, port=args.port, progress=progress,
                             create_key=args.create_key or args.workdir is not None,
                             reverify=args.reverify)
    if args.json:
        _print_json(result)
    else:
        print(tr("ingest.summary", docking=result["docking_id"],
                 done=result["clips_delivered"], total=result["clips_total"],
                 targets=", ".join(result["targets"]))
              + (tr("ingest.known", n=result["skipped_known"])
                 if result["skipped_known"] else ""))
        for problem in result["problems"]:
            print(tr("ingest.problem", problem=problem))
        if result["findings"]:
            print(tr("ingest.findings", n=len(result["findings"])))
            for f in result["findings"]:
                print(f"  {f['severity']}: {f['message']}")
        print(tr("ingest.manifest", sha=result["manifest_sha256"]))
    return 0 if result["ok"] else 1


def _readout(cfg: Config, args: argparse.Namespace, data_fn: Any, render_fn: Any) -> int:
    """The read-out commands' shape: read the state (read-only), print JSON or rich."""
    from .store import open_readonly

    with open_readonly(cfg.paths.database) as state:
        data = data_fn(state)
    if args.json:
        _print_json(data)
    else:
        from rich.console import Console

        console = Console()
        console.print(render_fn(data, console))
    return 0


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    from .status.views import render_status, status_data
    from .store import utcnow

    return _readout(cfg, args, lambda st: status_data(st, cfg.dock.id, utcnow()),
                    lambda data, console: render_status(data, width=console.width, tz=cfg.tz))


def cmd_queue(cfg: Config, args: argparse.Namespace) -> int:
    from .status.queue import queue_data
    from .status.queue_view import render_queue
    from .store import utcnow

    return _readout(cfg, args, lambda st: queue_data(st, cfg, utcnow()),
                    lambda data, _console: render_queue(data, cfg.tz))


def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    from .status.report import render_report, report_data

    return _readout(cfg, args,
                    lambda st: report_data(st, docking_id=args.docking, serial=args.serial,
                                           limit=args.limit),
                    lambda data, _console: render_report(data, cfg.tz))


def cmd_verify(cfg: Config, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from .integrity.keyhistory import TrustedKey, local_records, parse_record, parse_trust_file
    from .integrity.keys import key_id, load_public_key
    from .integrity.tsa import load_tsa_certs
    from .integrity.verify import Trust, format_report, verify_path

    hours = (args.max_checkpoint_age if args.max_checkpoint_age is not None
             else cfg.integrity.checkpoint_max_age_hours)
    trust = Trust(tsa_roots=load_tsa_certs(args.tsa_cert),
                  max_checkpoint_age=timedelta(hours=hours) if hours > 0 else None)
    for p in args.pubkey:
        k = load_public_key(p)
        trust.anchors[key_id(k)] = TrustedKey(k, None, f"given ({p.name})")
    for f in args.trust:
        for dock, kid in parse_trust_file(f):
            trust.anchors[kid] = TrustedKey(None, dock, f"trust file {f.name}")
    on_dock = args.config is not None or args.workdir is not None or (
        cfg.paths.public_key_file.exists())
    if not trust.anchors and on_dock and cfg.paths.public_key_file.exists():
        k = load_public_key(cfg.paths.public_key_file)
        trust.anchors[key_id(k)] = TrustedKey(k, cfg.dock.id, "this dock's key")
        for kid, data in local_records(cfg.paths.public_key_file).items():
            rec = parse_record(data)
            if rec.dock == cfg.dock.id:
                trust.anchors.setdefault(kid, TrustedKey(rec.public_key, rec.dock,
                                                         "this dock's key history"))
    report = verify_path(args.path, trust=trust)
    from .custody.cli import audit_on_dock

    audit_on_dock(cfg, "verified", f"path/{Path(args.path).absolute()}",
                  {"ok": report.ok, "trusted": report.trusted, "manifests": report.manifests,
                   "files": report.files, "problems": len(report.problems),
                   "keys": sorted(trust.anchors)})
    if args.json:
        _print_json({"ok": report.ok, "trusted": report.trusted,
                     "verdict": ("UNTRUSTED" if not report.trusted
                                 else "OK" if report.ok else "FAILED"),
                     "manifests": report.manifests, "files": report.files,
                     "problems": report.problems, "warnings": report.warnings,
                     "info": report.info})
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def cmd_keygen(cfg: Config, args: argparse.Namespace) -> int:
    from .integrity.keyhistory import keygen
    from .store import utcnow

    kid, old = keygen(cfg.dock.id, cfg.paths.key_file, cfg.paths.public_key_file, utcnow(),
                      force=args.force)
    from .custody.cli import audit_on_dock  # a dock in service: the rotation is on its record

    audit_on_dock(cfg, "key_rotated" if old else "key_created", f"dock/{cfg.dock.id}",
                  {"key_id": kid, "previous_key_id": old})
    if args.json:
        _print_json({"key_id": kid, "previous_key_id": old, "dock": cfg.dock.id,
                     "private_key": str(cfg.paths.key_file),
                     "public_key": str(cfg.paths.public_key_file)})
    else:
        print(f"{'rotated to' if old else 'created'} signing key {kid} (dock {cfg.dock.id})")
        if old:
            print(f"  previous key {old} signed the rotation record; it is delivered to the "
                  "targets with the next manifest or checkpoint")
        print(f"  private: {cfg.paths.key_file} (mode 0600, never leaves this dock)")
        print(f"  public:  {cfg.paths.public_key_file} (give this to reviewers)")
    return 0


def cmd_config_check(_cfg: Config | None, args: argparse.Namespace) -> int:
    from .preflight import check

    cfg, problems = check(args.config, workdir=args.workdir)
    if problems or cfg is None:
        if args.json:
            _print_json({"ok": False, "problems": problems})
        else:
            print(tr("check.problems", where=args.config or "defaults", n=len(problems)))
            for p in problems:
                print(f"  {p}")
        return 1
    from .integrity.notes import model_warning

    warnings = [w for w in (model_warning(cfg.notes.model_dir, cfg.notes.enabled),) if w]
    if args.json:
        _print_json({"ok": True, "keys": schema_keys(), "dock": cfg.dock.id,
                     "warnings": warnings})
    else:
        print(tr("check.ok", where=args.config or "defaults", dock=cfg.dock.id,
                 targets=len(cfg.targets), profiles=len(cfg.profiles)))
        for w in warnings:
            print(f"  warning: {w}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
