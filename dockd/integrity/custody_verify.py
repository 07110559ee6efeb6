"""What ``dockd verify`` checks beyond dockings: revisions, the audit trail, export packages.

:func:`check_custody` is called by ``verify_path`` with the target root (or export
package) and the trusted keys. It adds problems naming the file (and, for the audit
trail, the entry):

* ``_revisions/``: see ``integrity.revisions.verify_revisions``;
* ``_audit/``: see ``integrity.audit.verify_segments``;
* ``_export/`` (a package made by ``dockd export``): the raw Ed25519 signature of
  ``SHA256SUMS`` by a trusted key, every listed file present with its SHA-256, no file
  that is not listed, each audit-slice entry matching its hash; clips the package lists as
  withheld (not approved for export) may be absent from their docking directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .audit import AUDIT_DIR, chain_problems, entry_hash, verify_segments
from .revisions import REVISIONS_DIR, revision_key, verify_revisions

EXPORT_DIR = "_export"
SUMS_NAME = "SHA256SUMS"
CUSTODY_DIRS = (REVISIONS_DIR, AUDIT_DIR, EXPORT_DIR)
"""Top-level directories of a target that hold no dockings (``verify`` walks past them)."""


def check_custody(root: Path | None, path: Path, keys: Mapping[str, Ed25519PublicKey],
                  problems: list[str], warnings: list[str]) -> None:
    if root is None:
        return
    if path == root:
        verify_revisions(root, keys, problems, warnings)
        entries: list[dict[str, Any]] = []
        report, _heads = verify_segments(root / AUDIT_DIR, keys, collect=entries)
        problems.extend(report.problems)
        warnings.extend(report.warnings)
        check_revisions_against_trail(root, entries, problems)
        if (root / EXPORT_DIR).exists():
            check_package(root, keys, problems, warnings)
    elif path.is_dir():
        try:
            prefix = path.relative_to(root).as_posix()
        except ValueError:
            return
        if not prefix.startswith("_"):
            verify_revisions(root, keys, problems, warnings, only_prefix=prefix)


def check_revisions_against_trail(root: Path, entries: list[dict[str, Any]],
                                  problems: list[str]) -> None:
    """Every revision the (verified) audit trail says was made must be on the target with
    the hash the trail recorded: deleting the newest revision is noticed, too."""
    for e in entries:
        d = e.get("detail")
        if e.get("action") not in ("label", "retention_change") or not isinstance(d, dict):
            continue
        prefix, seq, sha = d.get("prefix"), d.get("revision"), d.get("revision_sha256")
        if not (isinstance(prefix, str) and isinstance(seq, int) and isinstance(sha, str)):
            continue
        rel = revision_key(prefix, seq)
        try:
            data = _read(root / rel)
        except FileNotFoundError:
            problems.append(f"{rel}: missing, but audit entry {e['id']} records it "
                            f"({e['action']} by {e['actor']})")
            continue
        except OSError as exc:
            problems.append(f"{rel}: cannot read ({exc.strerror or exc})")
            continue
        if hashlib.sha256(data).hexdigest() != sha:
            problems.append(f"{rel}: not the revision audit entry {e['id']} recorded")


def _read(p: Path) -> bytes:
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def check_package(root: Path, keys: Mapping[str, Ed25519PublicKey], problems: list[str],
                  warnings: list[str]) -> None:
    edir = f"{EXPORT_DIR}/"
    try:
        sums = _read(root / EXPORT_DIR / SUMS_NAME)
        sig = _read(root / EXPORT_DIR / (SUMS_NAME + ".sig"))
    except OSError as exc:
        problems.append(f"{edir}{SUMS_NAME}: cannot read ({exc.strerror or exc})")
        return
    signed_by = None
    for kid, key in keys.items():
        try:
            key.verify(sig, sums)
        except InvalidSignature:
            continue
        signed_by = kid
        break
    if signed_by is None:
        problems.append(f"{edir}{SUMS_NAME}: signature does not verify with any trusted key "
                        f"({', '.join(sorted(keys)) or 'none'})")
    listed: dict[str, str] = {}
    for n, line in enumerate(sums.decode("utf-8", "replace").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or rel in listed:
            problems.append(f"{edir}{SUMS_NAME}: line {n} malformed or repeated")
            continue
        listed[rel] = digest
    skip = {f"{edir}{SUMS_NAME}", f"{edir}{SUMS_NAME}.sig"}
    present = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in [*filenames, *(d for d in dirnames if (Path(dirpath) / d).is_symlink())]:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel in skip:
                continue
            present.add(rel)
            if rel not in listed:
                problems.append(f"{rel}: in the package but not in {edir}{SUMS_NAME}")
                continue
            try:
                h = hashlib.sha256(_read(root / rel)).hexdigest()
            except OSError as exc:
                problems.append(f"{rel}: cannot read ({exc.strerror or exc})")
                continue
            if h != listed[rel]:
                problems.append(f"{rel}: SHA-256 differs from {edir}{SUMS_NAME}")
    for rel in sorted(set(listed) - present):
        problems.append(f"{rel}: listed in {edir}{SUMS_NAME} but missing")
    try:
        doc = json.loads(_read(root / EXPORT_DIR / "export.json"))
        withheld = {f"{c['prefix']}/{c['name']}" for c in doc.get("withheld", [])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"{edir}export.json: unreadable or malformed ({exc})")
        withheld = set()
    if withheld and signed_by is not None and f"{edir}export.json" in listed:
        kept = [p for p in problems if not (p.endswith(": missing")
                                             and p[:-len(": missing")] in withheld)]
        if len(kept) != len(problems):
            warnings.append(f"{len(problems) - len(kept)} clip(s) of the exported manifests "
                            "were not approved for export (withheld) and are absent")
        problems[:] = kept
    check_slice(root / EXPORT_DIR / "audit-slice.jsonl", f"{edir}audit-slice.jsonl",
                 problems)


def check_slice(p: Path, where: str, problems: list[str]) -> None:
    try:
        lines = _read(p).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{where}: cannot read ({exc})")
        return
    for n, line in enumerate(lines, 1):
        try:
            e = json.loads(line)
            ok = entry_hash(e["ts"], e["actor"], e["action"], e["subject"], e["detail"],
                            e["prev_hash"]) == e["hash"]
        except (ValueError, KeyError, TypeError):
            problems.append(f"{where}: line {n}: malformed audit entry")
            continue
        if not ok:
            problems.append(f"{where}: audit entry {e.get('id')} (line {n}) edited: its "
                            "content does not match its hash")


__all__ = ["CUSTODY_DIRS", "check_custody", "check_package", "chain_problems"]
