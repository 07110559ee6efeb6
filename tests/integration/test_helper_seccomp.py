"""The helper unit's system-call filter (issue 11) does not break what the helper does.

``dockd-mount@.service`` allows ``@system-service @mount`` and then removes ``@privileged
@resources``. There is no systemd as PID 1 here, so the test builds the same filter with
libseccomp (the sets expanded by this machine's ``systemd-analyze syscall-filter``, every
other call answered EPERM as ``SystemCallErrorNumber=EPERM`` does), loads it in a fresh
Python process, imports the helper *after* loading it, and runs the real staged mount,
``remount rw``, a write, ``remount ro`` and ``unmount`` of an ext2 loop image (this
kernel has no vfat/exfat). A call from the removed sets (``setuid``) must be refused, to
show that the filter is really in force."""

from __future__ import annotations

import ctypes.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_mount_helper import IS_ROOT, loop_image, props_for, real_stage  # noqa: F401
from tests.integration.test_systemd_units import ROOT, unit

ANALYZE = shutil.which("systemd-analyze")

SCRIPT = r'''
import ctypes, json, os, sys
allowed = json.loads(sys.argv[1])
node, root, stage, props = sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
lib = ctypes.CDLL(sys.argv[6], use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x00050000 | 1)  # SCMP_ACT_ERRNO(EPERM)
for name in allowed:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:
        lib.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0)  # SCMP_ACT_ALLOW
assert lib.seccomp_load(ctx) == 0, "seccomp_load failed"
out = {}
try:
    os.setuid(0)
    out["setuid"] = "allowed"
except PermissionError:
    out["setuid"] = "EPERM"
from pathlib import Path
from dockd.config import AllowConfig, Config, DevicesConfig
from dockd.helper import mount_helper as mh
mh.FS_DATA["ext2"] = ""
cfg = Config(devices=DevicesConfig(source="udev", mount_root=Path(root)),
             allow=(AllowConfig(vendor_id="2e8a", model_id="0001"),))
h = mh.Helper(cfg, mh.Caller(0, 0, "seccomp-test"), properties_of=lambda _d: props,
              stage_root=Path(stage))
out["mount"] = h.handle(["mount", node, "port-07"])
out["rw"] = h.handle(["remount", "port-07", "rw"])
try:
    Path(root, "port-07", "written").write_bytes(b"x")
    out["write"] = "ok"
except OSError as exc:
    out["write"] = exc.strerror
out["ro"] = h.handle(["remount", "port-07", "ro"])
out["unmount"] = h.handle(["unmount", "port-07"])
print(json.dumps(out))
'''


def expand(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a ``@group`` (nested groups expanded), as systemd knows them."""
    seen = set() if seen is None else seen
    if group in seen:
        return set()
    seen.add(group)
    assert ANALYZE is not None
    text = subprocess.run([ANALYZE, "syscall-filter", group], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    names: set[str] = set()
    for line in text.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        names |= expand(word, seen) if word.startswith("@") else {word}
    return names


def unit_filter() -> set[str]:
    """SystemCallFilter= of dockd-mount@.service: allow-list minus the ~ lists."""
    allowed: set[str] = set()
    for value in unit("dockd-mount@.service")["SystemCallFilter"]:
        deny = value.startswith("~")
        items = set().union(*(expand(w) if w.startswith("@") else {w}
                              for w in value.lstrip("~").split()))
        allowed = allowed - items if deny else allowed | items
    return allowed


@pytest.mark.skipif(not IS_ROOT or ANALYZE is None, reason="needs root and systemd-analyze")
def test_the_real_mount_sequence_works_under_the_units_syscall_filter(
        tmp_path: Path, loop_image: Any, real_stage: Path) -> None:  # noqa: F811
    seccomp = ctypes.util.find_library("seccomp")
    if seccomp is None:
        pytest.skip("libseccomp is not installed")
    if "ext2" not in Path("/proc/filesystems").read_text():
        pytest.skip("kernel has no ext2 driver")
    allowed = unit_filter()
    assert "mount" in allowed and "umount2" in allowed and "setuid" not in allowed
    node = loop_image(["mkfs.ext2", "-q"], read_only=False)
    script = tmp_path / "under_seccomp.py"
    script.write_text(SCRIPT)
    root = tmp_path / "mnt"
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(sorted(allowed)), node, str(root),
         str(real_stage), json.dumps(props_for(node, ID_FS_TYPE="ext2")), seccomp],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["mount"]["ok"] and "not permitted" in out["mount"]["message"]:
        pytest.skip(f"mounting is not permitted here: {out['mount']['message']}")
    assert out["setuid"] == "EPERM"  # the filter is in force
    assert out["mount"]["ok"], out
    assert out["rw"]["ok"] and out["write"] == "ok", out
    assert out["ro"]["ok"] and out["unmount"]["ok"] and out["unmount"]["was_mounted"], out
    assert not (root / "port-07").exists()

