"""A storage target that is an S3-compatible object store (MinIO, Ceph RGW, AWS) — R6, R7, R13.

Each ``put_file``:

1. ``HEAD``\\ s the final key: if an object is there, its SHA-256 (user metadata
   ``x-amz-meta-sha256``, the store's full-object checksum, or a read-back when neither is
   known) decides: same content → ``already_present``; other content → ``retry=False``.
2. Small files (≤ ``part_size``): one ``PutObject`` with ``ChecksumAlgorithm=SHA256`` and
   the digest dockd computed, ``If-None-Match: *`` (never a second version of a key),
   metadata ``sha256``/``size``/``retention``, and the object-lock retention.
3. Large files: a multipart upload with a SHA-256 per part, journalled part by part in
   ``dockd.delivery.s3_uploads`` so that a restarted daemon resumes: ``ListParts`` says
   what the server still holds, only missing parts are sent, the whole file is re-hashed
   on the way (parts already sent are read and hashed, not re-sent), and
   ``CompleteMultipartUpload`` (``If-None-Match: *``) runs only if the file matches the
   expected SHA-256 and size. A journalled upload for other content under the same key is
   aborted. Memory is bounded by one part.
4. Retention (R7): with ``object_lock`` set, ``ObjectLockMode`` + ``RetainUntilDate``
   from the clip's retention class, or a legal hold for permanent ones, are sent with the
   object and checked afterwards; a store that dropped them (moto ignores them on
   multipart uploads) gets ``PutObjectRetention``/``PutObjectLegalHold``. Locks are only
   ever extended (``extend_retention``), never shortened.

**Verification, and why ``readback`` stays the default.** ``verify`` always ``HEAD``\\ s
with checksum mode: size, the metadata SHA-256 and any full-object SHA-256 (or, for a
multipart object, the composite checksum journalled at upload) must match. But these are
the store's *claims*. A store that does not check checksums on upload (moto, older RGW,
appliances behind an S3 gateway) simply echoes the ``x-amz-checksum-sha256`` it was sent,
even over bytes it mangled; and no store re-reads the data for a ``HEAD``. So ``checksum``
mode is trusted only after the store has *proven* it rejects a wrong checksum: once per
target, dockd sends one part with a deliberately wrong SHA-256 to a throw-away multipart
upload (``<prefix>_dockd/checksum-probe``, always aborted — nothing is stored) and expects
``BadDigest``. A store that accepts it is verified by read-back instead, with a warning.
``readback`` re-downloads the exact version (streaming) and hashes it; it is the only mode
that catches a store that keeps wrong bytes, which is what may not happen before a
recorder is erased (R6), so it is the default.

Errors are ``DeliveryError`` with their retry meaning (:mod:`.s3_wire`): network trouble,
timeouts, 5xx, ``SlowDown``/503, 507 → retried; refused credentials and a missing bucket
are the target's state (retried and alarmed); other 4xx and conflicting content → never.
An exception that is neither botocore's nor an ``OSError`` is a bug and surfaces as
itself. botocore retries at most once itself (``max_attempts=2``): the dock's queue owns
retrying.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import logredact, secrets
from ..errors import DeliveryError
from ..secrets import SecretFileError, read_secret
from .base import (
    CHUNK_SIZE,
    Receipt,
    RemoteObject,
    Retention,
    check_digest,
    existing_receipt,
    os_error_to_delivery,
)
from .layout import split_key
from .s3_multipart import put_multipart
from .s3_uploads import UploadJournal
from .s3_wire import BAD_DIGEST_CODES, b64_to_hex, error_code, translate_error

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config, TargetConfig

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024
PROBE_KEY = "_dockd/checksum-probe"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MULTIPART_ETAG = re.compile(r"-\d+\"?$")

@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str = ""
    session_token: str | None = None

    def __repr__(self) -> str:  # never print secrets
        return f"S3Credentials(access_key={self.access_key[:4]}…)"


def load_credentials(path: Path) -> S3Credentials:
    """Read ``[default] aws_access_key_id / aws_secret_access_key`` (and optionally
    ``aws_session_token``) from an INI file that others may not read (:mod:`dockd.secrets`);
    every value is registered for log redaction."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        text = read_secret(Path(path), "S3 credentials file").decode("utf-8")
        parser.read_string(text, source=str(path))
        sec = parser["default"]
        creds = S3Credentials(sec["aws_access_key_id"].strip(),
                              sec["aws_secret_access_key"].strip(),
                              sec.get("aws_session_token", "").strip() or None)
        logredact.register(creds.access_key, creds.secret_key, creds.session_token)
        return creds
    except SecretFileError as exc:  # the target's state: retried and alarmed until fixed
        raise DeliveryError(str(exc), target_state=True) from exc
    except UnicodeDecodeError as exc:
        raise DeliveryError(f"S3 credentials file {path} is not UTF-8", retry=False) from exc
    except OSError as exc:
        raise DeliveryError(f"cannot read S3 credentials file {path}: "
                            f"{exc.strerror or exc}", target_state=True) from exc
    except (KeyError, configparser.Error) as exc:
        raise DeliveryError(f"S3 credentials file {path} needs [default] aws_access_key_id "
                            "and aws_secret_access_key", target_state=True) from exc


