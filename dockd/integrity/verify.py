"""Offline verification of delivered footage: what a reviewer runs, with no dock at hand.

Trust comes from outside the target: ``verify_path`` trusts only the keys in its
``Trust`` (keys the reviewer gave, a trust file, or the dock's own key on the dock), spread
along the signed key history found under ``_keys/`` (see :mod:`.keyhistory`). Keys that
are merely found on the target are listed, never trusted; with no trusted key at all the
verdict is UNTRUSTED.

``verify_path`` takes a target root, one docking directory or one delivered clip and
checks, using only files and the trusted keys:

* each ``manifest.json`` against its ``manifest.json.sig`` (Ed25519, key id);
* each clip the manifest lists: present, same size, same SHA-256;
* each docking directory holds nothing the manifest does not list (``.partial``
  leftovers of an interrupted upload are only warned about);
* each manifest's RFC 3161 token (``manifest.json.tsr``) against the TSA certificates
  the reviewer trusts;
* on a whole target: every dock's chain by sequence number and hash (a missing sequence
  number or predecessor is a problem: a docking was deleted) and its signed checkpoints
  (see :mod:`.chain`): the newest checkpoint's age is reported and fails past a limit.

Symlinks and unreadable directories are problems, never skipped. Other parts add their
own files through ``ROOT_DIRS`` (a directory under the target root, e.g. ``_audit``) and
``DOCKING_FILES`` (extra files in a docking directory, e.g. manifest revisions).

Problems make the report fail; warnings do not. Messages name the file as
``<docking prefix>/<name>`` relative to the target root (the directory holding ``_keys``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..delivery.layout import (
    KEYS_DIR,
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    QUARANTINE_DIR,
    SIGNATURE_NAME,
    check_stored_name,
    docking_prefix,
)
from ..errors import VerifyError
from ..model import RecorderIdentity
from . import chain, targetkeys
from .checkpoint import CHECKPOINTS_DIR
from .custody_verify import CUSTODY_DIRS, EXPORT_DIR, check_custody
from .keyhistory import TrustedKey
from .manifest import check_signature, manifest_sha256, parse_manifest, parse_signature
from .verify_context import Link, VerifyContext, read_regular
from .verify_context import Trust as Trust

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
TOKEN_NAME = MANIFEST_NAME + ".tsr"
"""The RFC 3161 token of a docking's manifest, beside it."""


@dataclass
class VerifyReport:
    ok: bool
    manifests: int
    files: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    trusted: bool = True
    """False: no key from outside the target was given; nothing can be vouched for."""
    info: list[str] = field(default_factory=list)


RootDirCheck = Callable[[VerifyContext, Path], None]
DockingFileCheck = Callable[[VerifyContext, Path, str, str, bytes], int]
"""(ctx, docking dir, prefix, file name, manifest bytes) -> files checked."""

ROOT_DIRS: dict[str, RootDirCheck | None] = {}
"""Directories of dockd's own under a target root and the check for each (None: handled
elsewhere). Register more with ``register_root_dir``."""
DOCKING_FILES: list[tuple[Callable[[str], bool], DockingFileCheck]] = []
"""(matches file name, check) for files of a docking directory beyond clips, manifest and
signature. Register more with ``register_docking_file``."""


def register_root_dir(name: str, check: RootDirCheck | None) -> None:
    ROOT_DIRS[name] = check


def register_docking_file(matches: Callable[[str], bool], check: DockingFileCheck) -> None:
    DOCKING_FILES.append((matches, check))


def _check_manifest_token(ctx: VerifyContext, d: Path, prefix: str, name: str,
                          mbytes: bytes) -> int:
    ctx.check_token_file(d / name, f"{prefix}/{name}", mbytes)
    return 0


def _check_quarantine(ctx: VerifyContext, d: Path) -> None:
    held = sum(len(fs) for _, _, fs in os.walk(d))
    if held:
        ctx.warnings.append(f"{QUARANTINE_DIR}/: {held} copy(ies) that failed verification "
                            "on delivery and were sent again (kept for investigation)")


register_root_dir(KEYS_DIR, None)
register_root_dir(CHECKPOINTS_DIR, chain.check_checkpoint_dir)
register_root_dir(QUARANTINE_DIR, _check_quarantine)
for _name in CUSTODY_DIRS:  # revisions, audit trail, export papers: check_custody
    register_root_dir(_name, None)
register_docking_file(lambda n: n == TOKEN_NAME, _check_manifest_token)


def _short(sha: str) -> str:
    return f"{sha[:4]}…"


