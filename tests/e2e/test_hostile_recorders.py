"""Hostile recorders: a device-info file with garbage, huge or wrongly encoded fields, a
recorder claiming another's serial, very many tiny files, and hypothesis fuzzing of the
info-file parser and the file-name handling. Each case is a finding with a clear message,
nothing escapes the staging and target trees, and no other recorder's footage is touched.

The 100 000-file case is measured in ``bench/hostile_scan.py`` (bench/RESULTS.md); here a
smaller count checks the same limits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockd.config import ProfileConfig, for_workdir
from dockd.devices import infofile
from dockd.devices.drivers import ProfileDriver
from dockd.ingest.scan import (
    MAX_SAFE_NAME,
    assign_safe_names,
    escape_component,
    name_problems,
    scan_recorder,
)
from dockd.integrity.checks import name_time
from dockd.oneshot import ingest_tree
from dockd.store import State

PROFILE = ProfileConfig()
PROFILE_TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
INFO_KEYS = st.sampled_from(["cSerial", "userNo", "userName", "unitNo", "unitName", "Vendor",
                             "Model", "Firmware", "Battery", "DeviceTime", "CSERIAL", "x"])


# --------------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4096),
       encoding=st.sampled_from(["gbk", "utf-8", "utf-16", "latin-1", "no-such-codec"]))
def test_info_parser_never_raises_on_bytes(data: bytes, encoding: str) -> None:
    text, findings = infofile.decode_info(data, encoding)
    fields, more = infofile.parse_info(text)
    for k, v in fields.items():
        assert k and "=" not in k and len(v) <= infofile.MAX_VALUE_CHARS
        assert all(c.isprintable() or c == " " for c in k + v)
    assert all(f.message for f in findings + more)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(INFO_KEYS, st.text(max_size=400)), max_size=12),
       junk=st.lists(st.text(max_size=50), max_size=5),
       encoding=st.sampled_from(["gbk", "utf-8", "utf-16-le"]))
def test_info_file_round_trip_and_junk(pairs: list[tuple[str, str]], junk: list[str],
                                       encoding: str, tmp_path_factory: Any) -> None:
    """Whatever lands in the file, reading it gives a finding or the first value of each
    key, cut to MAX_VALUE_CHARS, never a crash; the snapshot's identity is printable."""
    lines = ["[ZFY_INFO]", *(f"{k}={v}" for k, v in pairs), *junk]
    raw = "\r\n".join(lines).encode(encoding, errors="replace")
    root = tmp_path_factory.mktemp("rec")
    (root / "ZFY_INFO.INI").write_bytes(raw)
    fields, findings = infofile.read_info(root / "ZFY_INFO.INI", encoding)
    assert all(len(v) <= infofile.MAX_VALUE_CHARS for v in fields.values())
    snap = ProfileDriver(PROFILE, PROFILE_TZ).snapshot(root, {}, now=NOW)
    ident = snap.identity
    for value in dataclasses.astuple(ident):
        assert all(c.isprintable() for c in value)
    assert ident.serial  # always something to file the footage under
    assert all(f.kind and f.message for f in snap.findings)


NAME_BYTES = st.binary(min_size=1, max_size=300).filter(lambda b: b"/" not in b and b"\0" not in b
                                                        and b not in (b".", b".."))


@settings(max_examples=400, deadline=None)
@given(raw=NAME_BYTES)
def test_escaped_names_are_single_safe_components(raw: bytes) -> None:
    name = os.fsdecode(raw)
    safe = escape_component(name)
    assert "/" not in safe and "\0" not in safe and safe not in (".", "..")
    assert not safe.startswith((".", "-"))
    assert all(c.isprintable() and not c.isspace() for c in safe)
    name_problems(name)  # never raises
    name_time(name, PROFILE, PROFILE_TZ)  # never raises


@settings(max_examples=400, deadline=None)
@given(name=st.text(alphabet=string.ascii_letters + string.digits + "._-+=@,()%/ 执\x1b",
                    min_size=1, max_size=40))
def test_plain_name_fast_path_gives_the_same_answers(name: str) -> None:
    """The fast path for plain ASCII names (100 000 files in seconds) answers exactly what
    the general code does."""
    from unittest import mock

    from dockd.ingest import scan

    component = name.replace("/", "_")
    fast = (escape_component(component), name_problems(component), scan._describe(name))
    never = re.compile(r"(?!)")
    with mock.patch.object(scan, "_PLAIN", never), mock.patch.object(scan, "_PLAIN_PATH", never):
        slow = (escape_component(component), name_problems(component), scan._describe(name))
    assert fast == slow


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(NAME_BYTES, min_size=1, max_size=30, unique=True),
       folders=st.lists(st.sampled_from(["DCIM", "DCIM/a", "DCIM/A", "DCIM/%41", "DCIM/.."]),
                        min_size=1, max_size=3))
