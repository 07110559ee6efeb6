"""Target layout: docking prefixes and keys can never escape the target root."""

from __future__ import annotations

import posixpath
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockd.delivery.layout import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    check_stored_name,
    clip_key,
    docking_prefix,
    key_path,
    sanitize_component,
    split_key,
)
from dockd.model import RecorderIdentity

CST = timezone(timedelta(hours=8))
SAFE = re.compile(r"[A-Za-z0-9._%-]+")
hostile = st.text(alphabet=st.sampled_from(list("./\\\x00%_- a\u202e张\udcff")) | st.characters(),
                  max_size=300)


def test_docking_prefix_shape_uses_utc_date() -> None:
    rec = RecorderIdentity(serial="A1234567", officer_no="0012345", unit_no="110100000000")
    # 07:30 in China on 2 May is 23:30 UTC on 1 May
    docked = datetime(2024, 5, 2, 7, 30, 5, tzinfo=CST)
    assert docking_prefix(rec, docked, "dock-01", "port-03", 42) == (
        "110100000000/0012345/A1234567/2024-05-01/20240501T233005Z_dock-01_port-03_42")


def test_empty_and_dot_components() -> None:
    rec = RecorderIdentity(serial="..", officer_no="", unit_no=".")
    p = docking_prefix(rec, datetime(2024, 1, 1, tzinfo=UTC), "d", "p", 1)
    assert p.split("/")[:3] == ["%2E", "_unknown", "%2E."]
    assert sanitize_component("_keys") == "%5Fkeys"
    assert sanitize_component(".hidden") == "%2Ehidden"
    assert sanitize_component("a/b") == "a%2Fb"
    assert sanitize_component("100%") == "100%25"
    assert sanitize_component("张") == "%E5%BC%A0"
    assert sanitize_component("\udcff") == "%FF"


def test_naive_docked_at_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        docking_prefix(RecorderIdentity("s"), datetime(2024, 1, 1), "d", "p", 1)


@given(hostile, hostile, hostile, hostile, hostile)
def test_hostile_identity_never_escapes(unit: str, officer: str, serial: str, dock: str,
                                        port: str) -> None:
    rec = RecorderIdentity(serial=serial, officer_no=officer, unit_no=unit)
    p = docking_prefix(rec, datetime(2024, 1, 1, tzinfo=UTC), dock, port, 3)
    parts = p.split("/")
    assert len(parts) == 5
    assert not p.startswith("/")
    assert posixpath.normpath(p) == p
    for part in parts:
        assert part not in {"", ".", ".."}
        assert not part.startswith(".")
        assert SAFE.fullmatch(part), part
        assert len(part.encode()) <= 255
    assert split_key(p) == parts


@given(hostile)
def test_sanitize_is_injective_on_short_values(a: str) -> None:
    if len(a) < 20:
        b = a + "x"
        assert sanitize_component(a) != sanitize_component(b)


def test_long_components_are_cut_with_a_hash() -> None:
    a, b = "x" * 500, "x" * 499 + "y"
    assert len(sanitize_component(a)) == 120
    assert sanitize_component(a) != sanitize_component(b)


def test_clip_key_and_reserved_names() -> None:
    assert clip_key("u/o/s/d/leaf", "a.mp4") == "u/o/s/d/leaf/a.mp4"
    for bad in ("", ".", "..", "a/b", "a\\b", "a\x00", MANIFEST_NAME, SIGNATURE_NAME,
                "a.mp4.partial", "x" * 250):
        with pytest.raises(ValueError):
            check_stored_name(bad)
    for bad_prefix in ("/abs", "a/../b", "a//b", "", "a/./b"):
        with pytest.raises(ValueError):
            clip_key(bad_prefix, "a.mp4")


def test_key_path() -> None:
    assert key_path("ed25519:" + "ab" * 16) == "_keys/ed25519_" + "ab" * 16 + ".pub"
    assert "/" not in key_path("../../x:y").removeprefix("_keys/")


def test_date_folder_is_the_recordings_local_date() -> None:
    """A clip recorded 00:36 in Beijing on 1 December is filed under 1 December (the UTC
    date is 30 November)."""
    from zoneinfo import ZoneInfo

    from dockd.delivery.layout import recording_date

    tz = ZoneInfo("Asia/Shanghai")
    rec = RecorderIdentity(serial="A1234567", officer_no="0012345", unit_no="110100000000")
    start = datetime(2026, 12, 1, 0, 36, tzinfo=tz).astimezone(UTC)  # 2026-11-30 16:36 UTC
    docked = datetime(2026, 12, 1, 1, 10, tzinfo=tz)
    later = datetime(2026, 12, 1, 0, 50, tzinfo=tz).astimezone(UTC)
    day = recording_date([later, None, start], docked, tz)
    assert day.isoformat() == "2026-12-01"
    p = docking_prefix(rec, docked, "dock-01", "port-03", 7, local_date=day)
    assert p.split("/")[3] == "2026-12-01"
    assert p.split("/")[4].startswith("20261130T171000Z")  # the leaf stays in UTC
    assert recording_date([], docked, tz).isoformat() == "2026-12-01"  # no clip times
