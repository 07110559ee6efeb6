"""Signed manifest revisions: case labels (R4) and retention upgrades (R7) after signing.

A manifest is never rewritten. What is learned later — the case number, party and handler
a docking or a clip belongs to, a retention class raised to ``evidence`` or ``permanent``
(legal hold) — is a **revision**: a canonical JSON document, signed with the dock key like
a manifest, that names the original manifest by SHA-256 and the revision before it::

    _revisions/<docking prefix>/000001.json      (+ .json.sig)
    _revisions/<docking prefix>/000002.json      ...

Each revision carries the *whole* current state (labels of the docking and of each clip,
every clip's retention), so the newest one alone says how the footage stands, and the
change it made (``change``). Retention only ever goes up: :func:`check_upgrade` refuses a
lower class and the verifier flags a revision that lowers one.

:func:`verify_revisions` checks a target tree (or an export package): every revision
signed by a trusted key, numbered 1..n without gaps, each chained to the one before, each
naming the manifest that lies at its prefix, no retention lowered. Problems name the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..delivery.layout import PARTIAL_SUFFIX
from ..errors import VerifyError
from .manifest import (
    _strict_json,
    canonical_bytes,
    check_signature,
    manifest_sha256,
)

REVISIONS_DIR = "_revisions"
REVISION_FORMAT = "dockd-revision/1"
RETENTION_ORDER = ("routine", "standard", "evidence", "permanent")
LABEL_FIELDS = ("case_no", "party", "handler", "note")
_REV_RE = re.compile(r"(\d{6})\.json")


def revision_name(seq: int) -> str:
    return f"{seq:06d}.json"


def revision_key(prefix: str, seq: int) -> str:
    return f"{REVISIONS_DIR}/{prefix}/{revision_name(seq)}"


def rank(retention_class: str) -> int:
    try:
        return RETENTION_ORDER.index(retention_class)
    except ValueError:
        raise ValueError(f"unknown retention class {retention_class!r} "
                         f"(known: {', '.join(RETENTION_ORDER)})") from None


def check_upgrade(current: str, new: str, what: str) -> bool:
    """True when ``new`` raises ``current``; False when equal; ValueError when lower."""
    if rank(new) < rank(current):
        raise ValueError(f"{what}: retention class {current!r} cannot be lowered to {new!r} "
                         "(R7: retention is only ever extended)")
    return rank(new) > rank(current)


def build_revision(*, dock_id: str, docking_id: int, prefix: str, manifest_sha: str,
                   seq: int, prev_sha: str | None, created_at: str, actor: str, key_id: str,
                   change: Mapping[str, Any], labels: Mapping[str, Any],
                   retention: Mapping[str, Any]) -> dict[str, Any]:
    doc = {
        "format": REVISION_FORMAT,
        "dock": dock_id,
        "docking": {"id": docking_id, "prefix": prefix},
        "manifest_sha256": manifest_sha,
        "seq": seq,
        "prev_revision_sha256": prev_sha,
        "created_at": created_at,
        "actor": actor,
        "key_id": key_id,
        "change": dict(change),
        "labels": dict(labels),
        "retention": dict(retention),
    }
    canonical_bytes(doc)  # refuses what cannot be written faithfully
    return doc


def parse_revision(data: bytes) -> dict[str, Any]:
    doc = _strict_json(data, "revision")
    if doc.get("format") != REVISION_FORMAT:
        raise VerifyError(f"malformed revision: format is {doc.get('format')!r}")
    if canonical_bytes(doc) != data:
        raise VerifyError("malformed revision: not in canonical form")
    for k, t in (("seq", int), ("docking", dict), ("labels", dict), ("retention", dict),
                 ("manifest_sha256", str), ("key_id", str)):
        if not isinstance(doc.get(k), t):
            raise VerifyError(f"malformed revision: {k}")
    return doc


def _read(p: Path) -> bytes:
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def revision_dirs(root: Path, problems: list[str]) -> list[tuple[str, Path]]:
    """``(prefix, directory)`` of every docking with revisions under ``root/_revisions``."""
    base = root / REVISIONS_DIR
    found: list[tuple[str, Path]] = []
    if not base.exists():
        return found
    if base.is_symlink() or not base.is_dir():
        problems.append(f"{REVISIONS_DIR}: not a directory")
        return found
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        d = Path(dirpath)
        for name in list(dirnames):
            if (d / name).is_symlink():
                problems.append(f"{(d / name).relative_to(root).as_posix()}: symbolic link "
                                "(not followed)")
                dirnames.remove(name)
        if filenames:
            found.append((d.relative_to(base).as_posix(), d))
    return found


def verify_revisions(root: Path, keys: Mapping[str, Ed25519PublicKey], problems: list[str],
                     warnings: list[str], *, only_prefix: str | None = None) -> int:
    """Check every revision chain under ``root`` (see module docstring); returns how many
    revisions were checked. ``only_prefix`` limits the check to one docking."""
    checked = 0
    for prefix, d in revision_dirs(root, problems):
        if only_prefix is not None and prefix != only_prefix:
            continue
        where_dir = f"{REVISIONS_DIR}/{prefix}"
        names = sorted(os.listdir(d))
        seqs = []
        for name in names:
            m = _REV_RE.fullmatch(name)
            if m:
                seqs.append(int(m[1]))
            elif not (name.endswith(".sig") and _REV_RE.fullmatch(name[:-4])):
                if os.path.isdir(d / name):
                    continue  # a deeper prefix level, checked on its own
                if name.endswith(PARTIAL_SUFFIX):  # being uploaded now, or cut by a crash
                    warnings.append(f"{where_dir}/{name}: stray partial upload")
                    continue
                problems.append(f"{where_dir}/{name}: not a revision file")
        if not seqs:
            continue
        manifest_sha = _manifest_sha(root, prefix, where_dir, problems)
        prev_sha: str | None = None
        prev_ret: dict[str, Any] = {}
        for expect, seq in enumerate(sorted(seqs), 1):
            where = f"{where_dir}/{revision_name(seq)}"
            if seq != expect:
                problems.append(f"{where_dir}: revision(s) {expect:06d}..{seq - 1:06d} missing "
                                f"(removed); next is {revision_name(seq)}")
                prev_sha = None
            checked += 1
            try:
                data = _read(d / revision_name(seq))
            except OSError as exc:
                problems.append(f"{where}: cannot read ({exc.strerror or exc})")
                break
            try:
                sig = _read(d / (revision_name(seq) + ".sig"))
                check_signature(data, sig, keys)
            except FileNotFoundError:
                problems.append(f"{where}.sig: missing")
            except (OSError, VerifyError) as exc:
                problems.append(f"{where}: {exc}")
            try:
                doc = parse_revision(data)
            except VerifyError as exc:
                problems.append(f"{where}: {exc}")
                break
            if doc["seq"] != seq:
                problems.append(f"{where}: says it is revision {doc['seq']}")
            if doc["docking"].get("prefix") != prefix:
                problems.append(f"{where}: belongs to {doc['docking'].get('prefix')}, "
                                f"stored under {prefix}")
            if manifest_sha is not None and doc["manifest_sha256"] != manifest_sha:
                problems.append(f"{where}: names manifest {doc['manifest_sha256'][:12]}…, "
                                f"but {prefix}/manifest.json is {manifest_sha[:12]}…")
            if seq == expect and doc.get("prev_revision_sha256") != prev_sha:
                problems.append(f"{where}: does not follow revision {seq - 1:06d} "
                                "(prev_revision_sha256 differs)")
            for clip, ret in prev_ret.items():
                new = doc["retention"].get(clip)
                try:
                    if new is None or rank(new["class"]) < rank(ret["class"]):
                        problems.append(f"{where}: retention of {clip} lowered from "
                                        f"{ret['class']} to "
                                        f"{new['class'] if new else 'nothing'}")
                except (TypeError, KeyError, ValueError):
                    problems.append(f"{where}: malformed retention of {clip}")
            prev_sha = manifest_sha256(data)
            prev_ret = doc["retention"]
    return checked


def _manifest_sha(root: Path, prefix: str, where: str, problems: list[str]) -> str | None:
    try:
        return manifest_sha256(_read(root / prefix / "manifest.json"))
    except FileNotFoundError:
        problems.append(f"{where}: revisions of a docking whose manifest is not at "
                        f"{prefix}/manifest.json (removed?)")
    except OSError as exc:
        problems.append(f"{prefix}/manifest.json: cannot read ({exc.strerror or exc})")
    return None


def latest_labels(doc: Mapping[str, Any] | None) -> dict[str, Any]:
    """The labels of a revision document (empty without revisions), for reports."""
    if not doc:
        return {"docking": {}, "clips": {}}
    labels = doc.get("labels") or {}
    return {"docking": dict(labels.get("docking") or {}),
            "clips": dict(labels.get("clips") or {})}