def verify_path(
    path: Path, public_keys: Mapping[str, Ed25519PublicKey] | None = None, *,
    trust: Trust | None = None,
) -> VerifyReport:
    """Verify a target root, a docking directory or a single clip (see module docstring).

    ``public_keys`` (key id -> key) are keys the reviewer trusts, bound to no dock until
    the target's key records (or first use) bind them; ``trust`` says more (keys bound to
    docks, TSA certificates, checkpoint age limit). With neither, nothing is trusted and
    the verdict is UNTRUSTED.
    """
    trust = trust or Trust()
    if public_keys:
        for kid, k in public_keys.items():
            trust.anchors.setdefault(kid, TrustedKey(k, None, "given"))
    path = Path(path).absolute()
    if os.path.islink(path):
        return VerifyReport(False, 0, 0, [f"{path}: is a symlink (not followed)"], [])
    if not path.exists():
        return VerifyReport(False, 0, 0, [f"{path}: does not exist"], [])
    root = find_target_root(path)
    ctx = VerifyContext(root, path, root is not None and path == root, trust)
    targetkeys.load_keys(ctx)

    only: str | None = None
    walking = False
    if path.is_file() and path.name not in (MANIFEST_NAME, SIGNATURE_NAME):
        only = path.name
        dirs = [path.parent]
        if not (path.parent / MANIFEST_NAME).exists():
            ctx.problems.append(f"{path}: no {MANIFEST_NAME} beside it")
            return _report(ctx, 0, 0)
    elif path.is_file() or (path / MANIFEST_NAME).exists():
        dirs = [path if path.is_dir() else path.parent]
    else:
        walking = True
        dirs = _walk(ctx, path)
        if not dirs:
            ctx.warnings.append(f"{path}: no {MANIFEST_NAME} found")
    base = root or (path if walking else dirs[0].parent)

    files = 0
    for d in dirs:
        files += _check_docking(ctx, d, _rel(d, base), only)
    if only is None:
        if root is not None and (root / EXPORT_DIR).is_dir():
            # an export package holds only the selected dockings: chain holes and the
            # absent checkpoints are expected there (its SHA256SUMS signature covers the set)
            held, ctx.problems = ctx.problems, []
            chain.check_chains(ctx)
            ctx.warnings.extend(f"(export package) {p}" for p in ctx.problems)
            ctx.problems = held
        else:
            chain.check_chains(ctx)
        check_custody(root, path, {kid: tk.key for kid, tk in ctx.keys.items()
                                   if tk.key is not None}, ctx.problems, ctx.warnings)
    _token_summary(ctx)
    return _report(ctx, len(dirs), files)


def _report(ctx: VerifyContext, manifests: int, files: int) -> VerifyReport:
    trusted = bool(ctx.trust.anchors)
    report = VerifyReport(trusted and not ctx.problems, manifests, files, ctx.problems,
                          ctx.warnings, trusted, ctx.info)
    log.info("verified %s: %d manifest(s), %d file(s), %d problem(s), %d warning(s)%s",
             ctx.path, manifests, files, len(ctx.problems), len(ctx.warnings),
             "" if trusted else ", UNTRUSTED (no trusted key given)")
    return report


def _token_summary(ctx: VerifyContext) -> None:
    t = ctx.tokens
    if t["ok"]:
        ctx.info.append(f"{t['ok']} RFC 3161 timestamp(s) verified against the trusted TSA")
    if t["unchecked"]:
        ctx.warnings.append(f"{t['unchecked']} RFC 3161 timestamp(s) not checked: give the "
                            "TSA certificate you trust with --tsa-cert")
    if t["missing"] and not (t["ok"] or t["unchecked"]):
        ctx.info.append("no trusted timestamps (the dock had no TSA configured): times are "
                        "the dock's own clock, signed with its key")
    elif t["missing"]:
        ctx.warnings.append(f"{t['missing']} file(s) without an RFC 3161 timestamp")


def find_target_root(path: Path) -> Path | None:
    """The nearest directory at or above ``path`` that holds a ``_keys`` directory."""
    start = path if path.is_dir() else path.parent
    for d in (start, *start.parents):
        if (d / KEYS_DIR).is_dir():
            return d
    return None


def _rel(d: Path, base: Path) -> str:
    try:
        rel = d.relative_to(base).as_posix()
    except ValueError:
        rel = d.as_posix()
    return rel if rel != "." else d.name


