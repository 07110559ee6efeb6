"""S3Target against a real S3 endpoint: moto's server on 127.0.0.1 (real HTTP, real boto3).

moto enforces object lock and (when switched on) IAM authentication, but it does not check
checksums: it is the "store that lies" the read-back verification must catch.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

import boto3  # noqa: E402
import moto.settings  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from dockd.config import Config, TargetConfig  # noqa: E402
from dockd.delivery.base import Retention, StorageTarget  # noqa: E402
from dockd.delivery.s3 import S3Credentials, S3Target  # noqa: E402
from dockd.errors import DeliveryError  # noqa: E402

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
KEY = "110100/0012345/A1234567/2024-05-01/20240501T090000Z_dock-01_port-01_1/clip.mp4"
CREDS = S3Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server() -> tuple[ThreadedMotoServer, str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    # AWS_CA_BUNDLE (set on these machines) is irrelevant to plain-HTTP 127.0.0.1 endpoints
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server, url = _start_server()
    yield url
    server.stop()


def _admin(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=CREDS.access_key,
                        aws_secret_access_key=CREDS.secret_key)


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"evidence-{uuid.uuid4().hex[:12]}"
    _admin(endpoint).create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def make_target(endpoint: str, bucket: str, tmp_path: Path) -> Iterator[Callable[..., S3Target]]:
    made: list[S3Target] = []

    def make(**kw: Any) -> S3Target:
        kw.setdefault("endpoint_url", endpoint)
        kw.setdefault("bucket", bucket)
        kw.setdefault("state_dir", tmp_path / "s3-uploads")
        kw.setdefault("credentials", CREDS)
        kw.setdefault("part_size", 5 * MIB)
        kw.setdefault("connect_timeout", 2.0)
        kw.setdefault("read_timeout", 10.0)
        t = S3Target(kw.pop("name", "primary"), **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def _src(tmp_path: Path, data: bytes, name: str = "src.bin") -> tuple[Path, str, int]:
    p = tmp_path / name
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest(), len(data)


def _corrupt(bucket: str, key: str) -> None:
    """Flip one stored byte inside moto (same process): the store keeps wrong bytes."""
    from moto.s3.models import s3_backends

    backend = s3_backends["123456789012"]["aws"]
    obj = backend.get_object(bucket, key)
    data = bytearray(obj.value)
    data[len(data) // 2] ^= 0x01
    obj.value = bytes(data)


# --------------------------------------------------------------------------- basics


def test_put_verify_stat(tmp_path: Path, make_target: Callable[..., S3Target],
                         bucket: str, endpoint: str) -> None:
    t = make_target(prefix="dock-01")
    assert isinstance(t, StorageTarget)
    assert bucket in t.describe() and CREDS.secret_key not in t.describe()
    assert CREDS.secret_key not in repr(CREDS)
    data = os.urandom(100_000)
    src, sha, size = _src(tmp_path, data)
    r = t.put_file(src, KEY, sha256=sha, size=size)
    assert (r.key, r.size, r.sha256, r.already_present) == (KEY, size, sha, False)
    head = _admin(endpoint).head_object(Bucket=bucket, Key=f"dock-01/{KEY}",
                                        ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == sha
    assert head["ChecksumSHA256"] == __import__("base64").b64encode(
        bytes.fromhex(sha)).decode()
    assert t.verify(KEY, sha256=sha, size=size)
    assert not t.verify(KEY, sha256="0" * 64, size=size)
    assert not t.verify(KEY, sha256=sha, size=size + 1)
    assert not t.verify("u/o/s/missing.mp4", sha256=sha, size=size)
    st = t.stat(KEY)
    assert st is not None and (st.size, st.sha256) == (size, sha)
    assert t.stat("u/o/s/missing.mp4") is None
    with pytest.raises(DeliveryError) as e:
        t.put_file(src, "../escape.mp4", sha256=sha, size=size)
    assert e.value.retry is False


def test_idempotent_and_conflict(tmp_path: Path, make_target: Callable[..., S3Target],
                                 bucket: str, endpoint: str) -> None:
    t = make_target()
    src, sha, size = _src(tmp_path, b"clip one" * 1000)
    assert not t.put_file(src, KEY, sha256=sha, size=size).already_present
    again = make_target().put_file(src, KEY, sha256=sha, size=size)
    assert again.already_present
    other, osha, osize = _src(tmp_path, b"another clip" * 1000, "other.bin")
    with pytest.raises(DeliveryError) as e:
        t.put_file(other, KEY, sha256=osha, size=osize)
    assert e.value.retry is False and "refusing to overwrite" in str(e.value)
    versions = _admin(endpoint).list_object_versions(Bucket=bucket)["Versions"]
    assert len(versions) == 1  # never a second version of evidence
    assert t.verify(KEY, sha256=sha, size=size)


def test_source_mismatch_stores_nothing(tmp_path: Path, make_target: Callable[..., S3Target],
                                        bucket: str, endpoint: str) -> None:
    t = make_target()
    src, sha, size = _src(tmp_path, b"x" * 1000)
    for bad_sha, bad_size in (("1" * 64, size), (sha, size + 1)):
        with pytest.raises(DeliveryError) as e:
            t.put_file(src, KEY, sha256=bad_sha, size=bad_size)
        assert e.value.retry is False
    big, bsha, bsize = _src(tmp_path, os.urandom(11 * MIB), "big.bin")
    with pytest.raises(DeliveryError) as e:
        t.put_file(big, KEY, sha256="2" * 64, size=bsize)
    assert e.value.retry is False
    s3 = _admin(endpoint)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert t.journal.all_pending() == []


# --------------------------------------------------------------------------- retention


def test_retention_lock_and_legal_hold(tmp_path: Path, make_target: Callable[..., S3Target],
                                       bucket: str, endpoint: str) -> None:
    t = make_target(object_lock="COMPLIANCE")
    s3 = _admin(endpoint)
    until = datetime.now(UTC) + timedelta(days=183, microseconds=123)
    src, sha, size = _src(tmp_path, b"routine patrol" * 100)
    t.put_file(src, KEY, sha256=sha, size=size, retention=Retention("routine", until))
    head = s3.head_object(Bucket=bucket, Key=KEY)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] >= until - timedelta(seconds=1)
    assert head["Metadata"]["retention-class"] == "routine"
    with pytest.raises(ClientError) as ce:
        s3.delete_object(Bucket=bucket, Key=KEY, VersionId=head["VersionId"])
    assert ce.value.response["Error"]["Code"] == "AccessDenied"

    perm_key = KEY.replace("clip.mp4", "obstruction.mp4")
    t.put_file(src, perm_key, sha256=sha, size=size,
               retention=Retention("permanent", None, legal_hold=True))
    head = s3.head_object(Bucket=bucket, Key=perm_key)
    assert head["ObjectLockLegalHoldStatus"] == "ON"
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key=perm_key, VersionId=head["VersionId"])

    # upgrade (R7): extended, never shortened
    later = until + timedelta(days=3650)
    t.extend_retention(KEY, Retention("evidence", later))
    t.extend_retention(KEY, Retention("routine", until))
    head = s3.head_object(Bucket=bucket, Key=KEY)
    assert head["ObjectLockRetainUntilDate"] >= later - timedelta(seconds=1)


def test_manifest_and_signature_put_bytes(make_target: Callable[..., S3Target],
                                          bucket: str, endpoint: str) -> None:
    t = make_target(object_lock="GOVERNANCE")
    prefix = KEY.rsplit("/", 1)[0]
    manifest = b'{"clips": []}'
    ret = Retention("standard", datetime.now(UTC) + timedelta(days=730))
    r = t.put_bytes(manifest, f"{prefix}/manifest.json", retention=ret)
    t.put_bytes(b"\x01" * 64, f"{prefix}/manifest.json.sig", retention=ret)
    assert r.sha256 == hashlib.sha256(manifest).hexdigest() and not r.already_present
    assert t.put_bytes(manifest, f"{prefix}/manifest.json", retention=ret).already_present
    with pytest.raises(DeliveryError) as e:
        t.put_bytes(b"{}", f"{prefix}/manifest.json")
    assert e.value.retry is False
    assert t.verify(f"{prefix}/manifest.json", sha256=r.sha256, size=len(manifest))
    head = _admin(endpoint).head_object(Bucket=bucket, Key=f"{prefix}/manifest.json.sig")
    assert head["ObjectLockMode"] == "GOVERNANCE"


# --------------------------------------------------------------------------- multipart


def _count_parts(t: S3Target) -> list[int]:
    sent: list[int] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sent.append(int(params["PartNumber"]))

    t.client.meta.events.register("provide-client-params.s3.UploadPart", record)
    return sent


def test_multipart_upload_with_lock(tmp_path: Path, make_target: Callable[..., S3Target],
                                    bucket: str, endpoint: str) -> None:
    t = make_target(object_lock="COMPLIANCE")
    src, sha, size = _src(tmp_path, os.urandom(12 * MIB))
    sent = _count_parts(t)
    r = t.put_file(src, KEY, sha256=sha, size=size,
                   retention=Retention("permanent", None, legal_hold=True))
    assert not r.already_present and sent == [1, 2, 3]
    s3 = _admin(endpoint)
    head = s3.head_object(Bucket=bucket, Key=KEY, ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-3"') and head["ContentLength"] == size
    assert head["Metadata"]["sha256"] == sha
    assert head["ObjectLockLegalHoldStatus"] == "ON"  # moto drops it on multipart: re-applied
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key=KEY, VersionId=head["VersionId"])
    assert t.verify(KEY, sha256=sha, size=size)
    assert make_target(verify="checksum").verify(KEY, sha256=sha, size=size)
    assert t.put_file(src, KEY, sha256=sha, size=size).already_present
    assert sent == [1, 2, 3]
    assert t.journal.all_pending() == []


def test_multipart_resumes_after_server_dies(tmp_path: Path, bucket: str, endpoint: str,
                                             make_target: Callable[..., S3Target]) -> None:
    server, url = _start_server()  # this one is stopped mid-upload (same moto backend)
    try:
        first = make_target(endpoint_url=url)
        src, sha, size = _src(tmp_path, os.urandom(12 * MIB))
        acknowledged: list[int] = []

        def kill_after_two(parsed: Any, **kw: Any) -> None:
            acknowledged.append(1)
            if len(acknowledged) == 2:
                server.stop()  # a real outage: the next part gets connection refused

        first.client.meta.events.register("after-call.s3.UploadPart", kill_after_two)
        t0 = time.monotonic()
        with pytest.raises(DeliveryError) as e:
            first.put_file(src, KEY, sha256=sha, size=size)
        assert e.value.retry is True and time.monotonic() - t0 < 30
        (pending,) = first.journal.all_pending()
        assert sorted(first.journal.parts(pending.upload_id)) == [1, 2]
        first.close()  # the "daemon" is gone; its journal stays on disk
    finally:
        server.stop()

    second = make_target()  # a new process talking to the server that came back
    listed = second.client.list_parts(Bucket=bucket, Key=KEY, UploadId=pending.upload_id)
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2]
    sent = _count_parts(second)
    r = second.put_file(src, KEY, sha256=sha, size=size)
    assert not r.already_present
    assert sent == [3]  # parts 1 and 2 were not sent again
    assert second.journal.all_pending() == []
    assert second.verify(KEY, sha256=sha, size=size)


def test_stale_upload_of_changed_source_is_aborted(
        tmp_path: Path, make_target: Callable[..., S3Target], bucket: str,
        endpoint: str) -> None:
    t = make_target()
    a, asha, asize = _src(tmp_path, os.urandom(11 * MIB), "a.bin")
    calls: list[int] = []

    def fail_second(parsed: Any, **kw: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionResetError("link dropped")  # the upload stops after 2 parts

    t.client.meta.events.register("after-call.s3.UploadPart", fail_second)
    with pytest.raises(DeliveryError):
        t.put_file(a, KEY, sha256=asha, size=asize)
    (stale,) = t.journal.all_pending()
    t2 = make_target()
    b, bsha, bsize = _src(tmp_path, os.urandom(11 * MIB), "b.bin")
    t2.put_file(b, KEY, sha256=bsha, size=bsize)
    s3 = _admin(endpoint)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert t2.journal.all_pending() == [] and stale.sha256 == asha
    assert t2.verify(KEY, sha256=bsha, size=bsize)


# --------------------------------------------------------------------------- verification


@pytest.mark.parametrize("size", [200_000, 11 * MIB])
def test_store_that_keeps_wrong_bytes_is_caught(tmp_path: Path, size: int, bucket: str,
                                                make_target: Callable[..., S3Target]) -> None:
    t = make_target()
    src, sha, _ = _src(tmp_path, os.urandom(size))
    t.put_file(src, KEY, sha256=sha, size=size)
    assert t.verify(KEY, sha256=sha, size=size)
    _corrupt(bucket, KEY)
    st = t.stat(KEY)
    assert st is not None and st.sha256 == sha  # the store still claims the right hash
    assert not t.verify(KEY, sha256=sha, size=size)  # readback catches it
    checking = make_target(verify="checksum")
    assert not checking.verify(KEY, sha256=sha, size=size)
    assert checking.store_checks_checksums() is False  # moto does not verify: read back


# --------------------------------------------------------------------------- errors


def test_server_down_is_retryable(tmp_path: Path, make_target: Callable[..., S3Target]) -> None:
    t = make_target(endpoint_url=f"http://127.0.0.1:{_free_port()}")
    src, sha, size = _src(tmp_path, b"data")
    t0 = time.monotonic()
    with pytest.raises(DeliveryError) as e:
        t.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.retry is True and time.monotonic() - t0 < 20
    with pytest.raises(DeliveryError) as e:
        t.verify(KEY, sha256=sha, size=size)
    assert e.value.retry is True


def test_permanent_errors(tmp_path: Path, make_target: Callable[..., S3Target], endpoint: str,
                          bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    src, sha, size = _src(tmp_path, b"data")
    # a bucket that does not exist (wrong config): NoSuchBucket, the target's state: retried
    # with backoff and alarmed until the configuration or the store is fixed
    with pytest.raises(DeliveryError) as e:
        make_target(bucket="no-such-bucket-here").put_file(src, KEY, sha256=sha, size=size)
    assert e.value.target_state is True and "NoSuchBucket" in str(e.value)

    # real authentication: moto checks keys against its IAM once auth is switched on
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="x")
    user = f"dock-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    unknown = make_target(credentials=S3Credentials("AKIAUNKNOWNKEY000000", "wrong"))
    with pytest.raises(DeliveryError) as e:
        unknown.put_file(src, KEY, sha256=sha, size=size)
    # HEAD answers carry no error body: the code is the bare status
    assert e.value.target_state is True and "HTTP 403" in str(e.value)
    wrong_secret = make_target(credentials=S3Credentials(key["AccessKeyId"], "not-the-secret"))
    with pytest.raises(DeliveryError) as e:
        wrong_secret.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.target_state is True and "HTTP 403" in str(e.value)
    no_policy = make_target(credentials=S3Credentials(key["AccessKeyId"],
                                                      key["SecretAccessKey"]))
    with pytest.raises(DeliveryError) as e:
        no_policy.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.target_state is True and "HTTP 403" in str(e.value)
    with pytest.raises(DeliveryError) as e:  # a GET does carry the code
        no_policy.verify(KEY, sha256=sha, size=size)
    assert e.value.target_state is True


class _Bug(TypeError):
    """A programming error raised inside a real boto3 call (by a botocore event hook)."""


@pytest.mark.parametrize(("event", "size"), [
    ("before-call.s3.HeadObject", 1000),   # looking the key up
    ("before-call.s3.PutObject", 1000),    # a single PUT
    ("before-call.s3.UploadPart", 0),      # a multipart upload (size: part_size + 1)
])
def test_programming_error_inside_an_s3_call_surfaces_as_itself(
        tmp_path: Path, make_target: Callable[..., S3Target], event: str, size: int) -> None:
    """A bug (here a TypeError) inside an S3 call is not a delivery problem to retry for a
    day: it surfaces as itself, and nothing is stored."""
    t = make_target()
    src, sha, n = _src(tmp_path, os.urandom(size or t.part_size + 1))

    def bug(**_kw: Any) -> None:
        raise _Bug("a bug in dockd, not in the store")

    t.client.meta.events.register(event, bug)
    with pytest.raises(_Bug):
        t.put_file(src, KEY, sha256=sha, size=n)
    t.client.meta.events.unregister(event, bug)
    assert t.stat(KEY) is None


def test_from_config_with_credentials_file(tmp_path: Path, endpoint: str, bucket: str) -> None:
    creds = tmp_path / "s3.ini"
    creds.write_text(f"[default]\naws_access_key_id = {CREDS.access_key}\n"
                     f"aws_secret_access_key = {CREDS.secret_key}\n")
    creds.chmod(0o600)  # others may not read it (a 0644 file is refused: test_secrets.py)
    tc = TargetConfig(name="offsite", kind="s3", endpoint_url=endpoint, bucket=bucket,
                      credentials_file=str(creds), prefix="/agency/", object_lock="GOVERNANCE",
                      verify="checksum", required=False)
    cfg = Config().with_workdir(tmp_path / "w")
    t = S3Target.from_config(tc, cfg)
    try:
        assert (t.name, t.required, t.prefix, t.verify_mode) == ("offsite", False, "agency/",
                                                                 "checksum")
        assert t.journal.path.parent == cfg.paths.state_dir / "s3-uploads"
        assert CREDS.secret_key not in t.describe() + repr(t)
        r = t.put_bytes(b"public key", "_keys/ed25519_ab.pub")
        assert t.verify("_keys/ed25519_ab.pub", sha256=r.sha256, size=r.size)
    finally:
        t.close()
    bad = TargetConfig(name="x", kind="s3", bucket=bucket, credentials_file=str(tmp_path / "no"))
    with pytest.raises(DeliveryError) as e:
        S3Target.from_config(bad, cfg)
    assert e.value.target_state is True and "cannot read S3 credentials" in str(e.value)
