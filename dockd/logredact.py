"""Keeping credentials out of every log line, at every level (issue 11).

Two layers, installed by :func:`install` on the handlers ``dockd`` sets up (the CLI's
stderr handler, which journald collects, and the demo's log file):

1. **Third-party loggers are capped.** botocore/boto3/s3transfer/urllib3 log request
   headers (the S3 session token, presigned query strings) and signing material at DEBUG;
   asyncssh/paramiko log authentication details. :data:`CAPPED` never go below INFO, even
   with ``-v`` or ``logging.level = "DEBUG"``.
2. **A redacting filter on each handler** (:class:`RedactingFilter`) rewrites what any
   logger emits, ours included: every secret value registered with :func:`register` (S3
   secret key, access key id and session token, SFTP key passphrase, the web token; plain,
   URL-quoted and base64 forms) and anything shaped like a credential header or option
   (``X-Amz-Security-Token: ...``, ``Authorization: ...``, ``aws_secret_access_key = ...``,
   ``Signature=...``) become ``[REDACTED]``. The filter formats the message itself
   (``record.getMessage()``), so a secret in ``%s`` arguments or in an exception's text is
   caught as well.

Secrets are registered where they are read (:mod:`dockd.secrets`), before any client that
could log them is built.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterable

MASK = "[REDACTED]"
CAPPED = ("botocore", "boto3", "s3transfer", "urllib3", "asyncssh", "paramiko")
MIN_SECRET_LEN = 4
"""Shorter values are not registered (masking "ab" everywhere would garble the log)."""

_PATTERNS = [
    re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=]\s*['\"]?)[^\s'\",&}]+"),
    re.compile(r"(?i)(x-amz-(?:signature|credential)['\"]?\s*[:=]\s*['\"]?)[^\s'\",&}]+"),
    re.compile(r"(?i)(\bauthorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n}]+"),
    re.compile(r"(?i)(\b(?:aws_)?(?:secret_access_key|session_token|secret_key|secretkey)"
               r"['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
    re.compile(r"(?i)(\b(?:passphrase|password|token)['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
    re.compile(r"(\bSignature=)[0-9a-fA-F]{16,}"),
]

_lock = threading.Lock()
_secrets: set[str] = set()


def register(*values: str | bytes | None) -> None:
    """Remember secret values so that no log line shows them (nor their URL-quoted or
    base64 forms)."""
    with _lock:
        for value in values:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if not value or len(value.strip()) < MIN_SECRET_LEN:
                continue
            value = value.strip()
            forms = {value, urllib.parse.quote(value, safe=""),
                     urllib.parse.quote_plus(value),
                     base64.b64encode(value.encode()).decode("ascii").rstrip("=")}
            _secrets.update(f for f in forms if len(f) >= MIN_SECRET_LEN)


def registered() -> frozenset[str]:
    with _lock:
        return frozenset(_secrets)


def forget_all() -> None:
    """Tests only: start from an empty registry."""
    with _lock:
        _secrets.clear()


def redact(text: str) -> str:
    """``text`` with every registered secret and credential-shaped value masked."""
    if not text:
        return text
    for secret in sorted(registered(), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """Handler filter: rewrite the record's message (and exception text) with secrets
    masked. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken %-format must not hide the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def cap_third_party(level: int) -> None:
    """Third-party loggers log at INFO or above only (see module doc)."""
    for name in CAPPED:
        logging.getLogger(name).setLevel(max(level, logging.INFO))


def install(handlers: Iterable[logging.Handler] | None = None, *,
            level: int | None = None) -> None:
    """Put a :class:`RedactingFilter` on ``handlers`` (default: the root logger's) and cap
    the third-party loggers relative to ``level`` (default: the root logger's level)."""
    root = logging.getLogger()
    for handler in root.handlers if handlers is None else handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    cap_third_party(root.level if level is None else level)
