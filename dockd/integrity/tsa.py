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
            body: bytes = resp.read(1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise TimestampError(f"TSA {url}: {getattr(exc, 'reason', exc)}") from exc
    try:
        tsr = decode_timestamp_response(body)
    except ValueError as exc:
        raise TimestampError(f"TSA {url}: answer is not a time-stamp response") from exc
    if tsr.status != 0:
        raise TimestampError(f"TSA {url}: not granted (status {tsr.status})")
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
    try:
        return _check_token(token, data, roots)
    except (ValueError, TypeError, AttributeError) as exc:  # the parser is lazy
        raise VerifyError(f"timestamp token is malformed ({str(exc)[:120]})") from None


def _check_token(token: bytes, data: bytes, roots: Sequence[x509.Certificate]) -> TokenInfo:
    from rfc3161_client import VerificationError, VerifierBuilder, decode_timestamp_response

    try:
        tsr = decode_timestamp_response(token)
    except ValueError:
        raise VerifyError("timestamp token is not an RFC 3161 response") from None
    if tsr.status != 0:  # dockd keeps only plainly granted tokens (status is not signed)
        raise VerifyError(f"timestamp token has status {tsr.status}, not 'granted'")
    info = tsr.tst_info
    if info.message_imprint.message != hashlib.sha256(data).digest():
        raise VerifyError("timestamp token is for another hash")
    if tsr.as_bytes() != token:
        raise VerifyError("timestamp token is not in its one DER encoding")
    _check_unsigned_fields(token)
    last: Exception | None = None
    for root in roots:
        try:
            VerifierBuilder().add_root_certificate(root).build().verify_message(tsr, data)
        except (VerificationError, ValueError) as exc:
            last = exc
            continue
        return TokenInfo(info.gen_time, info.serial_number)
    raise VerifyError(f"timestamp token is not from a trusted TSA ({last})")


# Fields of a token that its signature does not cover, held to the only values RFC 3161 /
# RFC 5652 allow for what a TSA signs here, so that no byte of a kept token can change
# unnoticed: SignedData version 3, SignerInfo version 1, a known signature algorithm.
_GENERIC_SIG_OIDS = tuple(bytes.fromhex(h) for h in (
    "2a864886f70d010101", "2a864886f70d01010a", "2b6570"))  # rsaEncryption, PSS, Ed25519
_SIG_ALG_OIDS: dict[bytes, frozenset[bytes]] = {  # digest algorithm -> signature algorithms
    bytes.fromhex(d): frozenset((bytes.fromhex(e), bytes.fromhex(r), *_GENERIC_SIG_OIDS))
    for d, e, r in (
        ("608648016503040201", "2a8648ce3d040302", "2a864886f70d01010b"),  # SHA-256
        ("608648016503040202", "2a8648ce3d040303", "2a864886f70d01010c"),  # SHA-384
        ("608648016503040203", "2a8648ce3d040304", "2a864886f70d01010d"),  # SHA-512
    )
}


def _tlv(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``i``."""
    tag = data[i]
    n = data[i + 1]
    j = i + 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[j:j + k], "big")
        j += k
    if j + n > len(data):
        raise ValueError("truncated")
    return tag, j, j + n


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out, i = [], start
    while i < end:
        tag, s, e = _tlv(data, i)
        out.append((tag, s, e))
        i = e
    return out


def _check_unsigned_fields(token: bytes) -> None:
    try:
        _, s, e = _tlv(token, 0)
        resp = _children(token, s, e)  # status, timeStampToken
        _, s, e = resp[1]
        content = _children(token, s, e)  # contentType, [0]
        _, s, e = content[1]
        _, s, e = _children(token, s, e)[0]  # SignedData
        sd = _children(token, s, e)
        if sd[0][0] != 0x02 or token[sd[0][1]:sd[0][2]] != b"\x03":
            raise VerifyError("timestamp token: SignedData version is not 3")
        signer_infos = sd[-1]
        infos = _children(token, signer_infos[1], signer_infos[2])
        if len(infos) != 1:
            raise VerifyError("timestamp token: not exactly one signer")
        si = _children(token, infos[0][1], infos[0][2])
        if si[0][0] != 0x02 or token[si[0][1]:si[0][2]] != b"\x01":
            raise VerifyError("timestamp token: SignerInfo version is not 1")
        digest = _children(token, si[2][1], si[2][2])[0]
        allowed = _SIG_ALG_OIDS.get(token[digest[1]:digest[2]], frozenset())
        alg = si[-2]
        oid = _children(token, alg[1], alg[2])[0]
        if alg[0] != 0x30 or oid[0] != 0x06 or token[oid[1]:oid[2]] not in allowed:
            raise VerifyError("timestamp token: signature algorithm does not match its "
                              "digest algorithm")
    except (IndexError, ValueError):
        raise VerifyError("timestamp token: malformed structure") from None
