"""S3 answers in dockd's terms (dockd.delivery.s3_wire): each error's retry meaning, and a
bug is never mistaken for a delivery problem. Pure: botocore exceptions built in memory."""

from __future__ import annotations

import base64
import hashlib

import pytest

pytest.importorskip("botocore")

from botocore.exceptions import ClientError  # noqa: E402

from dockd.delivery.s3_wire import b64_to_hex, composite_sha256, translate_error  # noqa: E402
from dockd.errors import DeliveryError  # noqa: E402

KEY = "110100/0012345/A1234567/2024-05-01/20240501T090000Z_dock-01_port-01_1/clip.mp4"


def _client_error(status: int, code: str, headers: dict[str, str] | None = None) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status,
                                             "HTTPHeaders": headers or {}}}, "PutObject")


@pytest.mark.parametrize(("status", "code", "retry", "after", "state"), [
    (503, "SlowDown", True, 7.0, False),
    (500, "InternalError", True, None, False),
    (507, "InsufficientStorage", True, None, False),
    (400, "InvalidArgument", False, None, False),
    (400, "EntityTooLarge", False, None, False),
    # the store's set-up, not the object: retried with backoff and alarmed (issue #12)
    (403, "AccessDenied", True, None, True),
    (403, "InvalidAccessKeyId", True, None, True),
    (403, "SignatureDoesNotMatch", True, None, True),
    (404, "NoSuchBucket", True, None, True),
    (429, "TooManyRequests", True, None, False),
])
def test_error_translation(status: int, code: str, retry: bool, after: float | None,
                           state: bool) -> None:
    err = translate_error(_client_error(status, code, {"retry-after": "7"} if after else None),
                          "primary", KEY, "upload")
    assert (err.retry, err.retry_after, err.target_state) == (retry, after, state)
    assert code in str(err)


def test_translate_error_keeps_its_meaning_for_botocore_and_os_errors() -> None:
    from botocore.exceptions import EndpointConnectionError

    down = translate_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
                           "primary", KEY, "upload")
    reset = translate_error(ConnectionResetError(104, "reset"), "primary", KEY, "upload")
    assert isinstance(down, DeliveryError) and isinstance(reset, DeliveryError)
    assert down.retry and reset.retry and "EndpointConnectionError" in str(down)
    given = DeliveryError("already translated", retry=False)
    assert translate_error(given, "primary", KEY, "upload") is given
    with pytest.raises(KeyError):
        translate_error(KeyError("Body"), "primary", KEY, "upload")


def test_checksum_encodings() -> None:
    digest = hashlib.sha256(b"clip").digest()
    assert b64_to_hex(base64.b64encode(digest).decode()) == digest.hex()
    assert b64_to_hex(base64.b64encode(digest).decode() + "-3") == digest.hex()  # composite
    parts = [hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()]
    assert composite_sha256(parts) == base64.b64encode(
        hashlib.sha256(parts[0] + parts[1]).digest()).decode()
