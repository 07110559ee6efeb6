"""Trusted time (RFC 3161): ask a Time-Stamp Authority to vouch for a hash, check its token.

The dock asks the configured TSA (``[timestamp] url``) for a token over the SHA-256 of each
manifest and checkpoint, and delivers the token beside the file as ``<name>.tsr`` (the DER
TimeStampResp the TSA answered). A reviewer checks the token with ``dockd verify
--tsa-cert FILE``: the token must cover exactly that file's SHA-256 and chain to a TSA
certificate the reviewer trusts. Parsing and verification are ``rfc3161-client``'s; the
transport is one HTTP POST (``application/timestamp-query``) with a timeout.

No TSA configured: nothing is requested, and ``dockd verify`` says that the files carry no
trusted time (the dock's own clock, signed with its key, is all there is).
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from ..errors import DockdError, VerifyError

log = logging.getLogger(__name__)

CONTENT_TYPE_QUERY = "application/timestamp-query"


class TimestampError(DockdError):
    """The TSA could not be asked or gave no usable token (the file goes without one)."""


@dataclass(frozen=True)
class TokenInfo:
    gen_time: datetime
    serial: int


def request_token(url: str, data: bytes, *, timeout: float = 10.0) -> bytes:
    """POST a time-stamp query for SHA-256(``data``) to ``url``; return the DER response.

    The response is checked to be granted and to cover this hash and nonce (its signature
    chain is the reviewer's to judge against the TSA certificate they trust).
    """
    from rfc3161_client import HashAlgorithm, TimestampRequestBuilder, decode_timestamp_response

    req = TimestampRequestBuilder().data(data).hash_algorithm(HashAlgorithm.SHA256).nonce(
        nonce=True).cert_request(cert_request=True).build()
    http = urllib.request.Request(url, data=req.as_bytes(), method="POST",
                                  headers={"Content-Type": CONTENT_TYPE_QUERY})
    try:
        with urllib.request.urlopen(http, timeout=timeout) as resp:  # noqa: S310 (configured)
            body = resp.read(1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise TimestampError(f"TSA {url}: {getattr(exc, 'reason', exc)}") from exc
    try:
        tsr = decode_timestamp_response(body)
    except ValueError as exc:
        raise TimestampError(f"TSA {url}: answer is not a time-stamp response") from exc
    if tsr.status not in (0, 1):  # granted, granted with modifications
        raise TimestampError(f"TSA {url}: refused (status {tsr.status})")
    info = tsr.tst_info
    if info.message_imprint.message != hashlib.sha256(data).digest():
        raise TimestampError(f"TSA {url}: token is for another hash")
    if req.nonce is not None and info.nonce != req.nonce:
        raise TimestampError(f"TSA {url}: token has another nonce")
    return body


def load_tsa_certs(paths: Sequence[Path]) -> list[x509.Certificate]:
    """PEM certificates (one or more per file) of TSAs / their roots the reviewer trusts."""
    certs: list[x509.Certificate] = []
    for p in paths:
        try:
            data = Path(p).read_bytes()
        except OSError as exc:
            raise VerifyError(f"cannot read TSA certificate {p}: {exc.strerror or exc}"
                              ) from exc
        try:
            certs.extend(x509.load_pem_x509_certificates(data))
        except ValueError:
            raise VerifyError(f"{p}: not a PEM certificate") from None
    return certs


def check_token(token: bytes, data: bytes, roots: Sequence[x509.Certificate]) -> TokenInfo:
    """``VerifyError`` unless ``token`` time-stamps SHA-256(``data``) and is signed by a TSA
    that chains to one of ``roots``; otherwise the time the TSA vouches for."""
    from rfc3161_client import VerificationError, VerifierBuilder, decode_timestamp_response

    try:
        tsr = decode_timestamp_response(token)
    except ValueError:
        raise VerifyError("timestamp token is not an RFC 3161 response") from None
    info = tsr.tst_info
    if info.message_imprint.message != hashlib.sha256(data).digest():
        raise VerifyError("timestamp token is for another hash")
    last: Exception | None = None
    for root in roots:
        try:
            VerifierBuilder().add_root_certificate(root).build().verify_message(tsr, data)
        except (VerificationError, ValueError) as exc:
            last = exc
            continue
        return TokenInfo(info.gen_time, info.serial_number)
    raise VerifyError(f"timestamp token is not from a trusted TSA ({last})")
