"""What an S3 store says, in dockd's terms: errors with their retry meaning, and checksums.

:func:`translate_error` turns a botocore exception (or an ``OSError`` from the connection)
into a :class:`~dockd.errors.DeliveryError`: network trouble, timeouts, 5xx,
``SlowDown``/503 (with ``retry_after`` from ``Retry-After``), 507/out of storage →
``retry=True``; refused or unknown credentials and a missing bucket are the target's state
(retried and alarmed until fixed); other 4xx ("can never be stored") → ``retry=False``.
Anything else is a bug in dockd, not a delivery problem, and is raised as itself.

Checksums travel base64-encoded (``x-amz-checksum-sha256``); a multipart object's is the
SHA-256 of its parts' digests (:func:`composite_sha256`). :mod:`.s3` and
:mod:`.s3_multipart` both use this module; it imports neither.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from ..errors import DeliveryError

log = logging.getLogger(__name__)

RETRY_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
    "ThrottlingException", "TooManyRequests", "RequestTimeTooSkewed", "OperationAborted",
    "XMinioStorageFull", "InsufficientStorage", "XMinioServerNotInitialized", "ExpiredToken",
})
TARGET_STATE_CODES = frozenset({
    "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "AllAccessDisabled", "AccountProblem", "InvalidToken",
})
"""The store's set-up, not this object: a missing bucket, refused or unknown credentials."""
BAD_DIGEST_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch",
                              "XAmzContentChecksumMismatch"})
"""What a store that checks checksums answers to a part with a wrong SHA-256."""


def b64_to_hex(value: str) -> str:
    """A base64 checksum (a composite's ``-N`` suffix dropped) as hex."""
    return base64.b64decode(value.split("-")[0]).hex()


def composite_sha256(part_digests: list[bytes]) -> str:
    """S3's composite checksum of a multipart object: SHA-256 of the parts' digests (base64)."""
    return base64.b64encode(hashlib.sha256(b"".join(part_digests)).digest()).decode("ascii")


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (None for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) or None
    return None


def translate_error(exc: BaseException, target: str, key: str, action: str) -> DeliveryError:
    """A botocore (or connection ``OSError``) exception as a ``DeliveryError`` carrying its
    retry meaning; a ``DeliveryError`` is returned as it is. Any other exception is
    re-raised: a programming error must surface, not be retried as a delivery problem."""
    if isinstance(exc, DeliveryError):
        return exc
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return DeliveryError(f"{target}: no usable S3 credentials to {action} {key}",
                             target_state=True)
    if isinstance(exc, ClientError):
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        code = error_code(exc) or str(status)
        headers = meta.get("HTTPHeaders") or {}
        after = retry_after(headers.get("retry-after"))
        retry = status >= 500 or status in (408, 429) or code in RETRY_CODES
        if code == "403":  # HEAD answers have no body to carry the code
            code = "Forbidden (access denied or bad credentials)"
        msg = f"{target}: cannot {action} {key}: {code} (HTTP {status})"
        state = status in (401, 403) or code in TARGET_STATE_CODES
        log.debug("%s retry=%s target state=%s", msg, retry, state)
        return DeliveryError(msg, retry=retry, retry_after=after if retry else None,
                             target_state=state)
    if isinstance(exc, (BotoCoreError, OSError)):
        return DeliveryError(f"{target}: cannot {action} {key}: {type(exc).__name__}: {exc}",
                             retry=True)
    raise exc


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
