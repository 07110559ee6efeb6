"""scan_recorder: what is listed, what is skipped and reported, and how names are made safe."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from dockd.config import ProfileConfig
from dockd.errors import RecorderGone
from dockd.ingest.offload import copy_clip
from dockd.ingest.scan import MAX_SAFE_NAME, assign_safe_names, escape_component, scan_recorder

PROFILE = ProfileConfig()
GOOD = "ZFY001_100234_20240301083000_0001.MP4"


def put(root: Path, rel: str | bytes, data: bytes = b"clip") -> None:
    path = os.path.join(os.fsencode(root), os.fsencode(rel))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def kinds(result) -> list[str]:
    return [f.kind for f in result.all_findings]


def test_nested_and_case_insensitive_folders(tmp_path: Path) -> None:
    put(tmp_path, f"DCIM/20240301/{GOOD}", b"a" * 10)
    put(tmp_path, "dcim/100MEDIA/ZFY001_100234_20240301090000_0002.mp4")
    put(tmp_path, "Record/deep/er/ZFY001_100234_20240301100000_0003.Mov")
    put(tmp_path, "DCIM/20240301/notes.txt")  # not a clip extension
    put(tmp_path, "OTHER/ZFY001_100234_20240301110000_0004.MP4")  # not a clip folder
    put(tmp_path, "ZFY001_100234_20240301120000_0005.MP4")  # at the root
    res = scan_recorder(tmp_path, PROFILE)
    rels = [e.rel_path for e in res.entries]
    assert rels == sorted(rels)
    assert rels == [
        f"DCIM/20240301/{GOOD}",
        "Record/deep/er/ZFY001_100234_20240301100000_0003.Mov",
        "dcim/100MEDIA/ZFY001_100234_20240301090000_0002.mp4",
    ]
    first = res.entries[0]
    assert first.safe_name == GOOD and first.size == 10 and first.mtime > 0
    assert first.findings == ()
    assert res.total_bytes == 10 + 4 + 4
    assert res.findings == []


def test_symlinks_and_special_files_are_skipped_and_reported(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.MP4").write_bytes(b"not on the recorder")
    rec = tmp_path / "rec"
    put(rec, f"DCIM/{GOOD}")
    os.symlink(outside / "secret.MP4", rec / "DCIM" / "link.MP4")
    os.symlink(outside, rec / "DCIM" / "linkdir")
    os.symlink(outside, rec / "VIDEO")  # a clip folder that is a link
    os.mkfifo(rec / "DCIM" / "pipe.MP4")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.fspath(rec / "DCIM" / "s.MP4"))
        res = scan_recorder(rec, PROFILE)
    finally:
        sock.close()
    assert [e.rel_path for e in res.entries] == [f"DCIM/{GOOD}"]
    by_kind = {(f.kind, f.detail["path"]) for f in res.findings}
    assert ("symlink_skipped", "DCIM/link.MP4") in by_kind
    assert ("symlink_skipped", "DCIM/linkdir") in by_kind
    assert ("symlink_skipped", "VIDEO") in by_kind
    assert ("special_file_skipped", "DCIM/pipe.MP4") in by_kind
    assert ("special_file_skipped", "DCIM/s.MP4") in by_kind
    assert all(f.severity == "warning" for f in res.findings)


HOSTILE = [
    b"DCIM/bad\xff\xfename.MP4",
    b"DCIM/ctrl\x1b[31m\nname.MP4",
    b"DCIM/..MP4",
    b"DCIM/-rf.MP4",
    b"DCIM/.hidden.MP4",
    b"DCIM/" + b"L" * 250 + b".MP4",
    b"DCIM/a%2Fb.MP4",
]


def test_hostile_names_get_safe_unique_names_and_findings(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    for i, name in enumerate(HOSTILE):
        put(rec, name, bytes([i]) * (i + 1))
    res = scan_recorder(rec, PROFILE)
    assert len(res.entries) == len(HOSTILE)
    assert sorted(os.fsencode(e.rel_path) for e in res.entries) == sorted(HOSTILE)
    names = [e.safe_name for e in res.entries]
    assert len({n.casefold() for n in names}) == len(names)
    for e in res.entries:
        n = e.safe_name
        assert n.isprintable() and "/" not in n and "\\" not in n
        assert not n.startswith((".", "-")) and n not in (".", "..")
        assert len(n.encode()) <= MAX_SAFE_NAME
        assert n.upper().endswith(".MP4")
        hostile = [f for f in e.findings if f.kind == "hostile_name"]
        assert len(hostile) == 1, e.rel_path
        assert hostile[0].detail["safe_name"] == n
        assert hostile[0].detail["original"].isprintable()
        assert any(f.kind == "name_mismatch" and f.severity == "info" for f in e.findings)
    safe = {os.fsencode(e.rel_path): e.safe_name for e in res.entries}
    assert safe[b"DCIM/bad\xff\xfename.MP4"] == "bad%FF%FEname.MP4"
    assert safe[b"DCIM/..MP4"] == "%2E.MP4"
    assert safe[b"DCIM/-rf.MP4"] == "%2Drf.MP4"
    assert safe[b"DCIM/a%2Fb.MP4"] == "a%252Fb.MP4"  # '%' itself escaped: no aliasing
    reasons = {os.fsencode(e.rel_path): e.findings[0].detail["reasons"] for e in res.entries}
    assert "not valid UTF-8" in reasons[b"DCIM/bad\xff\xfename.MP4"]
    assert "control or format characters" in reasons[b"DCIM/ctrl\x1b[31m\nname.MP4"]

    # Staging every one of them puts exactly one file per clip directly in staging.
    staging = tmp_path / "staging"
    for e in res.entries:
        r = copy_clip(rec, e, staging, verify=False)
        assert r.staged_path.parent == staging.resolve()
    assert sorted(p.name for p in staging.iterdir()) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec", "staging"]


def test_duplicate_names_become_unique_with_folder_prefix(tmp_path: Path) -> None:
    put(tmp_path, f"DCIM/A/{GOOD}", b"1")
    put(tmp_path, f"DCIM/B/{GOOD}", b"2")
    put(tmp_path, f"dcim/a/{GOOD.lower()}", b"3")  # differs only by case
    put(tmp_path, "DCIM/C/ZFY001_100234_20240301083000_0009.MP4", b"4")
    res = scan_recorder(tmp_path, PROFILE)
    safe = {e.rel_path: e.safe_name for e in res.entries}
    assert safe[f"DCIM/A/{GOOD}"] == f"DCIM__A__{GOOD}"
    assert safe[f"DCIM/B/{GOOD}"] == f"DCIM__B__{GOOD}"
    # unique case-insensitively too (targets may be case-insensitive)
    assert safe[f"dcim/a/{GOOD.lower()}"] == f"dcim__a__{GOOD.lower()}".replace(".mp4", "~2.mp4")
    assert safe["DCIM/C/ZFY001_100234_20240301083000_0009.MP4"] == \
        "ZFY001_100234_20240301083000_0009.MP4"
    # duplicate names alone are not hostile
    assert "hostile_name" not in kinds(res)


def test_assign_safe_names_resolves_prefix_collisions() -> None:
    # "a__b/x" and "a/b__x" flatten alike; the second one gets a counter.
    out = assign_safe_names(["a__b/x.mp4", "a/b__x.mp4", "c/x.mp4", "d/b__x.mp4"])
    assert len(set(out.values())) == 4
    assert out["c/x.mp4"] == "c__x.mp4"
    assert sorted(out.values()) == sorted(
        ["a__b__x.mp4", "a__b__x~2.mp4", "c__x.mp4", "d__b__x.mp4"])


def test_escape_is_injective_on_tricky_pairs() -> None:
    pairs = [("a b", "a%20b"), ("%", "%25"), (".x", "%2Ex"), ("x.", "x.")]
    escaped = [escape_component(a) for a, _ in pairs]
    assert escaped == [b for _, b in pairs]
    assert escape_component("执法记录仪.MP4") == "执法记录仪.MP4"


def test_name_mismatch_is_info(tmp_path: Path) -> None:
    put(tmp_path, "DCIM/VID_0001.MP4")
    res = scan_recorder(tmp_path, PROFILE)
    (entry,) = res.entries
    assert [(f.kind, f.severity) for f in entry.findings] == [("name_mismatch", "info")]


def test_limits_are_reported(tmp_path: Path) -> None:
    for i in range(5):
        put(tmp_path, f"DCIM/ZFY001_100234_20240301083000_{i:04d}.MP4")
    put(tmp_path, f"DCIM/1/2/3/4/{GOOD}")
    res = scan_recorder(tmp_path, PROFILE, max_files=3)
    assert len(res.entries) == 3
    assert [f.kind for f in res.findings] == ["scan_truncated"]
    res = scan_recorder(tmp_path, PROFILE, max_depth=3)
    assert len(res.entries) == 5
    (f,) = res.findings
    assert f.kind == "depth_limit" and f.detail["folders"] == ["DCIM/1/2/3"]


def test_no_clip_folder_and_missing_root(tmp_path: Path) -> None:
    res = scan_recorder(tmp_path, PROFILE)
    assert res.entries == [] and [f.kind for f in res.findings] == ["no_clip_dirs"]
    with pytest.raises(RecorderGone):
        scan_recorder(tmp_path / "unplugged", PROFILE)
