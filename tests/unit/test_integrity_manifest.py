"""Canonical JSON, manifest building and the signature document."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dockd.errors import VerifyError
from dockd.integrity.keys import key_id
from dockd.integrity.manifest import (
    ManifestClip,
    build_manifest,
    canonical_bytes,
    check_signature,
    correct_clock,
    manifest_sha256,
    parse_manifest,
    printable_path,
    sign_manifest,
)
from dockd.model import Finding, ProbeResult, RecorderHealth, RecorderIdentity

CST = timezone(timedelta(hours=8))
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KID = key_id(KEY.public_key())

json_leaf = (st.none() | st.booleans() | st.integers(-(2**63), 2**63)
             | st.floats(allow_nan=False, allow_infinity=False) | st.text())
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


def _sample_manifest(**over: object) -> dict:
    clip = ManifestClip(
        name="A1234567_0012345_20240501083000_0001.mp4",
        original_path="DCIM/A1234567_0012345_20240501083000_0001.mp4",
        size=1234,
        sha256="ab" * 32,
        start_recorded=datetime(2024, 5, 1, 8, 30, tzinfo=CST),
        start=datetime(2024, 5, 1, 0, 29, 58, tzinfo=UTC),
        end=datetime(2024, 5, 1, 0, 39, 58, tzinfo=UTC),
        duration_s=600.0,
        metadata=ProbeResult(ok=True, duration_s=600.0, format_name="mp4").summary(),
        findings=(Finding("name_mismatch", "warning", "x", {"a": 1}),),
    )
    kw: dict = dict(
        dock_id="dock-01", port="port-03", docking_id=7,
        docked_at=datetime(2024, 5, 1, 17, 0, tzinfo=CST),
        recorder=RecorderIdentity("A1234567", "0012345", "张三", "110100000000", "某某派出所"),
        health=RecorderHealth(battery_percent=80, firmware="1.2",
                              recorder_clock=datetime(2024, 5, 1, 9, 0, 2, tzinfo=UTC),
                              clock_reference=datetime(2024, 5, 1, 9, 0, 0, tzinfo=UTC)),
        clips=[clip], findings=[], prev_manifest_sha256=None, key_id=KID,
        created_at=datetime(2024, 5, 1, 9, 1, tzinfo=UTC),
    )
    kw.update(over)
    return build_manifest(**kw)


# ------------------------------------------------------------------ canonical bytes


def test_canonical_bytes_exact_form() -> None:
    assert canonical_bytes({"b": 1, "a": [1.5, None, True], "名": "张三"}) == (
        '{"a":[1.5,null,true],"b":1,"名":"张三"}'.encode())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_canonical_bytes_rejects_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\$\.x\[1\]"):
        canonical_bytes({"x": [1, bad]})


def test_canonical_bytes_rejects_datetimes_and_other_types() -> None:
    with pytest.raises(ValueError, match="ISO 8601 string"):
        canonical_bytes({"t": datetime.now(UTC)})
    with pytest.raises(ValueError, match="set"):
        canonical_bytes({"s": {1}})
    with pytest.raises(ValueError, match="not a string"):
        canonical_bytes({1: "x"})
    with pytest.raises(ValueError, match="lone surrogate"):
        canonical_bytes({"p": "a\udcff"})


@given(json_value)
def test_canonical_bytes_round_trip(value: object) -> None:
    data = canonical_bytes(value)
    back = json.loads(data.decode("utf-8"))
    assert canonical_bytes(back) == data


@given(st.dictionaries(st.text(max_size=6), json_leaf, max_size=8), st.randoms())
def test_canonical_bytes_ignores_dict_order(d: dict, rnd) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert canonical_bytes(dict(items)) == canonical_bytes(d)


@given(st.text())
def test_unicode_is_kept_not_escaped(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return
    data = canonical_bytes({"officer": "张三", "s": s})
    assert "张三".encode() in data
    assert b"\\u5f20" not in data


# ------------------------------------------------------------------ building


def test_build_manifest_fields() -> None:
    m = _sample_manifest(extra={"case": {"no": "A-1"}})
    assert m["format"] == "dockd-manifest/1"
    assert m["docking"] == {"id": 7, "docked_at": "2024-05-01T09:00:00+00:00"}
    assert m["recorder"]["officer_name"] == "张三"
    assert m["health"]["clock_offset_s"] == 2.0
    assert m["health"]["recorder_clock"] == "2024-05-01T09:00:02+00:00"
    clip = m["clips"][0]
    assert clip["start_recorded"] == "2024-05-01T08:30:00+08:00"
    assert clip["start"] == "2024-05-01T00:29:58+00:00"
    assert clip["metadata"]["format"] == "mp4"
    assert clip["findings"][0]["kind"] == "name_mismatch"
    assert m["extra"] == {"case": {"no": "A-1"}}
    assert m["prev_manifest_sha256"] is None and m["key_id"] == KID
    data = canonical_bytes(m)
    assert parse_manifest(data) == m
    assert manifest_sha256(data) == hashlib.sha256(data).hexdigest()


def test_build_manifest_accepts_preformatted_strings_and_dict_findings() -> None:
    clip = ManifestClip(name="a.mp4", original_path="a.mp4", size=1, sha256="0" * 64,
                        start_recorded="2024-05-01T08:30:00", start="2024-05-01T00:30:00+00:00",
                        findings=({"kind": "k", "severity": "info", "message": "m"},))
    m = _sample_manifest(clips=[clip], findings=[{"kind": "d"}])
    assert m["clips"][0]["start_recorded"] == "2024-05-01T08:30:00"
    assert m["clips"][0]["findings"] == [{"kind": "k", "severity": "info", "message": "m"}]
    assert m["findings"] == [{"kind": "d"}]


def test_build_manifest_refuses_unfaithful_data() -> None:
    ok = dict(name="a.mp4", original_path="a", size=1, sha256="0" * 64)
    with pytest.raises(ValueError, match="naive"):
        _sample_manifest(created_at=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="duplicate clip name"):
        _sample_manifest(clips=[ManifestClip(**ok), ManifestClip(**ok)])
    with pytest.raises(ValueError, match="64 lowercase hex"):
        _sample_manifest(clips=[ManifestClip(**{**ok, "sha256": "AB" * 32})])
    with pytest.raises(ValueError, match="plain file name"):
        _sample_manifest(clips=[ManifestClip(**{**ok, "name": "../x"})])
    with pytest.raises(ValueError, match="prev_manifest_sha256"):
        _sample_manifest(prev_manifest_sha256="xyz")
    with pytest.raises(ValueError, match="nan"):
        _sample_manifest(clips=[ManifestClip(**{**ok, "duration_s": math.nan})])


def test_original_path_is_made_printable() -> None:
    raw = b"DCIM/\xff\xfe_\xe5\xbc\xa0\x07.mp4".decode("utf-8", "surrogateescape")
    assert printable_path(raw) == "DCIM/\\xff\\xfe_张\\u0007.mp4"
    clip = ManifestClip(name="a.mp4", original_path=raw, size=1, sha256="0" * 64)
    m = _sample_manifest(clips=[clip])
    assert m["clips"][0]["original_path"] == "DCIM/\\xff\\xfe_张\\u0007.mp4"
    canonical_bytes(m)


@given(st.text())
def test_printable_path_is_printable_and_idempotent(s: str) -> None:
    p = printable_path(s)
    assert p.isprintable()
    p.encode("utf-8")
    assert printable_path(p) == p


def test_correct_clock() -> None:
    t = datetime(2024, 5, 1, 8, 30, tzinfo=CST)
    assert correct_clock(t, 2.5) == t - timedelta(seconds=2.5)
    assert correct_clock(t, None) == t
    assert correct_clock(None, 3.0) is None


# ------------------------------------------------------------------ signatures


def test_signature_document_shape() -> None:
    body = canonical_bytes(_sample_manifest())
    sig = sign_manifest(body, KEY)
    doc = json.loads(sig)
    assert canonical_bytes(doc) == sig
    assert doc["format"] == "dockd-signature/1" and doc["alg"] == "Ed25519"
    assert doc["key_id"] == KID and doc["manifest_sha256"] == manifest_sha256(body)
    KEY.public_key().verify(base64.b64decode(doc["signature"]), body)


@settings(max_examples=30)
@given(json_value)
def test_sign_check_round_trip(value: object) -> None:
    body = canonical_bytes({"format": "dockd-manifest/1", "v": value})
    sig = sign_manifest(body, KEY)
    check_signature(body, sig, {KID: KEY.public_key()})


def test_exact_error_messages() -> None:
    body = canonical_bytes(_sample_manifest())
    sig = sign_manifest(body, KEY)
    keys = {KID: KEY.public_key()}
    other = Ed25519PrivateKey.from_private_bytes(bytes(32))
    with pytest.raises(VerifyError) as e:
        check_signature(body, sig, {})
    assert str(e.value) == f"unknown key id {KID} (known: none)"
    with pytest.raises(VerifyError) as e:
        check_signature(body + b" ", sig, keys)
    assert str(e.value) == (f"manifest hash mismatch: signature is for {manifest_sha256(body)}, "
                            f"manifest is {manifest_sha256(body + b' ')}")
    with pytest.raises(VerifyError) as e:
        check_signature(body, sig, {KID: other.public_key()})
    assert str(e.value) == f"bad signature: the manifest was not signed by {KID}"
    with pytest.raises(VerifyError) as e:
        check_signature(body, b"not json", keys)
    assert str(e.value).startswith("malformed signature file: not UTF-8 JSON")
    doc = json.loads(sig)
    doc["extra"] = 1
    with pytest.raises(VerifyError, match="^malformed signature file: fields"):
        check_signature(body, canonical_bytes(doc), keys)
    spaced = json.dumps(json.loads(sig)).encode()
    with pytest.raises(VerifyError, match="^malformed signature file: not in canonical form$"):
        check_signature(body, spaced, keys)


def test_every_single_byte_flip_is_detected() -> None:
    body = canonical_bytes(_sample_manifest())
    sig = sign_manifest(body, KEY)
    keys = {KID: KEY.public_key()}
    for data, is_sig in ((body, False), (sig, True)):
        for i in range(len(data)):
            for bit in (0x01, 0x20, 0x80):
                flipped = bytearray(data)
                flipped[i] ^= bit
                args = (body, bytes(flipped)) if is_sig else (bytes(flipped), sig)
                with pytest.raises(VerifyError):
                    check_signature(*args, keys)


@given(st.data())
def test_random_byte_changes_are_detected(data: st.DataObject) -> None:
    body = canonical_bytes(_sample_manifest())
    sig = sign_manifest(body, KEY)
    target_sig = data.draw(st.booleans())
    blob = bytearray(sig if target_sig else body)
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(VerifyError):
        if target_sig:
            check_signature(body, bytes(blob), {KID: KEY.public_key()})
        else:
            check_signature(bytes(blob), sig, {KID: KEY.public_key()})
