"""The audit trail (R8): who did what to which footage, when — hash-chained, signed, checked.

Every entry is ``(id, ts, actor, action, subject, detail, prev_hash, hash)`` where ``hash``
is the SHA-256 of the canonical body ``{"ts","actor","action","subject","detail","prev"}``
(``dockd.store.dumps``) and ``prev`` is the previous entry's hash ("" for the first). The
chain is written by :meth:`dockd.store.State.audit`; this module reads and checks it:

* :func:`chain_problems` walks entries in order and names the **first** entry that was
  edited (its hash does not match its content), removed (a gap in the ids, or the next
  entry chains to something else), reordered (ids out of order) or inserted (an entry whose
  successor chains past it). It works on the dock's database and on a delivered copy alike.
* :func:`chain_head` is the newest entry's id and hash: the value checkpoints sign.
* Delivered copies are **segments**: ``_audit/<dock>/<first id>-<last id>.jsonl``, one
  header line then one canonical JSON line per entry, each segment signed with the dock key
  (``.jsonl.sig``, the manifest signature document over the segment bytes). Segments are
  append-only: a new one starts where the last ended. :func:`verify_segments` checks every
  signature, that the segments join without gaps, and the chain inside them.

Actors: the daemon is ``dockd``; a command run by a person is ``user:<login>`` (with
``via sudo from <login>`` when run through sudo), plus ``approver:<name>`` where an
approval is required (:func:`cli_actor`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..delivery.layout import PARTIAL_SUFFIX
from ..errors import VerifyError
from ..store import Reader
from ..store import audit as store_audit
from .manifest import canonical_bytes, check_signature

AUDIT_DIR = "_audit"
SEGMENT_FORMAT = "dockd-audit-segment/1"
SEGMENT_SUFFIX = ".jsonl"
SIG_SUFFIX = ".sig"
_SEGMENT_RE = re.compile(r"(\d{10})-(\d{10})\.jsonl")
_LOGIN_RE = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._$-]{0,63}")
ENTRY_FIELDS = ("id", "ts", "actor", "action", "subject", "detail", "prev_hash", "hash")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


def entry_hash(ts: str, actor: str, action: str, subject: str, detail: Any, prev: str) -> str:
    """The hash an entry must carry (the same body ``State.audit`` hashes)."""
    body = _dumps({"ts": ts, "actor": actor, "action": action, "subject": subject,
                   "detail": detail if detail is not None else {}, "prev": prev})
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _detail(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw  # an edited, no longer JSON detail: its hash will not match
    return raw


def cli_actor(approver: str | None = None) -> str:
    """``user:<login>`` of the person running the command (``via sudo from`` when sudo'd),
    with ``; approver:<name>`` when an approver is named."""
    uid = os.getuid()
    try:
        login = pwd.getpwuid(uid).pw_name
    except KeyError:
        login = f"uid{uid}"
    actor = f"user:{login}"
    sudo = os.environ.get("SUDO_USER", "")
    if uid == 0 and sudo and sudo != login and _LOGIN_RE.fullmatch(sudo):
        actor += f" via sudo from {sudo}"
    if approver:
        actor += f"; approver:{approver}"
    return actor


# --------------------------------------------------------------------------- the chain


@dataclass
class ChainReport:
    entries: int
    problems: list[str] = field(default_factory=list)
    first_bad: int | None = None
    warnings: list[str] = field(default_factory=list)
    """Not problems: e.g. a segment's upload in progress (or cut by a crash) right now."""
    """Id of the first entry named in a problem (None when intact)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def chain_problems(entries: Sequence[Mapping[str, Any]], *, start_prev: str = "",
                   start_id: int = 1, where: str = "") -> ChainReport:
    """Check ``entries`` (dicts with ``ENTRY_FIELDS``, in stored order) as one chain that
    begins after ``start_prev`` with id ``start_id``; name the first bad entry."""
    report = ChainReport(len(entries))
    pre = f"{where}: " if where else ""

    def bad(eid: Any, msg: str, name: str | None = None) -> ChainReport:
        report.problems.append(f"{pre}audit entry {name or eid}: {msg}")
        report.first_bad = eid if isinstance(eid, int) else None
        return report

    prev_hash, prev_id = start_prev, start_id - 1
    hashes = [str(e.get("hash")) for e in entries]
    for i, e in enumerate(entries):
        eid = e.get("id")
        if not isinstance(eid, int) or isinstance(eid, bool):
            return bad(eid, "malformed id")
        try:
            want = entry_hash(str(e["ts"]), str(e["actor"]), str(e["action"]),
                              str(e["subject"]), _detail(e["detail"]), str(e["prev_hash"]))
        except (KeyError, TypeError):
            return bad(eid, "malformed entry (fields missing)")
        if eid <= prev_id:
            return bad(eid, f"out of order (reordered): follows entry {prev_id}")
        if want != e["hash"]:
            return bad(eid, "edited: its content does not match its hash")
        if isinstance(e["detail"], str) and _dumps(_detail(e["detail"])) != e["detail"]:
            return bad(eid, "edited: its detail is not in the form it was hashed in")
        if e["prev_hash"] != prev_hash:
            before = hashes[i - 2] if i >= 2 else start_prev
            if i >= 1 and e["prev_hash"] == before:
                return bad(entries[i - 1].get("id"), f"inserted: entry {eid} after it chains "
                                                     "to the entry before it")
            if e["prev_hash"] in hashes[i + 1:]:
                return bad(eid, "reordered: it chains to an entry stored after it")
            if eid != prev_id + 1:
                return bad(prev_id + 1, f"removed (entry {eid} chains to something that is "
                                        "not there)", f"{prev_id + 1}..{eid - 1}")
            return bad(eid, f"does not chain to entry {prev_id} (that entry was replaced or "
                            f"an entry was removed)")
        if eid != prev_id + 1:
            return bad(prev_id + 1, "missing (removed, the ids after it renumbered)",
                       f"{prev_id + 1}..{eid - 1}")
        prev_hash, prev_id = e["hash"], eid
    return report


def db_entries(state: Reader, *, after_id: int = 0, limit: int = -1) -> list[dict[str, Any]]:
    """Audit rows of a ``State`` in id order (detail parsed), at most ``limit``."""
    rows = store_audit.entries_after(state, after_id, limit)
    return [{**r, "detail": _detail(r["detail"])} for r in rows]


def verify_db(state: Reader) -> ChainReport:
    """Check the dock's own audit chain, in the order the database stores it (rowid), and
    against the heads it already signed into delivered segments (so removing the newest
    entries is noticed too)."""
    rows = store_audit.entries_as_stored(state)
    report = chain_problems([{**r, "detail": r["detail"]} for r in rows])
    if report.problems:
        return report
    by_id = {r["id"]: r["hash"] for r in rows}
    for seg in store_audit.segment_heads(state):
        head = json.loads(bytes(seg["body"]).split(b"\n", 1)[0])
        if by_id.get(seg["last_id"]) != head.get("head_hash"):
            missing = seg["last_id"] if seg["last_id"] not in by_id else None
            what = (f"removed (signed and delivered in segment {seg['first_id']}-"
                    f"{seg['last_id']})" if missing else
                    f"differs from the hash signed in segment {seg['first_id']}-"
                    f"{seg['last_id']}")
            first = min((i for i in range(seg["first_id"], seg["last_id"] + 1)
                         if i not in by_id), default=seg["last_id"])
            report.problems.append(f"audit entry {first}: {what}")
            report.first_bad = first
            break
    return report


def compare_with_delivered(db_entries_: Sequence[Mapping[str, Any]],
                           delivered: Sequence[Mapping[str, Any]]) -> ChainReport:
    """The dock's entries against a verified delivered copy: an entry the copy holds must be
    in the database with the same hash (a database rewritten consistently from some entry
    on, hashes recomputed, is caught here)."""
    report = ChainReport(len(delivered))
    mine = {int(e["id"]): e["hash"] for e in db_entries_}
    for e in delivered:
        got = mine.get(int(e["id"]))
        if got != e["hash"]:
            report.problems.append(
                f"audit entry {e['id']}: " + ("missing from the database" if got is None else
                                              "differs from the signed, delivered copy"))
            report.first_bad = int(e["id"])
            break
    return report


def chain_head(state: Reader) -> dict[str, Any]:
    """The newest entry: ``{"id": N, "hash": hex}`` (``{"id": 0, "hash": ""}`` when empty).
    This is what checkpoints sign to commit to the whole trail."""
    row = store_audit.newest_entry(state)
    return {"id": int(row["id"]), "hash": row["hash"]} if row else {"id": 0, "hash": ""}


def filter_entries(entries: Iterable[Mapping[str, Any]], *, subject: str | None = None,
                   action: str | None = None, actor: str | None = None,
                   since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
    """Entries matching every given filter. subject: exact (``docking/12`` also matches
    exports that include docking 12), or every subject under a prefix ending in ``/``;
    actor: substring; since/until: ISO times (UTC), compared as strings."""
    out = []
    for e in entries:
        if subject and not _subject_matches(e, subject):
            continue
        if action and e["action"] != action:
            continue
        if actor and actor not in e["actor"]:
            continue
        if since and e["ts"] < since:
            continue
        if until and e["ts"] > until:
            continue
        out.append(dict(e))
    return out


def _subject_matches(e: Mapping[str, Any], subject: str) -> bool:
    if subject.endswith("/"):
        return str(e["subject"]).startswith(subject)
    if e["subject"] == subject:
        return True
    kind, _, ident = subject.partition("/")
    detail = e.get("detail")
    if kind == "docking" and ident.isdigit() and isinstance(detail, dict):
        return int(ident) in (detail.get("dockings") or [])
    return False


# --------------------------------------------------------------------------- segments


def entry_line(e: Mapping[str, Any]) -> bytes:
    return canonical_bytes({k: (_detail(e[k]) if k == "detail" else e[k])
                            for k in ENTRY_FIELDS}) + b"\n"


def segment_name(first: int, last: int) -> str:
    return f"{first:010d}-{last:010d}{SEGMENT_SUFFIX}"


def build_segment(dock_id: str, entries: Sequence[Mapping[str, Any]]) -> bytes:
    """One delivered segment: a header line, then the entries (ids contiguous)."""
    if not entries:
        raise ValueError("an audit segment needs at least one entry")
    header = {"format": SEGMENT_FORMAT, "dock": dock_id, "first": entries[0]["id"],
              "last": entries[-1]["id"], "prev_hash": entries[0]["prev_hash"],
              "head_hash": entries[-1]["hash"]}
    return canonical_bytes(header) + b"\n" + b"".join(entry_line(e) for e in entries)


def parse_segment(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Header and entries of a segment; ``VerifyError`` naming the bad line."""
    lines = data.split(b"\n")
    if not data.endswith(b"\n") or len(lines) < 3:
        raise VerifyError("malformed audit segment: truncated")
    parsed = []
    for n, raw in enumerate(lines[:-1], 1):
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise VerifyError(f"malformed audit segment: line {n} is not JSON") from None
        if not isinstance(obj, dict) or canonical_bytes(obj) != raw:
            raise VerifyError(f"malformed audit segment: line {n} is not canonical JSON")
        parsed.append(obj)
    header, entries = parsed[0], parsed[1:]
    if header.get("format") != SEGMENT_FORMAT:
        raise VerifyError(f"malformed audit segment: format {header.get('format')!r}")
    if set(entries[0]) != set(ENTRY_FIELDS) or any(set(e) != set(ENTRY_FIELDS) for e in entries):
        raise VerifyError("malformed audit segment: entry fields")
    if (header.get("first"), header.get("last")) != (entries[0]["id"], entries[-1]["id"]):
        raise VerifyError("audit segment header does not match its entries")
    if header.get("head_hash") != entries[-1]["hash"]:
        raise VerifyError("audit segment header head_hash does not match its last entry")
    return header, entries


def verify_segments(audit_dir: Path, keys: Mapping[str, Ed25519PublicKey], *,
                    rel: str = AUDIT_DIR, collect: list[dict[str, Any]] | None = None
                    ) -> tuple[ChainReport, dict[str, Any]]:
    """Verify every dock's delivered trail under ``audit_dir`` (``<root>/_audit``).

    Returns the report (problems name the segment file and the entry) and the verified
    heads per dock ``{dock: {"id", "hash"}}``; entries of segments that verified are
    appended to ``collect`` when given.
    """
    report = ChainReport(0)
    heads: dict[str, Any] = {}
    if not audit_dir.is_dir():
        return report, heads
    for dock_dir in sorted(audit_dir.iterdir()):
        where_dock = f"{rel}/{dock_dir.name}"
        if dock_dir.is_symlink() or not dock_dir.is_dir():
            report.problems.append(f"{where_dock}: not a directory")
            continue
        segs: list[tuple[int, int, Path]] = []
        for f in sorted(dock_dir.iterdir()):
            m = _SEGMENT_RE.fullmatch(f.name)
            if m:
                segs.append((int(m[1]), int(m[2]), f))
            elif f.name.endswith(PARTIAL_SUFFIX):  # being uploaded now, or cut by a crash
                report.warnings.append(f"{where_dock}/{f.name}: stray partial upload")
            elif not (f.name.endswith(SIG_SUFFIX) and
                      _SEGMENT_RE.fullmatch(f.name[:-len(SIG_SUFFIX)])):
                report.problems.append(f"{where_dock}/{f.name}: not an audit segment")
        prev_hash, next_id = "", 1
        for first, last, f in sorted(segs):
            where = f"{where_dock}/{f.name}"
            try:
                data = _read(f)
                sig = _read(f.with_name(f.name + SIG_SUFFIX))
            except OSError as exc:
                report.problems.append(f"{where}: cannot read ({exc.strerror or exc})")
                break
            try:
                check_signature(data, sig, keys)
            except VerifyError as exc:
                report.problems.append(f"{where}: {exc}")
            try:
                header, entries = parse_segment(data)
            except VerifyError as exc:
                report.problems.append(f"{where}: {exc}")
                break
            if (header["first"], header["last"]) != (first, last):
                report.problems.append(f"{where}: file name does not match its entries "
                                       f"{header['first']}-{header['last']}")
            if first > next_id:
                report.problems.append(f"{where_dock}: audit entries {next_id}..{first - 1} "
                                       f"missing (a segment was removed)")
                prev_hash = entries[0]["prev_hash"]
            sub = chain_problems(entries, start_prev=prev_hash, start_id=first, where=where)
            report.entries += sub.entries
            if sub.problems:
                report.problems.extend(sub.problems)
                report.first_bad = report.first_bad or sub.first_bad
                break
            prev_hash, next_id = entries[-1]["hash"], last + 1
            heads[dock_dir.name] = {"id": last, "hash": prev_hash}
            if collect is not None:
                collect.extend(entries)
    return report, heads


def _read(p: Path) -> bytes:
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def entries_of_segments(files: Iterable[Path]) -> list[dict[str, Any]]:
    """All entries of the given segment files, in order (for ``audit show`` on a copy)."""
    out: list[dict[str, Any]] = []
    for f in files:
        out.extend(parse_segment(_read(f))[1])
    return out
