"""List a docked recorder's clips without trusting anything on it.

The recorder is a FAT (or exFAT) volume written by firmware we do not control, and a
tampered one may hold anything: symlinks that point out of the mount, FIFOs that block a
reader forever, device nodes, names with control characters or bytes that are not UTF-8,
names such as ``..MP4`` or ``-rf.MP4``. ``scan_recorder`` walks only the profile's clip
folders, never follows a symlink, keeps only regular files with a clip extension, and gives
every clip a ``safe_name`` that can be used as a single path component in staging and on
the storage target. Anything odd becomes a :class:`~dockd.model.Finding`, never an
exception: a clip is evidence even when its name is strange.

Nothing is opened for reading here; :mod:`dockd.ingest.offload` re-checks every file when
it copies it (the recorder may change between scan and copy).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ProfileConfig
from ..errors import RecorderGone
from ..model import ClipEntry, Finding

log = logging.getLogger(__name__)

MAX_SAFE_NAME = 200
"""Longest ``safe_name`` in bytes: leaves room for ``.partial`` and target-side suffixes
within the usual 255-byte limit of a path component."""

_ASCII_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-+=@,()")
_PLAIN = re.compile(r"[A-Za-z0-9_+=@,()][A-Za-z0-9._+=@,()-]*")
"""Names that :func:`escape_component` keeps as they are (ASCII safe set, no leading . or -):
a fast path, so that a recorder with 100 000 files is listed in seconds (bench/hostile_scan.py)."""
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_+=@,()][A-Za-z0-9._+=@,()/-]*")

#: errno values that mean "the recorder is no longer there", not "this one file is bad".
GONE_ERRNOS = frozenset(
    {errno.ENOENT, errno.EIO, errno.ENODEV, errno.ENXIO, errno.ESTALE, errno.EBADF,
     errno.ENOTCONN, errno.ESHUTDOWN, errno.ENOMEDIUM}
)


@dataclass(frozen=True)
class ScanResult:
    """What a scan found.

    ``entries`` are sorted by ``rel_path``. ``findings`` holds what concerns the scan as a
    whole (skipped symlinks and special files, limits hit, unreadable folders); findings
    about a single clip (``hostile_name``, ``name_mismatch``) travel on its
    :attr:`ClipEntry.findings`. :attr:`all_findings` gives both.
    """

    entries: list[ClipEntry] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def all_findings(self) -> list[Finding]:
        out = list(self.findings)
        for e in self.entries:
            out.extend(e.findings)
        return out

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


# --------------------------------------------------------------------------- names


def escape_component(name: str) -> str:
    """A printable, separator-free spelling of one recorder path component.

    Letters and digits (any script), and ``._-+=@,()`` are kept; every other byte of the
    raw name (undecodable bytes, controls, ``/``, ``%``, spaces, ...) becomes ``%XX``. A
    leading ``.`` or ``-`` is escaped too, so the result is never hidden, never ``.`` or
    ``..`` and never looks like a command-line option. The mapping is injective.
    """
    if _PLAIN.fullmatch(name):  # the common case, and the same answer as below
        return name
    raw = os.fsencode(name)
    text = raw.decode("utf-8", errors="surrogateescape")
    out: list[str] = []
    for i, ch in enumerate(text):
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # an undecodable byte
            out.append(f"%{ord(ch) - 0xDC00:02X}")
        elif (ch in _ASCII_SAFE or (ord(ch) > 127 and _printable_word_char(ch))) and not (
            i == 0 and ch in ".-"
        ):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out) or "%00"


def _printable_word_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LN"


def name_problems(name: str) -> list[str]:
    """Why a recorder file name is suspicious (empty list: nothing to report)."""
    if _PLAIN.fullmatch(name) and len(name) <= MAX_SAFE_NAME:
        return []
    raw = os.fsencode(name)
    reasons: list[str] = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        reasons.append("not valid UTF-8")
        text = raw.decode("utf-8", errors="replace")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in text):
        reasons.append("control or format characters")
    if text.startswith("-"):
        reasons.append("leading '-'")
    if text.startswith("."):
        reasons.append("leading '.'" + (" ('..'-like)" if text.startswith("..") else ""))
    if len(raw) > MAX_SAFE_NAME:
        reasons.append(f"longer than {MAX_SAFE_NAME} bytes ({len(raw)})")
    if not reasons and escape_component(name) != name:
        reasons.append("characters outside the safe set")
    return reasons


def _limit_length(name: str, key: bytes) -> str:
    """Shorten ``name`` to MAX_SAFE_NAME bytes keeping its extension, tagged with a digest."""
    if len(name.encode("utf-8")) <= MAX_SAFE_NAME:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext) > 16:
        stem, ext = name, ""
    tag = "~" + hashlib.sha256(key).hexdigest()[:12]
    suffix = tag + (f".{ext}" if ext else "")
    budget = MAX_SAFE_NAME - len(suffix.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
    while cut.endswith("%") or (len(cut) >= 2 and cut[-2] == "%"):  # never split a %XX
        cut = cut[:-1]
    return cut + suffix


def _with_counter(name: str, n: int) -> str:
    stem, dot, ext = name.rpartition(".")
    counted = f"{stem}~{n}.{ext}" if dot else f"{name}~{n}"
    return _limit_length(counted, counted.encode())


def assign_safe_names(rel_paths: list[str]) -> dict[str, str]:
    """Map each rel_path to a safe name unique within the list (case-insensitively).

    The plain escaped file name is used when it is unique; otherwise the escaped folder
    path is prefixed, joined with ``__``; remaining clashes get ``~2``, ``~3``...
    """
    plain = {rp: _limit_length(escape_component(rp.rsplit("/", 1)[-1]), os.fsencode(rp))
             for rp in rel_paths}
    counts = Counter(n.casefold() for n in plain.values())
    out: dict[str, str] = {}
    used: set[str] = set()
    # Unique plain names first, so a prefixed name can never steal one.
    for rp in sorted(rel_paths):
        if counts[plain[rp].casefold()] == 1:
            out[rp] = plain[rp]
            used.add(plain[rp].casefold())
    for rp in sorted(rel_paths):
        if rp in out:
            continue
        parts = [escape_component(p) for p in rp.split("/")]
        candidate = _limit_length("__".join(parts), os.fsencode(rp))
        n = 1
        while candidate.casefold() in used:
            n += 1
            candidate = _with_counter("__".join(parts), n)
        out[rp] = candidate
        used.add(candidate.casefold())
    return out


# --------------------------------------------------------------------------- walking


def _describe(path: str) -> str:
    if _PLAIN_PATH.fullmatch(path):
        return path
    return escape_component(path.replace("/", "\x00")).replace("%00", "/")


def _gone(exc: OSError) -> bool:
    return exc.errno in GONE_ERRNOS


class _Walker:
    def __init__(self, root: Path, profile: ProfileConfig, max_depth: int, max_files: int):
        self.root = root
        self.profile = profile
        self.max_depth = max_depth
        self.max_files = max_files
        self.exts = {e.lower().lstrip(".") for e in profile.extensions}
        self.files: list[tuple[str, os.stat_result]] = []
        self.findings: list[Finding] = []
        self.truncated = False
        self.depth_hit: list[str] = []

    def finding(self, kind: str, severity: str, message: str, **detail: object) -> None:
        self.findings.append(Finding(kind, severity, message, dict(detail)))

    def list_dir(self, rel: str) -> list[os.DirEntry[str]] | None:
        path = os.path.join(self.root, rel) if rel else os.fspath(self.root)
        try:
            with os.scandir(path) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not rel or (_gone(exc) and exc.errno != errno.ENOENT):
                raise RecorderGone(f"cannot list {_describe(rel) or path}: {exc.strerror}") from exc
            self.finding("unreadable_dir", "warning",
                         f"cannot list folder {_describe(rel)}: {exc.strerror}",
                         path=_describe(rel), errno=exc.errno)
            return None

    def classify(self, entry: os.DirEntry[str], rel: str) -> tuple[str, os.stat_result | None]:
        """('dir' | 'file' | 'skip', lstat) for one directory entry; skips are reported."""
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            if _gone(exc) and exc.errno != errno.ENOENT:
                raise RecorderGone(f"cannot stat {_describe(rel)}: {exc.strerror}") from exc
            self.finding("unreadable_file", "warning", f"cannot stat {_describe(rel)}: {exc.strerror}",
                         path=_describe(rel), errno=exc.errno)
            return "skip", None
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            try:
                target = _describe(os.readlink(entry.path))
            except OSError:
                target = "?"
            self.finding("symlink_skipped", "warning",
                         f"symbolic link {_describe(rel)} -> {target} not followed",
                         path=_describe(rel), target=target)
            return "skip", st
        if stat.S_ISDIR(mode):
            return "dir", st
        if stat.S_ISREG(mode):
            return "file", st
        kind = ("fifo" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
                else "block device" if stat.S_ISBLK(mode) else "character device"
                if stat.S_ISCHR(mode) else f"mode {oct(mode)}")
        self.finding("special_file_skipped", "warning", f"{kind} {_describe(rel)} not copied",
                     path=_describe(rel), type=kind)
        return "skip", st

    def walk(self, rel: str, depth: int) -> None:
        entries = self.list_dir(rel)
        if entries is None:
            return
        for entry in entries:
            if self.truncated:
                return
            child = f"{rel}/{entry.name}"
            what, st = self.classify(entry, child)
            if what == "dir":
                if depth >= self.max_depth:
                    self.depth_hit.append(_describe(child))
                else:
                    self.walk(child, depth + 1)
            elif what == "file" and st is not None:
                ext = entry.name.rpartition(".")[2].lower() if "." in entry.name else ""
                if ext not in self.exts:
                    log.debug("not a clip extension, ignored: %s", _describe(child))
                    continue
                if len(self.files) >= self.max_files:
                    self.truncated = True
                    self.finding("scan_truncated", "error",
                                 f"more than {self.max_files} clips; scan stopped, the rest "
                                 "was not listed", max_files=self.max_files)
                    return
                self.files.append((child, st))

    def run(self) -> None:
        wanted = {d.casefold() for d in self.profile.clip_dirs}
        top = self.list_dir("") or []
        found = False
        for entry in top:
            if entry.name.casefold() not in wanted:
                continue
            what, _ = self.classify(entry, entry.name)
            if what != "dir":
                if what == "file":
                    self.finding("special_file_skipped", "warning",
                                 f"{_describe(entry.name)} is a file where a clip folder was expected",
                                 path=_describe(entry.name), type="file")
                continue
            found = True
            self.walk(entry.name, 1)
            if self.truncated:
                break
        if not found:
            self.finding("no_clip_dirs", "info",
                         f"none of the clip folders {', '.join(self.profile.clip_dirs)} exists",
                         clip_dirs=list(self.profile.clip_dirs))
        if self.depth_hit:
            self.finding("depth_limit", "warning",
                         f"{len(self.depth_hit)} folder(s) deeper than {self.max_depth} levels "
                         "not scanned", max_depth=self.max_depth, folders=self.depth_hit[:20])


def scan_recorder(root: Path, profile: ProfileConfig, *, max_depth: int = 8,
                  max_files: int = 100_000) -> ScanResult:
    """List the clips under ``root`` (the recorder's mount point) for ``profile``.

    Raises :class:`RecorderGone` when the root itself cannot be listed (unplugged).
    """
    walker = _Walker(Path(root), profile, max_depth, max_files)
    walker.run()
    regex = profile.regex
    rel_paths = [rp for rp, _ in walker.files]
    names = assign_safe_names(rel_paths)
    entries: list[ClipEntry] = []
    for rp, st in sorted(walker.files, key=lambda f: f[0]):
        base = rp.rsplit("/", 1)[-1]
        findings: list[Finding] = []
        problems = name_problems(base)
        shown = _describe(rp)
        if problems:
            benign = problems == ["characters outside the safe set"]
            findings.append(Finding(
                "hostile_name", "info" if benign else "warning",
                f"unsafe file name {shown} ({'; '.join(problems)}), staged as {names[rp]}",
                {"original": shown, "safe_name": names[rp], "reasons": problems}))
        if not regex.match(base):
            findings.append(Finding(
                "name_mismatch", "info",
                f"{shown} does not match the {profile.name} naming pattern",
                {"path": shown, "profile": profile.name}))
        entries.append(ClipEntry(rel_path=rp, safe_name=names[rp], size=st.st_size,
                                 mtime=st.st_mtime, findings=tuple(findings)))
    result = ScanResult(entries=entries, findings=walker.findings)
    log.info("scanned %s: %d clip(s), %d byte(s), %d finding(s)", root, len(entries),
             result.total_bytes, len(result.all_findings))
    return result
