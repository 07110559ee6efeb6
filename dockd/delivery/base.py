"""The storage-target protocol every delivery backend (local, S3, SFTP, ...) implements.

Rules every backend keeps, because the upload queue relies on them:

* **Idempotent.** If the final object already exists with the same SHA-256 (and size),
  ``put_*`` does nothing and returns ``Receipt(already_present=True)``. A daemon that
  crashed after an upload and delivers again never creates a second object.
* **Never overwrite evidence.** If the final object exists with *different* content,
  ``put_*`` raises ``DeliveryError(retry=False)`` and leaves it untouched.
* **All or nothing.** A failure leaves no object under the final key (partial uploads
  live under a temporary name, a multipart upload, ... and are published last).
* **Checked.** ``put_file`` refuses a source whose content does not match the ``sha256``
  and ``size`` it was given, and the backend checks what landed before it is published.
  A backend whose check re-reads what the key holds after it was made durable (local: the
  disk after ``fsync``; SFTP: read-back or the server's ``sha256sum``) says so with
  ``Receipt.verified``, and the delivery step does not read the copy again; for any other
  (S3) it calls ``verify``. Each delivered copy is read back once (#13).
* **Retry meaning.** Errors are ``DeliveryError`` with ``retry`` set: transient trouble
  (no space, I/O error, network) is ``retry=True``; the target's own state (read-only,
  not a directory, permission denied, missing key or credentials, authentication refused)
  is ``target_state=True`` (retried with backoff and alarmed until it is fixed); what the
  store refuses for this content (conflicting content, a key that escapes the target) is
  ``retry=False``.

Keys are relative ``/``-separated paths built by ``dockd.delivery.layout``.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import DeliveryError

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024

_FATAL_ERRNOS = frozenset({
    errno.ELOOP, errno.EISDIR, errno.ENAMETOOLONG, errno.EINVAL, errno.EXDEV,
})
# The target's own state (a share mounted read-only or not at all, wrong permissions): it
# can be fixed without touching the evidence, so it is retried with backoff and alarmed.
_TARGET_STATE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR})


@dataclass(frozen=True)
class Retention:
    """How long the storage server must keep an object (R7). Backends that can enforce it
    (S3 object lock) do; others record nothing and rely on the server's own policy."""

    retention_class: str
    """routine | standard | evidence | permanent"""
    retain_until: datetime | None
    """Keep at least until then (UTC); None for permanent (legal hold instead)."""
    legal_hold: bool = False


@dataclass(frozen=True)
class Receipt:
    """What a target confirms after a put."""

    key: str
    size: int
    sha256: str
    already_present: bool
    verified: bool = False
    """The put itself read back what the final key holds after it was made durable (after
    ``fsync``, from the disk or the server, not from a cache) and it matched ``sha256`` and
    ``size``: the delivery step then does not read it again with ``verify`` (#13: each
    delivered copy is read back once). False where only ``verify`` reads it back (S3)."""


@dataclass(frozen=True)
class RemoteObject:
    """What a target knows about a stored object without reading it."""

    key: str
    size: int
    sha256: str | None = None
    """Known only where the backend stores a checksum (object metadata); else None."""


@runtime_checkable
class StorageTarget(Protocol):
    """A place delivered files go to. See the module docstring for the rules."""

    name: str
    required: bool
    throttle: Callable[[int], object] | None
    """Set by the queue when the target has a bandwidth cap: call it with each chunk's size
    before sending it (it blocks as long as the cap requires)."""

    def describe(self) -> str:
        """Human description for logs and status (never contains credentials)."""
        ...

    def put_file(self, local_path: Path, key: str, *, sha256: str, size: int,
                 retention: Retention | None = None) -> Receipt:
        """Store ``local_path`` under ``key``; its content must hash to ``sha256``/``size``."""
        ...

    def put_bytes(self, data: bytes, key: str, *, retention: Retention | None = None) -> Receipt:
        """Store a small document (manifest, signature, public key) under ``key``."""
        ...

    def stat(self, key: str) -> RemoteObject | None:
        """The object under ``key``, or None if there is none."""
        ...

    def verify(self, key: str, *, sha256: str, size: int) -> bool:
        """Re-read what landed under ``key``: True only if it exists with this content."""
        ...

    def close(self) -> None:
        ...


def os_error_to_delivery(exc: OSError, target: str, key: str, action: str) -> DeliveryError:
    """Translate an ``OSError`` into a ``DeliveryError`` with the right retry meaning.

    No space / I/O / network trouble: retry. Permission, read-only file system or
    not-a-directory: the target's state (retried and alarmed). A symlink or a name the
    file system refuses (a key that would escape): never. Anything unknown: retry (the
    upload queue alarms before the deadline, which is safer than dropping a clip).
    """
    code = exc.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else "?"
    retry = code not in _FATAL_ERRNOS
    state = code in _TARGET_STATE_ERRNOS
    message = f"{target}: cannot {action} {key}: {exc.strerror or exc} ({name})"
    log.debug("%s (errno %s, retry=%s, target state=%s)", message, code, retry, state)
    return DeliveryError(message, retry=retry, target_state=state)


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def check_digest(sha256: str, size: int) -> None:
    """Refuse a malformed digest or size before anything is sent (``retry=False``)."""
    if not _SHA256_HEX.fullmatch(sha256):
        raise DeliveryError(f"sha256 {sha256!r} is not 64 lowercase hex digits", retry=False)
    if size < 0:
        raise DeliveryError(f"size {size} is negative", retry=False)


def existing_receipt(target: str, key: str, found: tuple[int, str | None], *, sha256: str,
                     size: int, verified: bool = False) -> Receipt:
    """The rule every backend applies when the final object already exists: the same size and
    SHA-256 is an idempotent success; anything else is never overwritten (``retry=False``).
    ``verified``: ``found`` was hashed from the stored bytes (not a claimed checksum)."""
    if found == (size, sha256):
        log.info("%s: %s already present with the same content", target, key)
        return Receipt(key=key, size=size, sha256=sha256, already_present=True,
                       verified=verified)
    raise DeliveryError(
        f"{target}: {key} already exists with different content ({found[0]} bytes "
        f"{found[1]}, ours {size} bytes {sha256}); refusing to overwrite evidence",
        retry=False)