def _walk(ctx: VerifyContext, path: Path) -> list[Path]:
    found: list[Path] = []
    root = ctx.root

    def unreadable(exc: OSError) -> None:
        ctx.problems.append(f"{exc.filename}: cannot list ({exc.strerror or exc})")

    for dirpath, dirnames, filenames in os.walk(path, onerror=unreadable, followlinks=False):
        d = Path(dirpath)
        rel = _rel(d, root or path)
        dirnames.sort()
        for name in list(dirnames) + list(filenames):
            if os.path.islink(d / name):
                ctx.problems.append(f"{rel}/{name}: is a symlink (not followed; a docking "
                                    "folder must be a real directory)")
                if name in dirnames:
                    dirnames.remove(name)
                else:
                    filenames.remove(name)
        if d == root:
            for name in sorted(n for n in dirnames if n in ROOT_DIRS):
                dirnames.remove(name)
                check = ROOT_DIRS[name]
                if check is not None:
                    check(ctx, d / name)
        if MANIFEST_NAME in filenames:
            found.append(d)
            for sub in dirnames:
                ctx.problems.append(f"{rel}/{sub}: directory inside a docking directory")
            dirnames.clear()  # a docking directory has no subdirectories of its own
            continue
        partials = sorted(f for f in filenames if f.endswith(PARTIAL_SUFFIX))
        others = [f for f in filenames if not f.endswith(PARTIAL_SUFFIX)]
        for f in partials:
            ctx.warnings.append(f"{rel}/{f}: stray partial upload")
        if others:
            ctx.problems.append(f"{rel}: {len(others)} file(s) but no {MANIFEST_NAME}")
    return found


def _hash_file(p: Path) -> str:
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_docking(ctx: VerifyContext, d: Path, prefix: str, only: str | None) -> int:
    """Check one docking directory; add its chain link (if trusted) and return files checked."""
    problems, warnings = ctx.problems, ctx.warnings
    try:
        mbytes = read_regular(d / MANIFEST_NAME)
    except OSError as exc:
        problems.append(f"{prefix}/{MANIFEST_NAME}: cannot read ({exc.strerror or exc})")
        return 0
    try:
        manifest = parse_manifest(mbytes)
    except VerifyError as exc:
        problems.append(f"{prefix}/{MANIFEST_NAME}: {exc}")
        manifest = None
    signed_ok = False
    try:
        sbytes = read_regular(d / SIGNATURE_NAME)
    except FileNotFoundError:
        problems.append(f"{prefix}/{SIGNATURE_NAME}: missing")
    except OSError as exc:
        problems.append(f"{prefix}/{SIGNATURE_NAME}: cannot read ({exc.strerror or exc})")
    else:
        try:
            sig_key = parse_signature(sbytes)["key_id"]
        except VerifyError as exc:
            problems.append(f"{prefix}/{SIGNATURE_NAME}: {exc}")
        else:
            dock = manifest.get("dock") if manifest else None
            key = ctx.signing_key(sig_key, dock, f"{prefix}/{SIGNATURE_NAME}")
            if key is not None:
                try:
                    check_signature(mbytes, sbytes, {sig_key: key})
                    signed_ok = True
                except VerifyError as exc:
                    name = SIGNATURE_NAME
                    if "hash mismatch" in str(exc):
                        name = MANIFEST_NAME  # unless the signature still fits the manifest:
                        if _signature_fits(sbytes, mbytes, key):  # then the .sig was edited
                            name = SIGNATURE_NAME
                    problems.append(f"{prefix}/{name}: {exc}")
            if manifest is not None and manifest.get("key_id") != sig_key:
                problems.append(f"{prefix}/{MANIFEST_NAME}: names key "
                                f"{manifest.get('key_id')} but is signed by {sig_key}")
                signed_ok = False
    if manifest is None:
        return 0
    if ctx.root is not None and only is None:
        _check_place(d, prefix, manifest, warnings)

    listed: set[str] = set()
    files = 0
    clips = manifest.get("clips")
    if not isinstance(clips, list):
        problems.append(f"{prefix}/{MANIFEST_NAME}: malformed manifest: clips is not a list")
        clips = []
    for i, clip in enumerate(clips):
        entry = _clip_entry(clip)
        if entry is None:
            problems.append(f"{prefix}/{MANIFEST_NAME}: malformed manifest: clip #{i}")
            continue
        name, size, sha = entry
        listed.add(name)
        if only is not None and name != only:
            continue
        files += _check_clip(d / name, f"{prefix}/{name}", size, sha, problems)
    if only is not None:
        if only not in listed:
            problems.append(f"{prefix}/{only}: not in manifest")
        return files
    files += _check_unlisted(ctx, d, prefix, listed, mbytes)

    prev, dock, seq = (manifest.get("prev_manifest_sha256"), manifest.get("dock"),
                       manifest.get("seq"))
    if "seq" in manifest and not (isinstance(seq, int) and not isinstance(seq, bool)
                                  and seq >= 1):
        problems.append(f"{prefix}/{MANIFEST_NAME}: no valid sequence number (seq {seq!r}): "
                        "deletions of dockings around it cannot be detected")
        return files
    if not isinstance(dock, str) or not (prev is None or isinstance(prev, str)):
        problems.append(f"{prefix}/{MANIFEST_NAME}: malformed manifest: dock, seq or "
                        "prev_manifest_sha256")
        return files
    if signed_ok:  # only manifests a trusted key signed stand in the chain
        ctx.links.append(Link(f"{prefix}/{MANIFEST_NAME}", dock, manifest_sha256(mbytes),
                              prev, seq))
    return files