class S3Target:
    """An S3-compatible bucket (object lock optional). Implements ``StorageTarget``."""

    def __init__(self, name: str, *, endpoint_url: str, bucket: str, state_dir: Path,
                 credentials: S3Credentials | None = None, region: str = "us-east-1",
                 prefix: str = "", object_lock: str = "", part_size: int = 64 * 1024 * 1024,
                 verify: str = "readback", required: bool = True, max_concurrency: int = 4,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 max_attempts: int = 2):
        if object_lock not in ("", "GOVERNANCE", "COMPLIANCE"):
            raise ValueError(f"object_lock must be '', GOVERNANCE or COMPLIANCE: {object_lock!r}")
        if verify not in ("readback", "checksum"):
            raise ValueError(f"verify must be 'readback' or 'checksum': {verify!r}")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        self.name = name
        self.required = required
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.region = region
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.object_lock = object_lock
        self.part_size = part_size
        self.verify_mode = verify
        self.max_concurrency = max_concurrency
        self._credentials = credentials
        self._timeouts = (connect_timeout, read_timeout, max_attempts)
        self._client_obj: Any = None
        self._client_lock = threading.Lock()
        self._store_checks: bool | None = None
        self.throttle: Callable[[int], object] | None = None
        """Bandwidth cap set by the queue; called with the size of every part or object
        (in 1 MiB steps) before it is sent."""
        self.journal = UploadJournal(Path(state_dir) / f"{_safe_name(name)}.db")

    @classmethod
    def from_config(cls, t: TargetConfig, cfg: Config) -> S3Target:
        path = secrets.resolve(t.credentials_file, secrets.credential_name("s3.credentials",
                                                                           t.name))
        creds = load_credentials(path) if path is not None else None
        return cls(t.name, endpoint_url=t.endpoint_url, bucket=t.bucket,
                   state_dir=cfg.paths.state_dir / "s3-uploads", credentials=creds,
                   region=t.region, prefix=t.prefix, object_lock=t.object_lock,
                   part_size=int(t.part_size), verify=t.verify, required=t.required,
                   max_concurrency=t.max_concurrency)

    def describe(self) -> str:
        where = self.endpoint_url or "AWS"
        lock = f", object lock {self.object_lock}" if self.object_lock else ""
        return f"S3 bucket {self.bucket}/{self.prefix} at {where} (verify {self.verify_mode}{lock})"

    def __repr__(self) -> str:
        return f"S3Target({self.name!r}, bucket={self.bucket!r}, endpoint={self.endpoint_url!r})"

    def close(self) -> None:
        with self._client_lock:
            client, self._client_obj = self._client_obj, None
        if client is not None:
            client.close()
        self.journal.close()

    # ------------------------------------------------------------------ client

    @property
    def client(self) -> Any:
        """The boto3 client, created on first use (boto3 is imported only here)."""
        with self._client_lock:
            if self._client_obj is None:
                import boto3
                from botocore.config import Config as BotoConfig

                connect, read, attempts = self._timeouts
                conf = BotoConfig(
                    connect_timeout=connect, read_timeout=read,
                    retries={"max_attempts": attempts, "mode": "standard"},
                    max_pool_connections=max(10, self.max_concurrency * 2),
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    s3={"addressing_style": "path"})
                kw: dict[str, Any] = {}
                if self._credentials is not None:
                    kw = {"aws_access_key_id": self._credentials.access_key,
                          "aws_secret_access_key": self._credentials.secret_key,
                          "aws_session_token": self._credentials.session_token}
                self._client_obj = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint_url or None, region_name=self.region,
                    config=conf, **kw)
            return self._client_obj

    def call(self, action: str, key: str, op: str, **kw: Any) -> Any:
        """``client.<op>(Bucket=..., **kw)``, its errors translated (``action`` names it)."""
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kw)
        except Exception as exc:
            raise translate_error(exc, self.name, key, action) from exc

    def full_key(self, key: str) -> str:
        try:
            split_key(key)
        except ValueError as exc:
            raise DeliveryError(f"{self.name}: refusing key: {exc}", retry=False) from exc
        return self.prefix + key

    # ------------------------------------------------------------------ public operations

    def put_file(self, local_path: Path, key: str, *, sha256: str, size: int,
                 retention: Retention | None = None) -> Receipt:
        check_digest(sha256, size)
        full = self.full_key(key)
        existing = self._head(full, key)
        if existing is not None:
            return self._compare(key, full, existing, sha256, size)
        try:
            actual = os.stat(local_path).st_size
        except OSError as exc:
            raise os_error_to_delivery(exc, self.name, str(local_path), "read source") from exc
        if actual != size:
            raise DeliveryError(f"{self.name}: source for {key} is {actual} bytes, expected "
                                f"{size}; not delivered", retry=False)
        if size <= self.part_size:
            try:
                with open(local_path, "rb") as f:
                    data = f.read(size + 1)
            except OSError as exc:
                raise os_error_to_delivery(exc, self.name, str(local_path), "read source") from exc
            return self._put_single(data, key, full, sha256, size, retention)
        receipt = put_multipart(self, local_path, key, full, sha256, size, retention)
        if receipt.already_present:
            return receipt
        self._ensure_retention(key, full, retention)
        log.info("%s: delivered %s (%d bytes, sha256 %s, multipart)", self.name, key, size,
                 sha256)
        return receipt

    def put_bytes(self, data: bytes, key: str, *, retention: Retention | None = None) -> Receipt:
        sha256 = hashlib.sha256(data).hexdigest()
        full = self.full_key(key)
        existing = self._head(full, key)
        if existing is not None:
            return self._compare(key, full, existing, sha256, len(data))
        return self._put_single(data, key, full, sha256, len(data), retention)

    def stat(self, key: str) -> RemoteObject | None:
        head = self._head(self.full_key(key), key)
        if head is None:
            return None
        return RemoteObject(key=key, size=int(head["ContentLength"]),
                            sha256=self._claimed_sha256(head))

    def verify(self, key: str, *, sha256: str, size: int) -> bool:
        full = self.full_key(key)
        head = self._head(full, key)
        if head is None:
            log.warning("%s: %s is missing on the server", self.name, key)
            return False
        problem = self._claims_mismatch(full, head, sha256, size)
        if problem:
            log.warning("%s: %s does not verify: %s", self.name, key, problem)
            return False
        if self.verify_mode == "checksum" and self._checksum_confirms(full, head, sha256):
            if self.store_checks_checksums():
                return True
            log.warning("%s: store does not reject wrong checksums; verifying %s by "
                        "read-back", self.name, key)
        found = self._read_back(full, key, head.get("VersionId"))
        if found != (size, sha256):
            log.warning("%s: %s does not verify: read back %s, expected %d bytes %s",
                        self.name, key, found, size, sha256)
            return False
        return True

    def extend_retention(self, key: str, retention: Retention) -> None:
        """Apply ``retention`` to an existing object if it is longer (R7: never shortened)."""
        full = self.full_key(key)
        if self._head(full, key) is None:
            raise DeliveryError(f"{self.name}: cannot extend retention of missing {key}",
                                retry=False)
        self._ensure_retention(key, full, retention)

    def read_chunks(self, key: str) -> Iterator[bytes]:
        """The stored object's bytes, streamed (exports read evidence back this way)."""
        resp = self.call("read", key, "get_object", Key=self.full_key(key))
        body = resp["Body"]
        try:
            yield from body.iter_chunks(CHUNK_SIZE)
        except Exception as exc:
            raise translate_error(exc, self.name, key, "read") from exc
        finally:
            body.close()

    def pace(self, nbytes: int) -> None:
        """Wait as long as the bandwidth cap requires before sending ``nbytes``."""
        throttle = self.throttle
        while throttle is not None and nbytes > 0:
            step = min(nbytes, CHUNK_SIZE)
            throttle(step)
            nbytes -= step

    def store_checks_checksums(self) -> bool:
        """Whether the store rejects an upload whose SHA-256 is wrong (probed once)."""
        if self._store_checks is None:
            self._store_checks = self._probe_checksums()
        return self._store_checks

    # ------------------------------------------------------------------ internals

    def _put_single(self, data: bytes, key: str, full: str, sha256: str, size: int,
                    retention: Retention | None) -> Receipt:
        digest = hashlib.sha256(data)
        if (len(data), digest.hexdigest()) != (size, sha256):
            raise DeliveryError(f"{self.name}: source for {key} is {len(data)} bytes "
                                f"{digest.hexdigest()}, expected {size} bytes {sha256}; "
                                "not delivered", retry=False)
        kw = self.object_args(sha256, size, retention)
        self.pace(len(data))
        try:
            resp = self.client.put_object(
                Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*",
                ChecksumAlgorithm="SHA256", ChecksumSHA256=base64.b64encode(
                    digest.digest()).decode("ascii"), **kw)
        except Exception as exc:
            if error_code(exc) == "PreconditionFailed":
                return self.lost_race(key, full, sha256, size)
            raise translate_error(exc, self.name, key, "upload") from exc
        echoed = resp.get("ChecksumSHA256")
        if echoed and b64_to_hex(echoed) != sha256:
            raise DeliveryError(f"{self.name}: store reports SHA-256 {b64_to_hex(echoed)} for "
                                f"{key}, sent {sha256}", retry=True)
        self._ensure_retention(key, full, retention)
        log.info("%s: delivered %s (%d bytes, sha256 %s)", self.name, key, size, sha256)
        return Receipt(key=key, size=size, sha256=sha256, already_present=False)

    def object_args(self, sha256: str, size: int, retention: Retention | None) -> dict[str, Any]:
        meta = {"sha256": sha256, "size": str(size)}
        kw: dict[str, Any] = {"Metadata": meta}
        if retention is not None:
            meta["retention-class"] = retention.retention_class
            if self.object_lock:
                if retention.retain_until is not None:
                    kw["ObjectLockMode"] = self.object_lock
                    kw["ObjectLockRetainUntilDate"] = lock_until(retention.retain_until)
                if retention.legal_hold or retention.retain_until is None:
                    kw["ObjectLockLegalHoldStatus"] = "ON"
        return kw

    def _ensure_retention(self, key: str, full: str, retention: Retention | None) -> None:
        """Check the lock landed; set it where the store dropped it (or it must be longer)."""
        if retention is None or not self.object_lock:
            return
        head = self._head(full, key)
        if head is None:
            raise DeliveryError(f"{self.name}: {key} vanished after upload", retry=True)
        version = head.get("VersionId")
        vkw = {"VersionId": version} if version else {}
        until = lock_until(retention.retain_until) if retention.retain_until else None
        if until is not None:
            current = head.get("ObjectLockRetainUntilDate")
            if current is None or current < until:
                log.info("%s: setting %s retention of %s until %s", self.name,
                         self.object_lock, key, until.isoformat())
                self.call("set retention of", key, "put_object_retention", Key=full,
                           Retention={"Mode": self.object_lock, "RetainUntilDate": until},
                           **vkw)
        if (retention.legal_hold or until is None) and head.get(
                "ObjectLockLegalHoldStatus") != "ON":
            log.info("%s: setting legal hold on %s", self.name, key)
            self.call("set legal hold on", key, "put_object_legal_hold", Key=full,
                       LegalHold={"Status": "ON"}, **vkw)

    def _head(self, full: str, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=full,
                                                           ChecksumMode="ENABLED")
            return head
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise translate_error(exc, self.name, key, "look up") from exc

    def _claimed_sha256(self, head: dict[str, Any]) -> str | None:
        meta = str((head.get("Metadata") or {}).get("sha256", ""))
        if _SHA256_HEX.fullmatch(meta):
            return meta
        full = _full_object_checksum(head)
        return b64_to_hex(full) if full else None

    def _claims_mismatch(self, full: str, head: dict[str, Any], sha256: str,
                         size: int) -> str | None:
        """Why what the store *says* about ``full`` contradicts ``sha256``/``size``, if it does."""
        if int(head["ContentLength"]) != size:
            return f"{head['ContentLength']} bytes, expected {size}"
        meta = (head.get("Metadata") or {}).get("sha256")
        if meta is not None and meta != sha256:
            return f"metadata sha256 {meta}, expected {sha256}"
        whole = _full_object_checksum(head)
        if whole is not None and b64_to_hex(whole) != sha256:
            return f"store checksum {b64_to_hex(whole)}, expected {sha256}"
        comp = head.get("ChecksumSHA256")
        known = self.journal.composite(self.bucket, full, sha256)
        if whole is None and comp and known and comp.split("-")[0] != known[0]:
            return f"composite checksum {comp}, journalled {known[0]}"
        return None

    def _checksum_confirms(self, full: str, head: dict[str, Any], sha256: str) -> bool:
        """True if a store checksum (full-object, or the journalled composite) matched."""
        if _full_object_checksum(head) is not None:
            return True
        comp = head.get("ChecksumSHA256")
        return bool(comp) and self.journal.composite(self.bucket, full, sha256) is not None

    def _compare(self, key: str, full: str, head: dict[str, Any], sha256: str,
                 size: int) -> Receipt:
        claimed = self._claimed_sha256(head)
        found_size = int(head["ContentLength"])
        if found_size == size and claimed is None:  # foreign object: read it
            claimed = self._read_back(full, key, head.get("VersionId"))[1]
        return existing_receipt(self.name, key, (found_size, claimed), sha256=sha256, size=size)

    def lost_race(self, key: str, full: str, sha256: str, size: int) -> Receipt:
        head = self._head(full, key)
        if head is None:
            raise DeliveryError(f"{self.name}: {key} appeared and vanished while uploading",
                                retry=True)
        return self._compare(key, full, head, sha256, size)

    def _read_back(self, full: str, key: str, version: str | None) -> tuple[int, str]:
        kw = {"VersionId": version} if version else {}
        resp = self.call("read back", key, "get_object", Key=full, **kw)
        h = hashlib.sha256()
        n = 0
        body = resp["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK_SIZE):
                h.update(chunk)
                n += len(chunk)
        except Exception as exc:
            raise translate_error(exc, self.name, key, "read back") from exc
        finally:
            body.close()
        return n, h.hexdigest()

    def _probe_checksums(self) -> bool:
        probe = self.prefix + PROBE_KEY
        up = self.call("probe", probe, "create_multipart_upload", Key=probe,
                        ChecksumAlgorithm="SHA256")
        upload_id = up["UploadId"]
        try:
            self.client.upload_part(
                Bucket=self.bucket, Key=probe, UploadId=upload_id, PartNumber=1,
                Body=b"dockd checksum probe", ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(b"\0" * 32).decode("ascii"))
        except Exception as exc:
            code = error_code(exc)
            if code in BAD_DIGEST_CODES:
                log.info("%s: store rejects wrong checksums (%s)", self.name, code)
                return True
            raise translate_error(exc, self.name, probe, "probe") from exc
        finally:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=probe,
                                                   UploadId=upload_id)
            except Exception as exc:  # an orphaned probe upload is harmless
                log.warning("%s: cannot abort checksum probe upload: %s", self.name,
                            error_code(exc) or exc)
        log.warning("%s: store accepted a part with a wrong SHA-256: its checksums are not "
                    "verified; delivery is confirmed by read-back", self.name)
        return False


# --------------------------------------------------------------------------- helpers


def _full_object_checksum(head: dict[str, Any]) -> str | None:
    """The store's SHA-256 of the whole object (base64), or None if it has a composite only."""
    value = head.get("ChecksumSHA256")
    if not value or "-" in value or head.get("ChecksumType") == "COMPOSITE":
        return None
    if _MULTIPART_ETAG.search(head.get("ETag", "")):
        return None  # a multipart object: the checksum is a composite of its parts
    return str(value)


def lock_until(when: datetime) -> datetime:
    """``when`` in UTC, rounded *up* to a whole second (stores keep seconds; never shorten)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    if when.microsecond:
        when = when.replace(microsecond=0) + timedelta(seconds=1)
    return when


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "s3"




__all__ = ["S3Credentials", "S3Target", "load_credentials", "lock_until"]
