"""The recorder's device-info file: the fields of the SDK record ``ZFY_INFO`` as INI text.

Real recorders expose, through a vendor SDK, the record ``ZFY_INFO`` (serial 8 bytes,
officer number 警号 7, officer name 33, unit number 13, unit name 33; text in GBK). Over USB
mass storage our profiles read the same fields from a small INI-style file at the
recorder's root (name and encoding from :class:`~dockd.config.ProfileConfig`)::

    [ZFY_INFO]
    cSerial=A1234567
    userNo=012345
    userName=张三
    unitNo=110105000000
    unitName=北京市公安局朝阳分局
    [DEVICE]
    Vendor=SimCam
    Model=DSJ-SIM1
    Firmware=V2.3.1
    Battery=87
    DeviceTime=2026-11-23 09:59:58

The file is written by firmware we do not control, so :func:`read_info` never trusts it:
at most :data:`MAX_INFO_BYTES` are read, symlinks/FIFOs/devices are refused without
blocking, a BOM (UTF-8 or UTF-16) wins over the profile's encoding, undecodable bytes are
replaced (a file that is valid UTF-8 is read as UTF-8 whatever the profile
says), and every oddity becomes a :class:`~dockd.model.Finding`. The result is a flat
``{key: value}`` dict with keys as the file spells them (sections only group them);
:func:`get_field` looks a key up case-insensitively.
"""

from __future__ import annotations

import codecs
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from ..model import Finding

log = logging.getLogger(__name__)

MAX_INFO_BYTES = 64 * 1024
"""Read at most this much of an info file; a real one is a few hundred bytes."""

MAX_VALUE_CHARS = 256
"""Longer values are cut (the SDK's longest field is 33 bytes)."""

IDENTITY_SECTION = "ZFY_INFO"
DEVICE_SECTION = "DEVICE"

KEY_SERIAL = "cSerial"
KEY_OFFICER_NO = "userNo"
KEY_OFFICER_NAME = "userName"
KEY_UNIT_NO = "unitNo"
KEY_UNIT_NAME = "unitName"
KEY_VENDOR = "Vendor"
KEY_MODEL = "Model"
KEY_FIRMWARE = "Firmware"
KEY_BATTERY = "Battery"
KEY_DEVICE_TIME = "DeviceTime"

IDENTITY_KEYS = (KEY_SERIAL, KEY_OFFICER_NO, KEY_OFFICER_NAME, KEY_UNIT_NO, KEY_UNIT_NAME)
DEVICE_KEYS = (KEY_VENDOR, KEY_MODEL, KEY_FIRMWARE, KEY_BATTERY, KEY_DEVICE_TIME)

DEVICE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
"""How :func:`write_info` (the simulator) spells ``DeviceTime``; readers accept more."""

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def get_field(fields: Mapping[str, str], key: str, default: str = "") -> str:
    """``fields[key]`` looked up case-insensitively (``CSERIAL`` == ``cSerial``)."""
    if key in fields:
        return fields[key]
    folded = key.casefold()
    for k, v in fields.items():
        if k.casefold() == folded:
            return v
    return default


def decode_info(data: bytes, encoding: str) -> tuple[str, list[Finding]]:
    """Decode an info file's bytes. Pure. A BOM overrides ``encoding``; bad bytes are replaced."""
    findings: list[Finding] = []
    for bom, bom_encoding in _BOMS:
        if data.startswith(bom):
            data = data[len(bom):]
            if codecs.lookup(bom_encoding).name != _codec_name(encoding):
                findings.append(Finding(
                    "info_encoding", "info",
                    f"info file has a {bom_encoding} byte-order mark; profile says {encoding}",
                    {"bom": bom_encoding, "profile_encoding": encoding}))
            encoding = bom_encoding
            break
    else:
        wide = _utf16_without_bom(data)
        if wide and not _codec_name(encoding).startswith("utf-16"):
            findings.append(Finding(
                "info_encoding", "warning",
                f"info file looks like {wide} without a byte-order mark (profile says "
                f"{encoding}); read as {wide}", {"guessed": wide, "profile_encoding": encoding}))
            encoding = wide
    try:
        codecs.lookup(encoding)
    except LookupError:
        findings.append(Finding("info_encoding", "warning",
                                f"unknown info file encoding {encoding!r}; reading it as UTF-8",
                                {"profile_encoding": encoding}))
        encoding = "utf-8"
    if not data.isascii() and not _codec_name(encoding).startswith("utf"):
        # Valid multi-byte UTF-8 is almost never legacy (GBK) text by chance, while GBK
        # would decode UTF-8 Chinese into mojibake without an error: prefer UTF-8.
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if any(ord(c) >= 0x800 for c in text):  # CJK in UTF-8 takes three bytes
            findings.append(Finding(
                "info_encoding", "info",
                f"info file is UTF-8, not {encoding} as the profile says; read as UTF-8",
                {"profile_encoding": encoding}))
            return text, findings
    try:
        return data.decode(encoding), findings
    except UnicodeDecodeError as exc:
        first_error = exc
    findings.append(Finding(
        "info_undecodable", "warning",
        f"info file has bytes that are not valid {encoding}; they were replaced",
        {"encoding": encoding, "offset": first_error.start}))
    return data.decode(encoding, errors="replace"), findings


