"""Where delivered files live on a storage target (pure: strings in, strings out).

One docking of one recorder becomes one directory (or key prefix)::

    {unit_no}/{officer_no}/{serial}/{YYYY-MM-DD}/{YYYYMMDDThhmmssZ}_{dock}_{port}_{docking_id}/
        <clip stored names>
        manifest.json
        manifest.json.sig

The leaf's time is the dock's clock at docking, in UTC. The date folder is the recording's
LOCAL date in the dock's time zone (:func:`recording_date`: the earliest clip's start, else
the docking's): a clip recorded at 00:36 on 1 December in Beijing is filed under
``2026-12-01``, not under the UTC date 30 November. Public keys of the docks that
signed manifests are published as ``_keys/<key id with ':' as '_'>.pub``.

Every component comes from the recorder (which may be hostile or broken) and is
sanitised: only ``[A-Za-z0-9._-]`` is kept, every other byte of its UTF-8 form (and ``%``
itself) is percent-escaped, a leading ``.`` or ``_`` is escaped too (no hidden files, no
``.``/``..``, no clash with ``_keys``/``_unknown``), and an empty value becomes
``_unknown``. The result can never contain ``/`` or be absolute.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, tzinfo

from ..model import RecorderIdentity

log = logging.getLogger(__name__)

QUARANTINE_DIR = "_quarantine"
"""Copies that failed verification on a rewritable target, kept for investigation."""
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
PARTIAL_SUFFIX = ".partial"
KEYS_DIR = "_keys"
UNKNOWN = "_unknown"
MAX_COMPONENT = 120
"""Longer components are cut and given a hash suffix (file systems allow 255 bytes)."""

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _char_bytes(ch: str) -> bytes:
    try:
        return ch.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return ch.encode("utf-8", "surrogatepass")


def sanitize_component(value: str, limit: int = MAX_COMPONENT) -> str:
    """One path component that is safe on any target (see the module docstring), at most
    ``limit`` characters (over-long values are cut and end in a hash of the whole)."""
    if not value:
        return UNKNOWN
    out = []
    for i, ch in enumerate(value):
        if ch in _SAFE and not (i == 0 and ch in "._"):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in _char_bytes(ch))
    safe = "".join(out)
    if len(safe) > limit:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        safe = f"{safe[:limit - 17]}-{digest}"
    return safe


def recording_date(starts: Iterable[datetime | None], docked_at: datetime, tz: tzinfo) -> date:
    """The local date (in ``tz``, the dock's zone) a docking is filed under: that of its
    earliest recording start, else that of the docking itself."""
    aware = [s for s in starts if s is not None and s.tzinfo is not None]
    first = min(aware, default=docked_at)
    if first.tzinfo is None or first.utcoffset() is None:
        raise ValueError("docked_at must be timezone-aware")
    return first.astimezone(tz).date()


def docking_prefix(
    recorder: RecorderIdentity, docked_at: datetime, dock_id: str, port: str, docking_id: int,
    *, local_date: date | None = None,
) -> str:
    """The directory (key prefix) of one docking; see the module docstring. ``local_date``
    (from :func:`recording_date`) names the date folder; without it (manifests written
    before it existed) the UTC date of the docking does."""
    if docked_at.tzinfo is None or docked_at.utcoffset() is None:
        raise ValueError("docked_at must be timezone-aware")
    t = docked_at.astimezone(UTC)
    # the leaf joins four parts; dock and port get 100 characters each so that the whole
    # stays under the 255-byte file-name limit (16 + 1 + 100 + 1 + 100 + 1 + 20)
    leaf = "_".join((
        t.strftime("%Y%m%dT%H%M%SZ"),
        sanitize_component(dock_id, 100),
        sanitize_component(port, 100),
        sanitize_component(str(int(docking_id))),
    ))
    parts = [
        sanitize_component(recorder.unit_no),
        sanitize_component(recorder.officer_no),
        sanitize_component(recorder.serial),
        local_date.isoformat() if local_date is not None else t.strftime("%Y-%m-%d"),
        leaf,
    ]
    return "/".join(parts)


def check_stored_name(name: str) -> str:
    """Return ``name`` if it may be a file name inside a docking directory, else ValueError."""
    if not name or name in {".", ".."}:
        raise ValueError(f"stored name {name!r} is empty or a dot name")
    if "/" in name or "\\" in name or _CONTROL.search(name):
        raise ValueError(f"stored name {name!r} contains a separator or control character")
    if name in _RESERVED_NAMES or name.endswith(PARTIAL_SUFFIX):
        raise ValueError(f"stored name {name!r} is reserved for dockd's own files")
    if len(name.encode("utf-8", "surrogatepass")) > 240:
        raise ValueError(f"stored name {name[:40]!r}... is too long")
    return name


def split_key(key: str) -> list[str]:
    """The components of a relative object key; ValueError if it could escape its root."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"key {key!r} is empty, absolute or contains a backslash/NUL")
    parts = key.split("/")
    for p in parts:
        if p in {"", ".", ".."}:
            raise ValueError(f"key {key!r} has an empty, '.' or '..' component")
    return parts


def clip_key(prefix: str, stored_name: str) -> str:
    split_key(prefix)
    return f"{prefix}/{check_stored_name(stored_name)}"


def manifest_key(prefix: str) -> str:
    split_key(prefix)
    return f"{prefix}/{MANIFEST_NAME}"


def signature_key(prefix: str) -> str:
    split_key(prefix)
    return f"{prefix}/{SIGNATURE_NAME}"


def key_path(key_id: str) -> str:
    """Where the public key with ``key_id`` is published: ``_keys/ed25519_<hex>.pub``."""
    return f"{KEYS_DIR}/{sanitize_component(key_id.replace(':', '_'))}.pub"
