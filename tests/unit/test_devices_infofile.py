"""The recorder info file (ZFY_INFO as INI): GBK round trip and hostile input."""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dockd.devices import infofile
from dockd.devices.infofile import get_field, parse_info, read_info, write_info

FIELDS = {
    "cSerial": "A1234567",
    "userNo": "012345",
    "userName": "张三",
    "unitNo": "110105000000",
    "unitName": "北京市公安局朝阳分局",
    "Vendor": "SimCam",
    "Model": "DSJ-SIM1",
    "Firmware": "V2.3.1",
    "Battery": "87",
    "DeviceTime": "2026-11-23 09:59:58",
}


def kinds(findings) -> set[str]:
    return {f.kind for f in findings}


def test_gbk_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ZFY_INFO.INI"
    write_info(path, FIELDS, "gbk")
    raw = path.read_bytes()
    assert "张三".encode("gbk") in raw
    assert b"\r\n" in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    fields, findings = read_info(path, "gbk")
    assert fields == FIELDS
    assert findings == []


def test_sections_group_identity_and_device_keys(tmp_path: Path) -> None:
    path = tmp_path / "info.ini"
    write_info(path, {"Battery": "5", "cSerial": "B7", "Extra": "x"}, "gbk")
    lines = path.read_text(encoding="gbk").splitlines()
    assert lines == ["[ZFY_INFO]", "cSerial=B7", "[DEVICE]", "Battery=5", "Extra=x"]


def test_write_rejects_values_that_would_break_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_info(tmp_path / "a.ini", {"userName": "a\nBattery=100"}, "gbk")
    with pytest.raises(ValueError):  # not encodable in GBK
        write_info(tmp_path / "b.ini", {"userName": "😀"}, "gbk")


def test_bom_crlf_comments_unknown_keys_and_case(tmp_path: Path) -> None:
    text = ("; written by firmware 2.3\r\n[zfy_info]\r\n CSERIAL = \"C0000001\" \r\n"
            "# comment\r\nuserName=李四\r\nFavouriteColour=blue\r\n")
    path = tmp_path / "ZFY_INFO.INI"
    path.write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    fields, findings = read_info(path, "gbk")
    assert get_field(fields, "cSerial") == "C0000001"
    assert fields["userName"] == "李四"
    assert fields["FavouriteColour"] == "blue"
    assert "info_encoding" in kinds(findings)  # BOM overrode the profile's GBK
    assert "info_missing_section" not in kinds(findings)


def test_utf16_bom_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "i.ini"
    path.write_bytes(codecs.BOM_UTF16_LE + "[ZFY_INFO]\nuserName=王五\n".encode("utf-16-le"))
    fields, _ = read_info(path, "gbk")
    assert fields == {"userName": "王五"}


def test_utf8_file_under_gbk_profile_is_read_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "i.ini"
    path.write_bytes("[ZFY_INFO]\nunitName=北京市公安局朝阳分局\n".encode())
    fields, findings = read_info(path, "gbk")
    assert fields["unitName"] == "北京市公安局朝阳分局"
    assert "info_encoding" in kinds(findings)


def test_undecodable_bytes_are_replaced_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "i.ini"
    path.write_bytes(b"[ZFY_INFO]\ncSerial=A1\xff\xfe\nuserNo=7\n")
    fields, findings = read_info(path, "gbk")
    assert fields["userNo"] == "7"
    assert fields["cSerial"].startswith("A1") and "\ufffd" in fields["cSerial"]
    assert "info_undecodable" in kinds(findings)


def test_missing_section_garbage_lines_and_duplicates() -> None:
    fields, findings = parse_info("Battery=50\nnot a pair\n=novalue\nBATTERY=99\n")
    assert fields == {"Battery": "50"}
    assert {"info_missing_section", "info_garbage", "info_duplicate_key"} <= kinds(findings)


def test_control_characters_and_nul_are_dropped() -> None:
    fields, _ = parse_info("[ZFY_INFO]\nuserName=\x1b[31m张\x00三\x07\n")
    assert fields["userName"] == "[31m张三"


def test_oversized_file_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "big.ini"
    body = b"[ZFY_INFO]\ncSerial=A1\n" + b"Pad=" + b"x" * 100 + b"\n"
    path.write_bytes(body * (infofile.MAX_INFO_BYTES // len(body) + 10))
    fields, findings = read_info(path, "gbk")
    assert fields["cSerial"] == "A1"
    assert "info_truncated" in kinds(findings)


def test_long_value_is_cut() -> None:
    fields, findings = parse_info("[ZFY_INFO]\nunitName=" + "局" * 1000 + "\n")
    assert len(fields["unitName"]) == infofile.MAX_VALUE_CHARS
    assert "info_value_too_long" in kinds(findings)


def test_missing_file_symlink_and_fifo_give_findings_not_errors(tmp_path: Path) -> None:
    fields, findings = read_info(tmp_path / "absent.ini", "gbk")
    assert fields == {} and kinds(findings) == {"info_unreadable"}
    secret = tmp_path / "secret"
    secret.write_text("cSerial=STOLEN\n")
    (tmp_path / "link.ini").symlink_to(secret)
    fields, findings = read_info(tmp_path / "link.ini", "gbk")
    assert fields == {} and kinds(findings) == {"info_unreadable"}
    os.mkfifo(tmp_path / "fifo.ini")
    fields, findings = read_info(tmp_path / "fifo.ini", "gbk")  # must not block
    assert fields == {} and kinds(findings) == {"info_unreadable"}


def test_unknown_encoding_falls_back_to_utf8(tmp_path: Path) -> None:
    path = tmp_path / "i.ini"
    path.write_bytes(b"[ZFY_INFO]\ncSerial=A1\n")
    fields, findings = read_info(path, "no-such-codec")
    assert fields == {"cSerial": "A1"}
    assert "info_encoding" in kinds(findings)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_bytes_never_crash(data: bytes) -> None:
    text, _ = infofile.decode_info(data, "gbk")
    fields, findings = parse_info(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert all("\n" not in v and "\x00" not in v for v in fields.values())
    assert all(f.severity in {"info", "warning", "error"} for f in findings)


def _is_utf8(data: bytes) -> bool:
    try:
        return any(ord(c) >= 0x800 for c in data.decode("utf-8"))
    except UnicodeDecodeError:
        return False


_value = st.text(st.characters(codec="gbk", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
                 max_size=30).map(str.strip).filter(lambda v: not (v[:1] == v[-1:] == '"'))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(infofile.IDENTITY_KEYS + infofile.DEVICE_KEYS), _value))
def test_round_trip_any_gbk_values(tmp_path_factory: pytest.TempPathFactory,
                                   fields: dict[str, str]) -> None:
    path = tmp_path_factory.mktemp("rt") / "ZFY_INFO.INI"
    fields = {k: v for k, v in fields.items() if v.isprintable()}
    # GBK bytes that happen to be valid UTF-8 too are read as UTF-8 (documented heuristic)
    assume(not _is_utf8("".join(fields.values()).encode("gbk")))
    write_info(path, fields, "gbk")
    got, _ = read_info(path, "gbk")
    assert got == fields