def test_safe_names_unique_bounded_and_injective(names: list[bytes], folders: list[str]) -> None:
    rel = sorted({f"{folders[i % len(folders)]}/{os.fsdecode(n)}" for i, n in enumerate(names)})
    out = assign_safe_names(rel)
    assert set(out) == set(rel)
    values = list(out.values())
    assert len({v.casefold() for v in values}) == len(values)  # unique on a case-blind target
    for v in values:
        assert "/" not in v and v not in (".", "..") and not v.startswith((".", "-"))
        assert len(v.encode()) <= MAX_SAFE_NAME
    assert len({escape_component(os.fsdecode(n)) for n in names}) == len(names)  # injective


# --------------------------------------------------------------------------- info files


def write_recorder(root: Path, make_recorder: Any, cfg: Any, info: bytes | None,
                   **spec: Any) -> Path:
    tree = make_recorder(cfg, dest=root, segments=2, **spec)
    if info is not None:
        (tree / "ZFY_INFO.INI").write_bytes(info)
    return tree


HOSTILE_INFO = {
    "garbage": (random.Random(7).randbytes(200_000), {"info_truncated", "info_undecodable"}),
    "huge_fields": (("[ZFY_INFO]\r\ncSerial=B7654321\r\nuserName=" + "张" * 20_000
                     + "\r\nunitName=" + "x" * 10_000 + "\r\n").encode("gbk"),
                    {"info_value_too_long"}),
    "utf16_no_bom": ("[ZFY_INFO]\r\ncSerial=B7654321\r\nuserName=李四\r\n".encode("utf-16-le"),
                     {"info_encoding"}),
    "latin1_in_gbk": (b"[ZFY_INFO]\r\ncSerial=B7654321\r\nuserName=M\xfcller\xff\xfe\r\n",
                      {"info_undecodable"}),
    "escape_sequences": (b"[ZFY_INFO]\r\ncSerial=B76\x1b[2J54321\r\nuserName=\x07\x1b]0;x\x07ok"
                         b"\r\n", set()),
    "no_serial": (b"[ZFY_INFO]\r\nuserNo=1\r\n[DEVICE]\r\nBattery=999\r\n", {"info_no_serial"}),
    "traversal_serial": (b"[ZFY_INFO]\r\ncSerial=../../etc\r\nunitNo=../..\r\nuserNo=/\r\n",
                         set()),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HOSTILE_INFO))
def test_hostile_info_file_docks_with_findings(case: str, tmp_path: Path, workdir: Path,
                                               make_recorder: Any) -> None:
    """The footage still comes off, is delivered under the target tree only, and the docking
    carries a finding naming what was wrong with the info file."""
    info, kinds = HOSTILE_INFO[case]
    cfg = for_workdir(workdir)
    tree = write_recorder(tmp_path / "rec", make_recorder, cfg, info)
    out = ingest_tree(cfg, tree, port="port-05", create_key=True)
    assert out["ok"], out["problems"]
    assert out["clips_total"] == 2 and out["clips_delivered"] == 2
    with State(cfg.paths.database) as s:
        d = s.docking(out["docking_id"])
        found = {f["kind"]: f["message"] for f in json.loads(d["findings"] or "[]")}
        snap = json.loads(d["snapshot"])
    assert kinds <= set(found), (case, found)
    if case == "utf16_no_bom":
        assert snap["identity"]["officer_name"] == "李四"
    assert all(found[k] for k in kinds)
    for value in snap["identity"].values():
        assert all(c.isprintable() for c in value) and "\x1b" not in value
        assert len(value) <= infofile.MAX_VALUE_CHARS
    target = (workdir / "target").resolve()
    for p in target.rglob("*"):  # nothing outside the target tree, no odd names
        assert p.resolve().is_relative_to(target)
        assert ".." not in p.relative_to(target).parts
    staging = cfg.paths.staging_dir.resolve()
    for p in staging.rglob("*"):
        assert p.resolve().is_relative_to(staging)
    assert not any(p.name in ("etc",) and p.parent == workdir for p in workdir.iterdir())