def _signature_fits(sbytes: bytes, mbytes: bytes, key: Ed25519PublicKey) -> bool:
    """Does the signature value in ``sbytes`` verify over ``mbytes`` (whatever its other
    fields say)? Tells an edited signature file from an edited manifest."""
    import base64

    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(base64.b64decode(parse_signature(sbytes)["signature"]), mbytes)
    except (InvalidSignature, VerifyError, ValueError):
        return False
    return True


def _clip_entry(clip: Any) -> tuple[str, int, str] | None:
    if not isinstance(clip, dict):
        return None
    name, size, sha = clip.get("name"), clip.get("size"), clip.get("sha256")
    if not (isinstance(name, str) and isinstance(size, int) and isinstance(sha, str)):
        return None
    try:
        check_stored_name(name)
    except ValueError:
        return None
    return name, size, sha


def _check_clip(p: Path, where: str, size: int, sha: str, problems: list[str]) -> int:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        problems.append(f"{where}: missing")
        return 0
    if not stat.S_ISREG(st.st_mode):
        problems.append(f"{where}: not a regular file")
        return 0
    if st.st_size != size:
        problems.append(f"{where}: size {st.st_size} != manifest {size}")
        return 1
    try:
        actual = _hash_file(p)
    except OSError as exc:
        problems.append(f"{where}: cannot read ({exc.strerror or exc})")
        return 0
    if actual != sha:
        problems.append(f"{where}: SHA-256 mismatch (manifest {_short(sha)}, "
                        f"file {_short(actual)})")
    return 1


def _check_unlisted(ctx: VerifyContext, d: Path, prefix: str, listed: set[str],
                    mbytes: bytes) -> int:
    ours = {MANIFEST_NAME, SIGNATURE_NAME}
    files = 0
    extra_seen = False
    for name in sorted(os.listdir(d)):
        if name in ours or name in listed:
            continue
        if name.endswith(PARTIAL_SUFFIX):
            ctx.warnings.append(f"{prefix}/{name}: stray partial upload")
            continue
        check = next((c for m, c in DOCKING_FILES if m(name)), None)
        if check is None:
            ctx.problems.append(f"{prefix}/{name}: not in manifest")
        else:
            extra_seen = extra_seen or name == TOKEN_NAME
            files += check(ctx, d, prefix, name, mbytes)
    if not extra_seen:
        ctx.tokens["missing"] += 1
    return files


def _check_place(d: Path, prefix: str, manifest: dict[str, Any], warnings: list[str]) -> None:
    """Warn when a docking directory is not where its manifest says it belongs."""
    try:
        rec = manifest["recorder"]
        ident = RecorderIdentity(serial=str(rec["serial"]), officer_no=str(rec["officer_no"]),
                                 unit_no=str(rec["unit_no"]))
        docked_at = datetime.fromisoformat(manifest["docking"]["docked_at"])
        folder = (manifest.get("extra") or {}).get("date_folder")
        expected = docking_prefix(ident, docked_at, str(manifest["dock"]),
                                  str(manifest["port"]), int(manifest["docking"]["id"]),
                                  local_date=date.fromisoformat(folder) if folder else None)
    except (KeyError, TypeError, ValueError):
        warnings.append(f"{prefix}/{MANIFEST_NAME}: cannot work out where it belongs")
        return
    if prefix != expected:
        warnings.append(f"{prefix}: stored here, but its manifest belongs under {expected}")


def format_report(report: VerifyReport) -> str:
    """A few lines for humans: the verdict, then every problem, warning and note."""
    verdict = "UNTRUSTED" if not report.trusted else "OK" if report.ok else "FAILED"
    lines = [f"{verdict}: {report.manifests} manifest(s), {report.files} file(s) checked, "
             f"{len(report.problems)} problem(s), {len(report.warnings)} warning(s)"]
    lines += [f"  PROBLEM  {p}" for p in report.problems]
    lines += [f"  warning  {w}" for w in report.warnings]
    lines += [f"  info     {i}" for i in report.info]
    return "\n".join(lines)
