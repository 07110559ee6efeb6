"""Offline verification of delivered footage: what a reviewer runs, with no dock at hand.

``verify_path`` takes a target root, one docking directory or one delivered clip and
checks, using only files and the dock's public key:

* each ``manifest.json`` against its ``manifest.json.sig`` (Ed25519, key id);
* each clip the manifest lists: present, same size, same SHA-256;
* each docking directory holds nothing the manifest does not list (``.partial``
  leftovers of an interrupted upload are only warned about);
* the hash chain: a manifest's ``prev_manifest_sha256`` names another manifest of the same
  dock found under the path (warning if it is not there, problem if two manifests of one
  dock follow the same predecessor: a fork).

Problems make the report fail; warnings do not. Messages name the file as
``<docking prefix>/<name>`` relative to the target root (the directory holding ``_keys``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Mapping
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
    key_path,
)
from ..errors import SigningError, VerifyError
from ..model import RecorderIdentity
from .keys import key_id, load_public_key
from .manifest import check_signature, manifest_sha256, parse_manifest, parse_signature

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


@dataclass
class VerifyReport:
    ok: bool
    manifests: int
    files: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Link:
    """One manifest's place in its dock's hash chain."""

    where: str
    dock: str
    sha256: str
    prev: str | None


def _short(sha: str) -> str:
    return f"{sha[:4]}…"


def verify_path(
    path: Path, public_keys: Mapping[str, Ed25519PublicKey] | None = None
) -> VerifyReport:
    """Verify a target root, a docking directory or a single clip (see module docstring).

    With ``public_keys`` None, the keys published under ``<target root>/_keys`` are used
    and a warning with each key id says so: compare it with the dock's key id.
    """
    path = Path(path).absolute()
    problems: list[str] = []
    warnings: list[str] = []
    if not path.exists():
        return VerifyReport(False, 0, 0, [f"{path}: does not exist"], [])
    root = find_target_root(path)
    keys: dict[str, Ed25519PublicKey]
    if public_keys is not None:
        keys = dict(public_keys)
    else:
        keys = _published_keys(root, problems, warnings)
        if not keys:
            problems.append(f"no public key given and none published under {KEYS_DIR}/ "
                            f"above {path}")

    only: str | None = None
    walking = False
    if path.is_file() and path.name not in (MANIFEST_NAME, SIGNATURE_NAME):
        only = path.name
        dirs = [path.parent]
        if not (path.parent / MANIFEST_NAME).exists():
            problems.append(f"{path}: no {MANIFEST_NAME} beside it")
            return VerifyReport(False, 0, 0, problems, warnings)
    elif path.is_file() or (path / MANIFEST_NAME).exists():
        dirs = [path if path.is_dir() else path.parent]
    else:
        walking = True
        dirs = _walk(path, root, problems, warnings)
        if not dirs:
            warnings.append(f"{path}: no {MANIFEST_NAME} found")
    base = root or (path if walking else dirs[0].parent)

    links: list[_Link] = []
    files = 0
    for d in dirs:
        prefix = _rel(d, base)
        link, n = _check_docking(d, prefix, keys, only, root is not None, problems, warnings)
        files += n
        if link is not None:
            links.append(link)
    if only is None:
        _check_chain(links, path, problems, warnings)
    report = VerifyReport(not problems, len(dirs), files, problems, warnings)
    log.info("verified %s: %d manifest(s), %d file(s), %d problem(s), %d warning(s)",
             path, report.manifests, report.files, len(problems), len(warnings))
    return report


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


def _published_keys(root: Path | None, problems: list[str],
                    warnings: list[str]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    if root is None:
        return keys
    for f in sorted((root / KEYS_DIR).glob("*.pub")):
        try:
            k = load_public_key(f)
        except SigningError as exc:
            problems.append(f"{KEYS_DIR}/{f.name}: {exc}")
            continue
        kid = key_id(k)
        if key_path(kid) != f"{KEYS_DIR}/{f.name}":
            warnings.append(f"{KEYS_DIR}/{f.name}: file name does not match its key id {kid}")
        keys[kid] = k
        warnings.append(f"public key {kid} was taken from the target itself ({f}); "
                        "compare this key id with the dock's before trusting the result")
    return keys


def _walk(path: Path, root: Path | None, problems: list[str],
          warnings: list[str]) -> list[Path]:
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot list ({exc.strerror or exc})")

    for dirpath, dirnames, filenames in os.walk(path, onerror=unreadable, followlinks=False):
        d = Path(dirpath)
        dirnames.sort()
        if d == root and KEYS_DIR in dirnames:
            dirnames.remove(KEYS_DIR)
        if d == root and QUARANTINE_DIR in dirnames:
            dirnames.remove(QUARANTINE_DIR)
            held = sum(len(fs) for _, _, fs in os.walk(d / QUARANTINE_DIR))
            if held:
                warnings.append(f"{QUARANTINE_DIR}/: {held} copy(ies) that failed verification "
                                "on delivery and were sent again (kept for investigation)")
        if MANIFEST_NAME in filenames:
            found.append(d)
            dirnames.clear()  # a docking directory has no subdirectories of its own
            continue
        rel = _rel(d, root or path)
        partials = sorted(f for f in filenames if f.endswith(PARTIAL_SUFFIX))
        others = [f for f in filenames if not f.endswith(PARTIAL_SUFFIX)]
        for f in partials:
            warnings.append(f"{rel}/{f}: stray partial upload")
        if others:
            problems.append(f"{rel}: {len(others)} file(s) but no {MANIFEST_NAME}")
    return found


def _read_regular(p: Path) -> bytes:
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"{p} is not a regular file")
        return f.read()


def _hash_file(p: Path) -> str:
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_docking(d: Path, prefix: str, keys: Mapping[str, Ed25519PublicKey],
                   only: str | None, check_place: bool, problems: list[str],
                   warnings: list[str]) -> tuple[_Link | None, int]:
    """Check one docking directory; return its chain link (if readable) and files checked."""
    try:
        mbytes = _read_regular(d / MANIFEST_NAME)
    except OSError as exc:
        problems.append(f"{prefix}/{MANIFEST_NAME}: cannot read ({exc.strerror or exc})")
        return None, 0
    sig_key: str | None = None
    try:
        sbytes = _read_regular(d / SIGNATURE_NAME)
    except FileNotFoundError:
        problems.append(f"{prefix}/{SIGNATURE_NAME}: missing")
    except OSError as exc:
        problems.append(f"{prefix}/{SIGNATURE_NAME}: cannot read ({exc.strerror or exc})")
    else:
        try:
            check_signature(mbytes, sbytes, keys)
            sig_key = parse_signature(sbytes)["key_id"]
        except VerifyError as exc:
            problems.append(f"{prefix}/{MANIFEST_NAME}: {exc}")
    try:
        manifest = parse_manifest(mbytes)
    except VerifyError as exc:
        problems.append(f"{prefix}/{MANIFEST_NAME}: {exc}")
        return None, 0
    if sig_key is not None and manifest.get("key_id") != sig_key:
        problems.append(f"{prefix}/{MANIFEST_NAME}: names key {manifest.get('key_id')} "
                        f"but is signed by {sig_key}")
    if check_place and only is None:
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
    else:
        _check_unlisted(d, prefix, listed, problems, warnings)

    prev = manifest.get("prev_manifest_sha256")
    dock = manifest.get("dock")
    if not isinstance(dock, str) or not (prev is None or isinstance(prev, str)):
        problems.append(f"{prefix}/{MANIFEST_NAME}: malformed manifest: dock or "
                        "prev_manifest_sha256")
        return None, files
    return _Link(f"{prefix}/{MANIFEST_NAME}", dock, manifest_sha256(mbytes), prev), files


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


def _check_unlisted(d: Path, prefix: str, listed: set[str], problems: list[str],
                    warnings: list[str]) -> None:
    ours = {MANIFEST_NAME, SIGNATURE_NAME}
    for name in sorted(os.listdir(d)):
        if name in ours or name in listed:
            continue
        if name.endswith(PARTIAL_SUFFIX):
            warnings.append(f"{prefix}/{name}: stray partial upload")
        else:
            problems.append(f"{prefix}/{name}: not in manifest")


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


def _check_chain(links: list[_Link], path: Path, problems: list[str],
                 warnings: list[str]) -> None:
    by_sha: dict[str, _Link] = {}
    for link in links:
        if link.sha256 in by_sha:
            problems.append(f"{by_sha[link.sha256].where} and {link.where}: "
                            "the same manifest stored twice")
        else:
            by_sha[link.sha256] = link
    followers: dict[tuple[str, str], list[str]] = defaultdict(list)
    starts: dict[str, list[str]] = defaultdict(list)
    for link in by_sha.values():
        if link.prev is None:
            starts[link.dock].append(link.where)
            continue
        followers[(link.dock, link.prev)].append(link.where)
        pred = by_sha.get(link.prev)
        if pred is None:
            warnings.append(f"{link.where}: predecessor manifest {link.prev[:12]}… "
                            f"is not under {path}")
        elif pred.dock != link.dock:
            problems.append(f"{link.where}: predecessor {pred.where} is a manifest of dock "
                            f"{pred.dock}, not {link.dock}")
    for (dock, prev), wheres in sorted(followers.items()):
        if len(wheres) > 1:
            problems.append(f"dock {dock}: fork in the manifest chain: "
                            f"{', '.join(sorted(wheres))} all follow {prev[:12]}…")
    for dock, wheres in sorted(starts.items()):
        if len(wheres) > 1:
            warnings.append(f"dock {dock}: {len(wheres)} manifests start a chain "
                            f"(no predecessor): {', '.join(sorted(wheres))}")


def format_report(report: VerifyReport) -> str:
    """A few lines for humans: the verdict, then every problem and warning."""
    verdict = "OK" if report.ok else "FAILED"
    lines = [f"{verdict}: {report.manifests} manifest(s), {report.files} file(s) checked, "
             f"{len(report.problems)} problem(s), {len(report.warnings)} warning(s)"]
    lines += [f"  PROBLEM  {p}" for p in report.problems]
    lines += [f"  warning  {w}" for w in report.warnings]
    return "\n".join(lines)