def parse_info(text: str) -> tuple[dict[str, str], list[Finding]]:
    """Parse INI-style text into a flat ``{key: value}`` dict. Pure; never raises.

    Accepts CRLF/CR/LF, ``;``/``#`` comments, keys outside any section, ``key = value`` with
    spaces and double-quoted values. Unknown keys are kept. A key seen twice keeps the
    first value (a finding says so); lines that are not ``key=value`` are counted.
    """
    fields: dict[str, str] = {}
    findings: list[Finding] = []
    bad_lines: list[int] = []
    sections: list[str] = []
    text = text.replace("\x00", "")
    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append(line[1:-1].strip())
            continue
        key, sep, value = line.partition("=")
        key = _clean(key.strip())
        if not sep or not key:
            bad_lines.append(lineno)
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        value = _clean(value)
        if len(value) > MAX_VALUE_CHARS:
            findings.append(Finding("info_value_too_long", "warning",
                                    f"info field {key!r} is {len(value)} characters; cut",
                                    {"key": key, "length": len(value)}))
            value = value[:MAX_VALUE_CHARS]
        if any(k.casefold() == key.casefold() for k in fields):
            findings.append(Finding("info_duplicate_key", "warning",
                                    f"info field {key!r} appears more than once; first kept",
                                    {"key": key, "line": lineno}))
            continue
        fields[key] = value
    if bad_lines:
        findings.append(Finding("info_garbage", "warning",
                                f"{len(bad_lines)} line(s) of the info file are not key=value",
                                {"lines": bad_lines[:20]}))
    if not any(s.casefold() == IDENTITY_SECTION.casefold() for s in sections):
        findings.append(Finding("info_missing_section", "info",
                                f"info file has no [{IDENTITY_SECTION}] section",
                                {"sections": sections[:20]}))
    return fields, findings


def read_info(path: Path, encoding: str = "gbk") -> tuple[dict[str, str], list[Finding]]:
    """Read and parse a recorder's info file. Never raises for bad content or a bad file.

    An unreadable file (missing, a symlink, a FIFO, an I/O error) gives ``({}, [finding])``;
    callers that must tell "recorder gone" apart check the recorder root themselves.
    """
    try:
        data, truncated = _read_limited(Path(path), MAX_INFO_BYTES)
    except OSError as exc:
        log.warning("cannot read info file %s: %s", path, exc)
        return {}, [Finding("info_unreadable", "warning", f"cannot read info file: {exc}",
                            {"path": str(path)})]
    findings: list[Finding] = []
    if truncated:
        findings.append(Finding("info_truncated", "warning",
                                f"info file is larger than {MAX_INFO_BYTES} bytes; rest ignored",
                                {"path": str(path), "limit": MAX_INFO_BYTES}))
        cut = max(data.rfind(b"\n"), 0)
        data = data[:cut]
    text, decode_findings = decode_info(data, encoding)
    fields, parse_findings = parse_info(text)
    findings.extend(decode_findings)
    findings.extend(parse_findings)
    for f in findings:
        log.debug("info file %s: %s", path, f.message)
    return fields, findings


def format_info(fields: Mapping[str, str]) -> str:
    """INI text for ``fields``: identity keys under [ZFY_INFO], everything else under [DEVICE]."""
    identity = [k for k in IDENTITY_KEYS if k in fields]
    identity += [k for k in fields if k not in identity and k in IDENTITY_KEYS]
    other = [k for k in fields if k not in IDENTITY_KEYS]
    lines = [f"[{IDENTITY_SECTION}]"]
    lines += [f"{k}={_check_value(k, fields[k])}" for k in identity]
    lines.append(f"[{DEVICE_SECTION}]")
    lines += [f"{k}={_check_value(k, fields[k])}" for k in other]
    return "\r\n".join(lines) + "\r\n"


def write_info(path: Path, fields: Mapping[str, str], encoding: str = "gbk") -> None:
    """Write an info file the way a recorder does (CRLF, ``encoding``, no BOM).

    Raises ``ValueError`` when a value cannot be written (newline, or not encodable).
    The file is written beside ``path`` and renamed into place.
    """
    path = Path(path)
    data = format_info(fields).encode(encoding)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _check_value(key: str, value: str) -> str:
    value = str(value)
    if "=" in key or any(c in key + value for c in "\r\n\x00") or not key.strip():
        raise ValueError(f"info field {key!r}={value!r} cannot be written")
    return value


def _clean(text: str) -> str:
    """Drop control characters (a tampered file may carry escape sequences)."""
    return "".join(c for c in text if c.isprintable() or c == " ")


def _utf16_without_bom(data: bytes) -> str | None:
    """``utf-16-le``/``-be`` when most bytes at odd/even offsets are NUL (INI text in UTF-16
    is mostly ASCII), else None. An 8-bit text file has no NULs at all."""
    sample = data[:4096]
    if len(sample) < 8:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = len(sample) // 2
    if odd >= 0.3 * half and even <= 0.05 * half:
        return "utf-16-le"
    if even >= 0.3 * half and odd <= 0.05 * half:
        return "utf-16-be"
    return None


def _codec_name(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return encoding


def _read_limited(path: Path, limit: int) -> tuple[bytes, bool]:
    """Read up to ``limit`` bytes of a regular file; never follows a symlink or blocks on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file: {path}")
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return data[:limit], len(data) > limit
