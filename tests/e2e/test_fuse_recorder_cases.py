"""What real FAT32/exFAT cards bring, FUSE-mounted by the real helper: case-blind names,
8.3 and long (Chinese) names, local-time stamps with 2 s resolution, a full card, a dirty
bit, a truncated image — and a read-only docking that changes not one byte of the card."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dockd.config import for_workdir
from dockd.devices.drivers import registry_from_config
from dockd.ingest.scan import scan_recorder
from dockd.oneshot import ingest_tree
from dockd.store import State
from tests.fat_images import (
    Dock,
    build_image,
    dock,  # noqa: F401  (fixture)
    fat_listing,
    skip_unless_fuse,
)

pytestmark = pytest.mark.slow
TZ = "Asia/Shanghai"
FS = ["vfat", "exfat"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cfg_for(workdir: Path) -> Any:
    cfg = for_workdir(workdir)
    return dataclasses.replace(cfg, dock=dataclasses.replace(cfg.dock, timezone=TZ))


def _mdir_tail(img: Path) -> list[str]:
    import subprocess

    proc = subprocess.run(["mdir", "-i", str(img), "::/"], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    return proc.stdout.strip().splitlines()[-1:]


def local_ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo(TZ)).timestamp()


@pytest.mark.parametrize("fs", FS)
def test_names_case_and_times(fs: str, tmp_path: Path, workdir: Path, dock: Dock) -> None:  # noqa: F811
    """A lower-case clip folder and extension are found (FAT is case-blind, the profile says
    DCIM and MP4); an 8.3 name, a long name and a long Chinese name come out as written;
    file times are the recorder's local time (2 s steps on FAT, finer on exFAT)."""
    skip_unless_fuse(fs)
    cfg = cfg_for(workdir)
    tree = tmp_path / "tree"
    names = {"CLIP0001.MP4": "2026-11-23 08:59:57",
             "clip0002.mp4": "2026-11-23 09:00:01",
             "A1234567_012345_20261123090005_0003.MP4": "2026-11-23 09:00:05",
             "执法记录仪_朝阳_0004.MP4": "2026-11-23 09:00:09"}
    folder = tree / "dcim" / "100media"
    folder.mkdir(parents=True)
    for name, when in names.items():
        (folder / name).write_bytes(name.encode() * 50)
        t = local_ts(when)
        os.utime(folder / name, (t, t))
    img = build_image(tmp_path / f"card.{fs}", fs, tree, TZ)
    node = dock.attach(img)
    mnt = dock.mount(dock.helper(node, fs, TZ), node)
    scan = scan_recorder(mnt, cfg.profiles[0])
    got = {Path(e.rel_path).name: e for e in scan.entries}
    if fs == "vfat":  # measured: fusefat ignores the NT lower-case flags mcopy sets on an
        # all-lower-case 8.3 name (shows CLIP0002.MP4, as DOS would; Windows: clip0002.mp4)
        got = {next(n for n in names if n.casefold() == k.casefold()): e
               for k, e in got.items()}
    assert sorted(got) == sorted(names)
    assert all(Path(e.rel_path).parts[1].casefold() == "100media" for e in scan.entries)
    for name, e in got.items():
        assert e.size == len(name.encode()) * 50
        assert (mnt / e.rel_path).read_bytes() == name.encode() * 50
        want = local_ts(names[name])
        if fs == "exfat":
            assert e.mtime == pytest.approx(want, abs=0.01), name
        else:
            # FAT: local time in 2 s steps (09:00:01 -> 09:00:00). Measured: fusefat 0.1a
            # puts the date one month late (tm_mon not decremented), time of day right.
            shown = datetime.fromtimestamp(e.mtime, ZoneInfo(TZ))
            expect = datetime.fromtimestamp(want - want % 2, ZoneInfo(TZ))
            assert shown.time() == expect.time(), (name, shown, expect)
            assert shown.day == expect.day and shown.month == expect.month % 12 + 1, shown
    if fs == "vfat":  # the 8.3 entries the firmware sees, read without FUSE
        listing = fat_listing(img)
        assert "dcim/100media/CLIP0001.MP4" in listing
        assert "dcim/100media/执法记录仪_朝阳_0004.MP4" in listing