# --------------------------------------------------------------------------- impostor


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_recorder_claiming_anothers_serial(tmp_path: Path, workdir: Path,
                                           make_recorder: Any) -> None:
    """An impostor with the same serial, officer and clip names but other footage docks
    after the real recorder: the real recorder's delivered copies are untouched, the
    impostor's clips are delivered as footage of their own docking with a tamper finding,
    and clearing the impostor never reaches the real recorder's clips."""
    cfg = for_workdir(workdir)
    profile = dataclasses.replace(cfg.profiles[0], clear_policy="after_delivery")
    cfg = dataclasses.replace(cfg, profiles=(profile,))
    start = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    real = make_recorder(cfg, dest=tmp_path / "real", segments=2, start=start)
    fake = make_recorder(cfg, dest=tmp_path / "fake", segments=2, start=start, battery=12)
    for clip in fake.rglob("*.MP4"):  # other footage, same size
        data = bytearray(clip.read_bytes())
        data[len(data) // 2] ^= 0xFF
        clip.write_bytes(bytes(data))
    real_names = sorted(p.name for p in real.rglob("*.MP4"))
    assert real_names == sorted(p.name for p in fake.rglob("*.MP4"))  # same names
    real_keep = digests(real)  # a copy of what the real recorder holds (not cleared below)

    first = ingest_tree(cfg, real, port="port-01", create_key=True)
    assert first["ok"], first["problems"]
    target = workdir / "target"
    before = digests(target)
    second = ingest_tree(cfg, fake, port="port-02", create_key=True)
    assert second["ok"], second["problems"]
    assert second["serial"] == first["serial"] and second["prefix"] != first["prefix"]
    after = digests(target)
    assert all(after[k] == v for k, v in before.items())  # the real copies are untouched
    new = {k: v for k, v in after.items() if k not in before and k.endswith(".MP4")}
    assert sorted(v for v in new.values()) == sorted(
        v for k, v in digests(fake).items() if k.endswith(".MP4")) or second["cleared"]
    with State(cfg.paths.database) as s:
        kinds = [f for r in s.query("SELECT findings FROM clips WHERE docking_id = ?",
                                    (second["docking_id"],))
                 for f in json.loads(r["findings"] or "[]")]
        states = {r["docking_id"]: r["state"] for r in s.query(
            "SELECT docking_id, state FROM clips")}
    assert any(f["kind"] == "changed_since_copy" for f in kinds), kinds
    assert states[first["docking_id"]] == "cleared"
    assert digests(real) == {k: v for k, v in real_keep.items() if not k.endswith(".MP4")}


# --------------------------------------------------------------------------- many files


def test_many_tiny_files_are_scanned_and_bounded(tmp_path: Path) -> None:
    """5 000 tiny clips and 1 000 other files in deep and wide folders: every clip listed
    once with a unique safe name; above ``max_files`` the scan stops with a finding."""
    root = tmp_path / "rec"
    rng = random.Random(3)
    paths = set()
    for i in range(5000):
        folder = root / "DCIM" / f"{i % 50:03d}" / ("deep/" * (i % 3))
        paths.add(folder / f"{''.join(rng.choices(string.ascii_uppercase, k=6))}_{i:05d}.MP4")
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    for i in range(1000):
        (root / "DCIM" / f"{i % 50:03d}" / f"junk{i}.txt").write_bytes(b"")
    scan = scan_recorder(root, PROFILE)
    assert len(scan.entries) == 5000 and not any(f.kind == "scan_truncated"
                                                  for f in scan.findings)
    assert len({e.safe_name.casefold() for e in scan.entries}) == 5000
    capped = scan_recorder(root, PROFILE, max_files=1200)
    assert len(capped.entries) == 1200
    (trunc,) = [f for f in capped.findings if f.kind == "scan_truncated"]
    assert "1200" in trunc.message and "not listed" in trunc.message


def test_damaged_card_is_a_finding() -> None:
    """fsck -n errors (or a check that could not finish) become a docking finding: a
    damaged card may hide footage (fusefat shows lost folders as empty)."""
    from dockd.devices.drivers import fs_findings

    assert fs_findings({}) == [] and fs_findings({"DOCKD_FSCK": "clean"}) == []
    assert fs_findings({"DOCKD_FSCK": "unsupported"}) == []
    (f,) = fs_findings({"DOCKD_FSCK": "errors", "DOCKD_FSCK_DETAIL": "Dirty bit is set"})
    assert f.kind == "filesystem_errors" and f.severity == "warning"
    assert "missing" in f.message and f.detail["detail"] == "Dirty bit is set"
    (f,) = fs_findings({"DOCKD_FSCK": "failed", "DOCKD_FSCK_DETAIL": "x" * 5000})
    assert len(f.detail["detail"]) == 500
