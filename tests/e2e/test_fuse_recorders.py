"""Real recorder filesystems: FAT32 and exFAT images, FUSE-mounted by the real mount helper,
through a full docking — identify (GBK info file), health with ``fsck -n``, copy, check,
sign, deliver, verify — then the clock set and the delivered clips erased inside the write
window, the card read back with tools that do not go through FUSE (mtools, fsck).

Also the recorder-filesystem specifics: local-time stamps with 2 s resolution, names that
differ only in case, 8.3 and long names, a full card, a dirty bit, a truncated image."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dockd.config import for_workdir
from dockd.devices.mount import UNRELIABLE_FILE_TIMES
from dockd.helper import fuse_mount
from dockd.oneshot import ingest_tree
from dockd.store import State
from tests.fat_images import (
    Dock,
    build_image,
    dock,  # noqa: F401  (fixture)
    fat_listing,
    fsck,
    skip_unless_fuse,
    window,
)

pytestmark = pytest.mark.slow
TZ = "Asia/Shanghai"


def docking_cfg(workdir: Path, tmp_path: Path) -> Any:
    cfg = for_workdir(workdir)
    profile = dataclasses.replace(cfg.profiles[0], clear_policy="after_delivery",
                                  timeset_file="TIMESET.TXT")
    return dataclasses.replace(cfg, profiles=(profile,),
                               dock=dataclasses.replace(cfg.dock, timezone=TZ),
                               health=dataclasses.replace(cfg.health, require_ntp=False))


def _mdir(img: Path) -> list[str]:
    proc = subprocess.run(["mdir", "-i", str(img), "::/"], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    return proc.stdout.splitlines()


def other_user_denied(path: Path) -> bool:
    """Whether uid 65534 gets EACCES listing ``path`` (allow_other + default_permissions)."""
    proc = subprocess.run(["ls", str(path)], capture_output=True, text=True, timeout=30,
                          user=65534, group=65534, env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    return proc.returncode != 0 and "Permission denied" in proc.stderr


@pytest.mark.parametrize("fs", ["vfat", "exfat"])
def test_full_docking_with_clearing(fs: str, tmp_path: Path, workdir: Path, make_recorder: Any,
                                    dock: Dock) -> None:  # noqa: F811
    skip_unless_fuse(fs)
    cfg = docking_cfg(workdir, tmp_path)
    tree = make_recorder(cfg, segments=2, clock_offset_s=40.0)
    clips = sorted(str(p.relative_to(tree)) for p in tree.rglob("*.MP4"))
    assert len(clips) == 2
    img = build_image(tmp_path / f"card.{fs}", fs, tree, TZ)
    node = dock.attach(img)
    h = dock.helper(node, fs, TZ)

    health = h.handle(["fsck", node, "port-03"])
    assert health["ok"] and health["verdict"] == "clean", health
    mnt = dock.mount(h, node)
    line = next(ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
                if f" {mnt} " in ln)
    assert fuse_mount.FUSE_TYPES[fs] in line and f" {node} ro," in line  # FUSE, read-only
    assert {"nosuid", "nodev", "noexec"} <= set(line.split()[5].split(","))
    with pytest.raises(OSError) as exc:
        (mnt / "x").write_bytes(b"x")
    assert exc.value.errno == errno.EROFS
    assert other_user_denied(mnt)

    driver = dock.answer["driver"]
    assert driver == fuse_mount.PROGRAMS[fs]
    hints = {"DOCKD_FSCK": health["verdict"], "DOCKD_FSCK_DETAIL": health["detail"],
             "DOCKD_FS_DRIVER": driver}
    if driver in UNRELIABLE_FILE_TIMES:  # as the udev source adds it (docking_hints)
        hints["DOCKD_FILE_TIMES"] = "unreliable"
    out = ingest_tree(cfg, mnt, port="port-03", create_key=True, hints=hints, writable_for=window(h, tmp_path))
    assert out["ok"], out["problems"]
    assert out["serial"] == "A1234567" and out["clips_total"] == 2
    assert sorted(out["cleared"]) == sorted(Path(c).name for c in clips)

    with State(cfg.paths.database) as s:
        assert {r["state"] for r in s.query("SELECT state FROM clips")} == {"cleared"}
        rec = s.query_one("SELECT * FROM recorders WHERE serial = 'A1234567'")
        assert rec["officer_name"] == "张三" and rec["unit_name"] == "北京市公安局朝阳分局"
        sample = s.query_one("SELECT fs_check FROM recorder_health ORDER BY ts LIMIT 1")
        assert sample["fs_check"] == "ok"
        assert s.query_one("SELECT 1 AS x FROM audit WHERE action = 'clock_set'")
        rows = s.query("SELECT mtime, start_recorded FROM clips ORDER BY id")
        kinds = {f["kind"] for f in json.loads(s.query_one(
            "SELECT findings FROM dockings WHERE id = ?", (out["docking_id"],))["findings"])}
    truth = sorted((tree / c).stat().st_mtime for c in clips)
    if fs == "vfat":  # fusefat's dates are a month off: not used, and said so
        assert [r["mtime"] for r in rows] == [0.0, 0.0] and "file_times_unreliable" in kinds
    else:  # exFAT keeps the UTC offset (exfat-fuse writes whole seconds)
        assert [r["mtime"] for r in rows] == pytest.approx(truth, abs=1.0)
    assert all(r["start_recorded"] for r in rows)  # from the file names
    # read-only again, the clips gone, the info file and the time-set file there
    with pytest.raises(OSError) as exc:
        (mnt / "x").write_bytes(b"x")
    assert exc.value.errno == errno.EROFS
    assert not any((mnt / c).exists() for c in clips)
    assert (mnt / "ZFY_INFO.INI").is_file() and (mnt / "TIMESET.TXT").is_file()
    assert h.handle(["unmount", "port-03"])["was_mounted"]
    assert fuse_mount.wait_released(os.stat(node).st_rdev, timeout=10)
    # the card itself, read without FUSE: consistent, clips erased, the rest kept
    check = fsck(fs, img)
    assert check.returncode == 0, check.stdout + check.stderr
    if fs == "vfat":
        listing = fat_listing(img)
        assert not any(c in listing for c in clips), listing
        assert "ZFY_INFO.INI" in listing and "TIMESET.TXT" in listing
        # Measured, documented in docs/recorder-filesystems.md: fusefat writes the new
        # file's 8.3 alias as "~1" (a firmware reading only 8.3 names will not find it).
        (short,) = [ln for ln in _mdir(img) if ln.rstrip().endswith("TIMESET.TXT")]
        assert short.split()[0] == "~1", short
    target = workdir / "target"
    delivered = sorted(p.name for p in target.rglob("*.MP4"))
    assert delivered == sorted(Path(c).name for c in clips)


@pytest.mark.parametrize("fs", ["vfat", "exfat"])
def test_fuse_window_in_a_slave_mount_namespace(fs: str, tmp_path: Path,
                                                dock: Dock) -> None:  # noqa: F811
    """The sandboxed daemon's view (a slave mount namespace made before the recorder was
    mounted): read-only, writable inside the window (the read-write driver's mount arrives
    there), read-only again after it, never the staging mount; the write reached the card."""
    import shutil as _shutil

    from tests.integration.test_mount_remount import Sandbox, _run

    skip_unless_fuse(fs)
    unshare = _shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1)")
    area = tmp_path / "area"
    area.mkdir()
    if _run("mount", "--bind", str(area), str(area)).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        assert _run("mount", "--make-shared", str(area)).returncode == 0
        dock.base = area
        sandbox = Sandbox(unshare)
        try:
            img = build_image(tmp_path / f"card.{fs}", fs, None, TZ)
            node = dock.attach(img)
            h = dock.helper(node, fs, TZ)
            mnt = dock.mount(h, node)
            assert sandbox.write(mnt / "a.txt") == "EROFS"
            (entry,) = sandbox.entries(mnt)
            assert {"rw", "nosuid", "nodev", "noexec"} <= entry.mount_options
            assert h.handle(["remount", "port-03", "rw"])["ok"]
            assert sandbox.write(mnt / "a.txt") == "ok"  # written and removed again
            (mnt / "KEEP.TXT").write_text("kept\n")
            (entry,) = sandbox.entries(mnt)
            assert entry.super_read_only is False
            assert {"nosuid", "nodev", "noexec"} <= entry.mount_options
            assert h.handle(["remount", "port-03", "ro"])["ok"]
            assert sandbox.write(mnt / "a.txt") == "EROFS"
            assert not any(f" {area}/stage/" in ln for ln in sandbox.mountinfo().splitlines())
            assert h.handle(["unmount", "port-03"])["was_mounted"]
            assert sandbox.entries(mnt) == []
            dock.release(node)
        finally:
            sandbox.close()
        if fs == "vfat":
            assert "KEEP.TXT" in fat_listing(img) and "a.txt" not in fat_listing(img)
        assert fsck(fs, img).returncode == 0
    finally:
        dock.close()
        _run("umount", "-l", str(area))