@pytest.mark.parametrize("fs", FS)
def test_read_only_docking_changes_no_byte_and_keeps_a_dirty_bit(
        fs: str, tmp_path: Path, workdir: Path, make_recorder: Any, dock: Dock) -> None:  # noqa: F811
    """A card not cleanly unmounted (dirty bit) is still docked read-only: fsck -n reports it
    (FAT; exfatprogs' fsck -n does not look at the flag), the footage comes off and is
    delivered, and the card image is bit-for-bit what it was (the bit is not cleared)."""
    skip_unless_fuse(fs)
    cfg = cfg_for(workdir)
    tree = make_recorder(cfg, segments=2)
    img = build_image(tmp_path / f"card.{fs}", fs, tree, TZ)
    offset, bit = (0x41, 0x01) if fs == "vfat" else (106, 0x02)
    with open(img, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b | bit]))
    before = sha256(img)
    node = dock.attach(img)
    h = dock.helper(node, fs, TZ)
    health = h.handle(["fsck", node, "port-03"])
    assert health["ok"], health
    if fs == "vfat":
        assert health["verdict"] == "errors" and "Dirty bit" in health["detail"], health
    mnt = dock.mount(h, node)
    out = ingest_tree(cfg, mnt, port="port-03", create_key=True, hints={"DOCKD_FSCK": health["verdict"]})
    assert out["ok"] and out["clips_total"] == 2 and out["cleared"] == [], out
    assert h.handle(["unmount", "port-03"])["was_mounted"]
    dock.release(node)
    assert sha256(img) == before


@pytest.mark.parametrize("fs", FS)
def test_full_card(fs: str, tmp_path: Path, workdir: Path, make_recorder: Any,
                   dock: Dock) -> None:  # noqa: F811
    """A card with no free cluster left: identified, its storage read as full, every clip
    delivered."""
    skip_unless_fuse(fs)
    cfg = cfg_for(workdir)
    tree = make_recorder(cfg, segments=2)
    img = build_image(tmp_path / f"card.{fs}", fs, tree, TZ, fill=True)
    node = dock.attach(img)
    mnt = dock.mount(dock.helper(node, fs, TZ), node)
    registry = registry_from_config(cfg)
    snap = registry.snapshot(mnt, {}, now=datetime.now(ZoneInfo(TZ)))
    assert snap.identity.serial == "A1234567" and snap.identity.officer_name == "张三"
    total, free = snap.health.storage_total, snap.health.storage_free
    if fs == "exfat":
        assert total and total > 30 * 1024 * 1024
        assert free is not None and free < 64 * 1024, (total, free)
    else:  # measured: fusefat answers statfs with zeros; that is "unknown", not "full"
        assert (total, free) == (None, None)
        assert "0 bytes free" in " ".join(_mdir_tail(img))
    out = ingest_tree(cfg, mnt, port="port-03", create_key=True)
    assert out["ok"] and out["clips_total"] == 2, out


@pytest.mark.parametrize("fs", FS)
def test_truncated_image(fs: str, tmp_path: Path, workdir: Path, make_recorder: Any,
                         dock: Dock) -> None:  # noqa: F811
    """A card whose end is missing (a failing card, a bad dump), the clips lying beyond the
    cut: fsck -n says so. FAT: the directory is intact, so it mounts; the clips cannot be
    read and are named as not delivered, the docking does not pretend otherwise, nothing is
    cleared. exFAT: the driver refuses a volume larger than its device, a clear refusal
    (``failed``, not ``vanished``: the device is still there)."""
    skip_unless_fuse(fs)
    cfg = cfg_for(workdir)
    tree = make_recorder(cfg, segments=2)
    with open(tree / "AAAA.BIN", "wb") as f:  # copied first: the clips land behind it
        f.truncate(24 * 1024 * 1024)
    img = build_image(tmp_path / f"card.{fs}", fs, tree, TZ)
    with open(img, "r+b") as f:
        f.truncate(12 * 1024 * 1024)
    node = dock.attach(img)
    h = dock.helper(node, fs, TZ)
    health = h.handle(["fsck", node, "port-03"])
    assert health["ok"] and health["verdict"] in ("errors", "failed"), health
    answer = h.handle(["mount", node, "port-03"])
    if fs == "exfat":
        assert answer["ok"] is False and answer["error"] == "failed", answer
        assert "larger than device" in answer["message"]
        return
    assert answer["ok"], answer
    out = ingest_tree(cfg, Path(answer["mountpoint"]), port="port-03", create_key=True,
                      hints={"DOCKD_FSCK": health["verdict"], "ID_SERIAL_SHORT": "A1B2C3D4",
                             "DOCKD_FSCK_DETAIL": health["detail"]})
    assert out["serial"] == "A1B2C3D4"  # the info file lies beyond the cut: udev's serial
    assert out["cleared"] == []
    # Measured: fusefat shows a directory whose clusters are gone as empty (no error), so
    # the docking finds no clip; it must say that the card is damaged and unreadable.
    assert out["clips_total"] == 0
    with State(cfg.paths.database) as s:
        d = s.docking(out["docking_id"])
    found = {f["kind"]: f for f in json.loads(d["findings"])}
    assert found["filesystem_errors"]["severity"] == "warning"
    assert "missing" in found["filesystem_errors"]["message"]
    assert "info_unreadable" in found
