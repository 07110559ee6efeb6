"""Resumable multipart upload of one large clip to an S3 target.

``put_multipart`` is ``S3Target.put_file``'s path for files larger than ``part_size``:

1. journalled uploads for the same key with other content (or another part size) are
   aborted and forgotten — the source changed, their parts are worthless;
2. a journalled upload for this content is resumed if the server still knows it
   (``ListParts``); otherwise a new one is created (``ChecksumAlgorithm=SHA256``, metadata,
   object-lock headers) and journalled before any part is sent;
3. the file is read part by part (memory: one part). Every part is hashed; a part the
   journal *and* the server both hold with the same ETag, size and SHA-256 is not sent
   again, every other part is sent with its SHA-256 and journalled once acknowledged;
4. only if the whole file hashed to the expected SHA-256 and size is the upload completed
   (``If-None-Match: *``: an object that appeared meanwhile is compared, never replaced);
   otherwise it is aborted and the error is permanent (the source is not what was signed).

The journal (``dockd.delivery.s3_uploads``) survives a killed daemon, so at most the parts
in flight at the moment of the crash are sent twice.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path
from typing import Any, Protocol

from ..errors import DeliveryError
from .base import Receipt, Retention, os_error_to_delivery
from .s3_uploads import JournalPart, PendingUpload, UploadJournal
from .s3_wire import b64_to_hex, composite_sha256, error_code, translate_error

log = logging.getLogger(__name__)


class MultipartTarget(Protocol):
    """What a multipart upload needs of its target (:class:`dockd.delivery.s3.S3Target`)."""

    name: str
    bucket: str
    part_size: int
    journal: UploadJournal

    @property
    def client(self) -> Any:
        """The boto3 S3 client (boto3 ships no types)."""

    def pace(self, nbytes: int) -> None:
        """Wait as long as the bandwidth cap requires before sending ``nbytes``."""

    def call(self, action: str, key: str, op: str, **kw: Any) -> Any:
        """``client.<op>(Bucket=..., **kw)`` with errors translated."""

    def object_args(self, sha256: str, size: int, retention: Retention | None
                    ) -> dict[str, Any]:
        """Metadata and object-lock arguments of a new object."""

    def lost_race(self, key: str, full: str, sha256: str, size: int) -> Receipt:
        """The receipt for an object that appeared under ``full`` meanwhile (compared,
        never replaced)."""

MAX_PARTS = 10_000
MIB = 1024 * 1024


def part_size_for(size: int, part_size: int) -> int:
    """``part_size``, grown to whole MiB where ``size`` would need more than 10 000 parts."""
    if -(-size // part_size) <= MAX_PARTS:
        return part_size
    need = -(-size // MAX_PARTS)
    return -(-need // MIB) * MIB


def put_multipart(t: MultipartTarget, local_path: Path, key: str, full: str, sha256: str,
                  size: int, retention: Retention | None) -> Receipt:
    part_size = part_size_for(size, t.part_size)
    up, on_server = _resume_or_start(t, key, full, sha256, size, part_size, retention)
    journalled = t.journal.parts(up.upload_id)
    n_parts = -(-size // part_size)
    whole = hashlib.sha256()
    digests: list[bytes] = []
    parts: list[dict[str, Any]] = []
    sent = reused = 0
    try:
        src = open(local_path, "rb")
    except OSError as exc:
        raise os_error_to_delivery(exc, t.name, str(local_path), "read source") from exc
    with src:
        for number in range(1, n_parts + 1):
            want = min(part_size, size - (number - 1) * part_size)
            try:
                data = src.read(want)
            except OSError as exc:
                raise os_error_to_delivery(exc, t.name, str(local_path), "read source") from exc
            if len(data) != want:
                _abandon(t, up, key)
                raise DeliveryError(f"{t.name}: source for {key} is shorter than {size} "
                                    "bytes; not delivered", retry=False)
            whole.update(data)
            digest = hashlib.sha256(data).digest()
            digests.append(digest)
            j = journalled.get(number)
            s = on_server.get(number)
            if j is not None and s is not None and (j.etag, j.size, j.sha256) == (
                    s[0], len(data), digest.hex()) and s[1] == len(data):
                etag = j.etag
                reused += 1
            else:
                etag = _upload_part(t, up, key, number, data, digest)
                sent += 1
            parts.append({"PartNumber": number, "ETag": etag,
                          "ChecksumSHA256": base64.b64encode(digest).decode("ascii")})
            del data
        if src.read(1):
            _abandon(t, up, key)
            raise DeliveryError(f"{t.name}: source for {key} is longer than {size} bytes; "
                                "not delivered", retry=False)
    if whole.hexdigest() != sha256:
        _abandon(t, up, key)
        raise DeliveryError(f"{t.name}: source for {key} hashes to {whole.hexdigest()}, "
                            f"expected {sha256}; not delivered", retry=False)
    composite = composite_sha256(digests)
    try:
        resp = t.client.complete_multipart_upload(
            Bucket=t.bucket, Key=full, UploadId=up.upload_id, IfNoneMatch="*",
            MultipartUpload={"Parts": parts})
    except Exception as exc:
        code = error_code(exc)
        if code == "PreconditionFailed":
            _abandon(t, up, key)
            return t.lost_race(key, full, sha256, size)
        if code == "NoSuchUpload":
            t.journal.forget(up.upload_id)
        raise translate_error(exc, t.name, key, "complete upload of") from exc
    t.journal.complete(up, composite, n_parts)
    echoed = resp.get("ChecksumSHA256")
    if echoed and echoed.split("-")[0] != composite:
        raise DeliveryError(f"{t.name}: store reports composite checksum {echoed} for {key}, "
                            f"expected {composite}", retry=True)
    log.info("%s: %s: %d parts sent, %d already on the server", t.name, key, sent, reused)
    return Receipt(key=key, size=size, sha256=sha256, already_present=False)


def _resume_or_start(t: MultipartTarget, key: str, full: str, sha256: str, size: int,
                     part_size: int, retention: Retention | None
                     ) -> tuple[PendingUpload, dict[int, tuple[str, int]]]:
    resume: PendingUpload | None = None
    for p in t.journal.pending(t.bucket, full):
        if (p.sha256, p.size, p.part_size) == (sha256, size, part_size) and resume is None:
            resume = p
        else:
            log.info("%s: aborting stale upload of %s (source was %s)", t.name, key, p.sha256)
            _abandon(t, p, key)
    if resume is not None:
        listed = _list_parts(t, resume, key)
        if listed is not None:
            log.info("%s: resuming upload of %s: %d parts on the server", t.name, key,
                     len(listed))
            return resume, listed
        log.info("%s: journalled upload of %s is gone from the server; starting again",
                 t.name, key)
        t.journal.forget(resume.upload_id)
    kw = t.object_args(sha256, size, retention)
    created = t.call("start upload of", key, "create_multipart_upload", Key=full,
                      ChecksumAlgorithm="SHA256", **kw)
    up = PendingUpload(t.bucket, full, sha256, created["UploadId"], size, part_size)
    t.journal.start(up)
    return up, {}


def _list_parts(t: MultipartTarget, up: PendingUpload, key: str) -> dict[int, tuple[str, int]] | None:
    """{part number: (ETag, size)} the server holds for ``up``; None if the upload is gone."""
    found: dict[int, tuple[str, int]] = {}
    marker = 0
    while True:
        try:
            resp = t.client.list_parts(Bucket=t.bucket, Key=up.key, UploadId=up.upload_id,
                                       PartNumberMarker=marker)
        except Exception as exc:
            if error_code(exc) in ("NoSuchUpload", "404"):
                return None
            raise translate_error(exc, t.name, key, "list parts of") from exc
        for p in resp.get("Parts", []):
            found[int(p["PartNumber"])] = (str(p["ETag"]), int(p["Size"]))
        if not resp.get("IsTruncated"):
            return found
        marker = int(resp["NextPartNumberMarker"])


def _upload_part(t: MultipartTarget, up: PendingUpload, key: str, number: int, data: bytes,
                 digest: bytes) -> str:
    t.pace(len(data))
    try:
        resp = t.client.upload_part(
            Bucket=t.bucket, Key=up.key, UploadId=up.upload_id, PartNumber=number, Body=data,
            ChecksumAlgorithm="SHA256", ChecksumSHA256=base64.b64encode(digest).decode("ascii"))
    except Exception as exc:
        if error_code(exc) == "NoSuchUpload":
            t.journal.forget(up.upload_id)
        raise translate_error(exc, t.name, key, f"upload part {number} of") from exc
    echoed = resp.get("ChecksumSHA256")
    if echoed and b64_to_hex(echoed) != digest.hex():
        raise DeliveryError(f"{t.name}: store reports SHA-256 {b64_to_hex(echoed)} for part "
                            f"{number} of {key}, sent {digest.hex()}", retry=True)
    etag = str(resp["ETag"])
    t.journal.add_part(up.upload_id, JournalPart(number, len(data), etag, digest.hex()))
    return etag


def _abandon(t: MultipartTarget, up: PendingUpload, key: str) -> None:
    """Abort ``up`` on the server (best effort) and forget it."""
    try:
        t.client.abort_multipart_upload(Bucket=t.bucket, Key=up.key, UploadId=up.upload_id)
    except Exception as exc:
        if error_code(exc) not in ("NoSuchUpload", "404"):
            log.warning("%s: cannot abort upload of %s: %s", t.name, key, error_code(exc) or exc)
            return  # keep it journalled: the next attempt aborts it again
    t.journal.forget(up.upload_id)
