"""Commands for custody: ``dockd audit show|verify``, ``dockd label``, ``dockd retain``,
``dockd export``. Each person-run change is audited with the OS user running it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..config import Config


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def add_custody_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", parents=parents,
                       help="the audit trail (R8): show entries or verify the chain")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    s = asub.add_parser("show", parents=parents, help="list audit entries")
    s.add_argument("--subject", help="e.g. docking/12 or clip/7 (substring match)")
    s.add_argument("--action", help="e.g. export, label, retention_change, cleared")
    s.add_argument("--actor", help="substring of the actor, e.g. user:alice")
    s.add_argument("--since", help="ISO time (UTC), inclusive")
    s.add_argument("--until", help="ISO time (UTC), inclusive")
    s.add_argument("--limit", type=int, default=0, help="only the newest N entries")
    s.add_argument("path", nargs="?", type=Path,
                   help="a delivered copy (target root or export package) instead of the dock")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    s.set_defaults(func=cmd_audit_show)
    v = asub.add_parser("verify", parents=parents,
                        help="check the hash chain; name the first bad entry")
    v.add_argument("path", nargs="?", type=Path,
                   help="a delivered copy (target root, its _audit directory or an export "
                        "package) instead of the dock's database")
    v.add_argument("--pubkey", type=Path, action="append", default=[],
                   help="trusted public key for a delivered copy (repeatable)")
    v.add_argument("--against", type=Path, metavar="TARGET",
                   help="also compare the dock's entries with the signed copy delivered to "
                        "TARGET (a target root)")
    v.add_argument("--json", action="store_true", help="print machine-readable JSON")
    v.set_defaults(func=cmd_audit_verify)

    p = sub.add_parser("label", parents=parents,
                       help="attach case number, party, handler, note to a docking or clips (R4)")
    p.add_argument("--docking", type=int, required=True)
    p.add_argument("--clip", action="append", default=[],
                   help="stored clip name or clip id (repeatable); default: the docking")
    p.add_argument("--case-no", help="case number (案件编号)")
    p.add_argument("--party", help="party name (当事人)")
    p.add_argument("--handler", help="case handler (办案人)")
    p.add_argument("--note", help="free text: place, content")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("retain", parents=parents,
                       help="raise the retention class of clips (R7; never lowers; "
                            "permanent = legal hold)")
    p.add_argument("--docking", type=int, required=True)
    p.add_argument("--clip", action="append", default=[],
                   help="stored clip name or clip id (repeatable); default: every clip")
    p.add_argument("--class", dest="retention_class", required=True,
                   choices=["routine", "standard", "evidence", "permanent"])
    p.add_argument("--reason", default="", help="why (recorded in the revision and audit)")
    p.add_argument("--approver", help="who approved (recorded in the audit trail)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_retain)

    p = sub.add_parser("export", parents=parents,
                       help="approved evidence export (R8, R12): package + description")
    p.add_argument("--docking", type=int, action="append", default=[], required=True,
                   help="docking to export (repeatable)")
    p.add_argument("--clip", action="append", default=[],
                   help="only these clips (stored name or id; repeatable)")
    p.add_argument("--requester", help="who asked for the copy (required)")
    p.add_argument("--approver", help="who approved it (required)")
    p.add_argument("--reason", help="why (required)")
    p.add_argument("--place", default="", help="extraction place (default: the dock's site)")
    p.add_argument("--out", type=Path, required=True, help="new directory for the package")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_export)


def _state(cfg: Config) -> Any:
    from ..store import open_readonly

    return open_readonly(cfg.paths.database)


def _slice(path: Path) -> Path:
    return path / "_export" / "audit-slice.jsonl"


def _segments_of(path: Path) -> list[Path]:
    from ..integrity.audit import AUDIT_DIR

    base = path / AUDIT_DIR if (path / AUDIT_DIR).is_dir() else path
    return sorted(f for f in base.glob("*/*.jsonl")) or sorted(base.glob("*.jsonl"))


def cmd_audit_show(cfg: Config, args: argparse.Namespace) -> int:
    from ..integrity.audit import db_entries, entries_of_segments, filter_entries

    if args.path is not None and _slice(args.path).is_file():
        entries = [json.loads(line) for line in
                   _slice(args.path).read_text(encoding="utf-8").splitlines()]
    elif args.path is not None:
        files = _segments_of(args.path)
        if not files:
            from ..errors import VerifyError

            raise VerifyError(f"{args.path}: no delivered audit trail (_audit/) or export "
                              "audit slice here")
        entries = entries_of_segments(files)
    else:
        with _state(cfg) as state:
            entries = db_entries(state)
    rows = filter_entries(entries, subject=args.subject, action=args.action, actor=args.actor,
                          since=args.since, until=args.until)
    if args.limit:
        rows = rows[-args.limit:]
    if args.json:
        _print_json(rows)
        return 0
    from ..integrity.manifest import printable_path as safe

    for e in rows:  # names and notes come from people: never print control characters raw
        detail = json.dumps(e["detail"], ensure_ascii=False, sort_keys=True)
        print(safe(f"{e['id']:>6} {e['ts'][:19]}Z {e['action']:<18} {e['subject']:<16} "
                   f"{e['actor']}  {detail}"))
    print(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")
    return 0


def cmd_audit_verify(cfg: Config, args: argparse.Namespace) -> int:
    from ..integrity.audit import (
        AUDIT_DIR,
        ChainReport,
        chain_head,
        compare_with_delivered,
        db_entries,
        verify_db,
        verify_segments,
    )

    if args.path is None:
        with _state(cfg) as state:
            report = verify_db(state)
            head = chain_head(state)
            mine = db_entries(state)
        where = str(cfg.paths.database)
        heads = {cfg.dock.id: head}
        if args.against is not None and report.ok:
            delivered: list[dict[str, Any]] = []
            copy, _ = verify_segments(args.against / AUDIT_DIR,
                                      _trusted_keys(cfg, args.pubkey), collect=delivered)
            report.problems.extend(copy.problems)
            if not delivered and not copy.problems:
                report.problems.append(f"{args.against}: no delivered audit trail")
            cmp = compare_with_delivered(mine, delivered)
            report.problems.extend(cmp.problems)
            report.first_bad = cmp.first_bad
    elif _slice(args.path).is_file() and not (args.path / AUDIT_DIR).is_dir():
        from ..integrity.custody_verify import check_slice

        report = ChainReport(len(_slice(args.path).read_bytes().splitlines()))
        check_slice(_slice(args.path), "_export/audit-slice.jsonl", report.problems)
        where, heads = f"{args.path} (audit slice of an export; see dockd verify)", {}
    else:
        keys = _trusted_keys(cfg, args.pubkey)
        audit_dir = args.path / AUDIT_DIR if (args.path / AUDIT_DIR).is_dir() else args.path
        report, heads = verify_segments(audit_dir, keys)
        where = str(args.path)
        if report.entries == 0 and not report.problems:
            report.problems.append(f"{where}: no audit segments found")
    if args.json:
        _print_json({"ok": report.ok, "entries": report.entries, "problems": report.problems,
                     "first_bad": report.first_bad, "heads": heads})
    else:
        print(f"{'OK' if report.ok else 'FAILED'}: audit trail {where}: {report.entries} "
              f"entr{'y' if report.entries == 1 else 'ies'}, {len(report.problems)} problem(s)")
        for p in report.problems:
            print(f"  PROBLEM  {p}")
        for dock, h in sorted(heads.items()):
            print(f"  head     {dock}: entry {h['id']} {h['hash']}")
    return 0 if report.ok else 1


def _trusted_keys(cfg: Config, paths: list[Path]) -> dict[str, Any]:
    from ..integrity.keys import key_id, load_public_key

    paths = list(paths)
    if not paths and cfg.paths.public_key_file.exists():
        paths.append(cfg.paths.public_key_file)
    keys = {}
    for p in paths:
        k = load_public_key(p)
        keys[key_id(k)] = k
    return keys


def _open_rw(cfg: Config) -> tuple[Any, Any, list[Any]]:
    from ..daemon import load_signer
    from ..delivery.targets import open_targets
    from ..errors import StateError
    from ..store import State

    if not cfg.paths.database.exists():
        raise StateError(f"{cfg.paths.database}: no state database")
    return State(cfg.paths.database), load_signer(cfg), open_targets(cfg)


def _close(state: Any, targets: list[Any]) -> None:
    for t in targets:
        t.close()
    state.close()


def cmd_label(cfg: Config, args: argparse.Namespace) -> int:
    from ..integrity.audit import cli_actor
    from .labels import label

    state, signer, targets = _open_rw(cfg)
    try:
        res = label(state, cfg, signer, targets, docking_id=args.docking, clips=args.clip,
                    fields={"case_no": args.case_no, "party": args.party,
                            "handler": args.handler, "note": args.note},
                    actor=cli_actor())
        pending = _pending(state)
    finally:
        _close(state, targets)
    if args.json:
        _print_json({**res, "pending_deliveries": pending})
    else:
        print(f"docking {res['docking_id']}: revision {res['revision']} "
              f"({res['revision_sha256'][:16]}…) signed; "
              + ("delivered to every target" if not pending else
                 f"{pending} delivery(ies) pending (the daemon retries)"))
    return 0


def cmd_retain(cfg: Config, args: argparse.Namespace) -> int:
    from ..integrity.audit import cli_actor
    from .labels import retain

    if args.approver is not None and not (args.approver.strip()
                                          and _plain_text(args.approver)):
        print("dockd: retain refused: --approver: empty, control characters or longer than "
              "400 characters", file=sys.stderr)
        return 2
    state, signer, targets = _open_rw(cfg)
    try:
        res = retain(state, cfg, signer, targets, docking_id=args.docking, clips=args.clip,
                     retention_class=args.retention_class, reason=args.reason,
                     actor=cli_actor(args.approver))
        pending = _pending(state)
    finally:
        _close(state, targets)
    if args.json:
        _print_json({**res, "pending_deliveries": pending})
    elif res["revision"] is None:
        print(f"docking {res['docking_id']}: {res['message']}; nothing changed")
    else:
        print(f"docking {res['docking_id']}: {len(res['raised'])} clip(s) now "
              f"{res['class']} (revision {res['revision']}); "
              + ("applied on every target" if not pending else
                 f"{pending} delivery(ies) pending (the daemon retries)"))
    return 0


def _plain_text(value: str) -> bool:
    return len(value) <= 400 and value.isprintable()


def _pending(state: Any) -> int:
    from ..store import custody as store

    return store.undelivered_count(state)


def cmd_export(cfg: Config, args: argparse.Namespace) -> int:
    from ..integrity.audit import cli_actor

    missing = [f"--{n}" for n in ("requester", "approver", "reason")
               if not (getattr(args, n) or "").strip()]
    bad = [f"--{n}" for n in ("requester", "approver", "reason", "place")
           if not _plain_text(getattr(args, n) or "")]
    if bad:
        print(f"dockd: export refused: {', '.join(bad)}: control characters or longer than "
              "400 characters", file=sys.stderr)
        return 2
    if missing:
        print(f"dockd: export refused: {', '.join(missing)} required (R8: copying archived "
              "footage needs a named requester, an approver and a reason)", file=sys.stderr)
        return 2
    from .export import export_package

    state, signer, targets = _open_rw(cfg)
    try:
        res = export_package(state, cfg, signer, targets, out=args.out,
                             docking_ids=args.docking, clips=args.clip,
                             requester=args.requester.strip(), approver=args.approver.strip(),
                             reason=args.reason.strip(), place=args.place,
                             actor=cli_actor(args.approver.strip()))
    finally:
        _close(state, targets)
    if args.json:
        _print_json(res)
    else:
        print(f"exported {res['files']} clip(s) of docking(s) "
              f"{', '.join(map(str, res['dockings']))} to {res['path']}")
        print(f"  description: {res['html']}, {res['pdf']}")
        print(f"  check it with: dockd verify {res['path']} --pubkey {res['pubkey']}")
    return 0


def audit_on_dock(cfg: Config, action: str, subject: str, detail: dict[str, Any],
                  approver: str | None = None) -> bool:
    """Record a person's command in the dock's audit trail when it runs on the dock (the
    state database exists and is writable); elsewhere (a reviewer's machine) do nothing."""
    import logging
    import sqlite3

    from ..errors import StateError
    from ..integrity.audit import cli_actor
    from ..store import State

    db = cfg.paths.database
    if not db.is_file() or not os.access(db, os.W_OK):
        return False
    try:
        with State(db) as state:
            state.audit(action, subject, detail, actor=cli_actor(approver))
    except (OSError, sqlite3.Error, StateError) as exc:
        logging.getLogger(__name__).warning("could not record %s in the audit trail: %s",
                                            action, exc)
        return False
    return True
