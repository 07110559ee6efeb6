"""LocalTarget: atomic, idempotent, never-overwriting delivery into a directory."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from dockd.delivery.base import StorageTarget, os_error_to_delivery
from dockd.delivery.local import LocalTarget
from dockd.errors import DeliveryError

KEY = "110100/0012345/A1234567/2024-05-01/20240501T090000Z_dock-01_port-01_1/clip.mp4"


def _src(tmp_path: Path, data: bytes, name: str = "src.bin") -> tuple[Path, str, int]:
    p = tmp_path / name
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest(), len(data)


@pytest.fixture
def target(tmp_path: Path) -> LocalTarget:
    root = tmp_path / "target"
    root.mkdir()
    return LocalTarget("primary", root, chunk_size=4096)


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def test_is_a_storage_target(target: LocalTarget) -> None:
    assert isinstance(target, StorageTarget)
    assert "local directory" in target.describe()


def test_put_file_lands_read_only_and_verifies(tmp_path: Path, target: LocalTarget) -> None:
    data = os.urandom(10_000)
    src, sha, size = _src(tmp_path, data)
    r = target.put_file(src, KEY, sha256=sha, size=size)
    assert (r.key, r.size, r.sha256, r.already_present) == (KEY, size, sha, False)
    final = target.root / KEY
    assert final.read_bytes() == data
    assert stat.S_IMODE(final.stat().st_mode) == 0o444
    assert stat.S_IMODE(final.parent.stat().st_mode) & 0o755 == 0o755
    assert _all_files(target.root) == [KEY]
    assert target.verify(KEY, sha256=sha, size=size)
    assert not target.verify(KEY, sha256="0" * 64, size=size)
    assert not target.verify(KEY, sha256=sha, size=size + 1)
    assert not target.verify("nope/clip.mp4", sha256=sha, size=size)
    st = target.stat(KEY)
    assert st is not None and st.size == size
    assert target.stat("u/o/s/d/missing.mp4") is None
    assert target.stat("not/there/at/all.mp4") is None


def test_re_put_is_idempotent(tmp_path: Path, target: LocalTarget) -> None:
    src, sha, size = _src(tmp_path, b"evidence" * 1000)
    target.put_file(src, KEY, sha256=sha, size=size)
    inode = (target.root / KEY).stat().st_ino
    r = target.put_file(src, KEY, sha256=sha, size=size)
    assert r.already_present
    assert (target.root / KEY).stat().st_ino == inode
    assert _all_files(target.root) == [KEY]
    assert target.put_bytes(b"doc", "a/b.json").already_present is False
    assert target.put_bytes(b"doc", "a/b.json").already_present is True


def test_conflicting_content_is_never_overwritten(tmp_path: Path, target: LocalTarget) -> None:
    src, sha, size = _src(tmp_path, b"original")
    target.put_file(src, KEY, sha256=sha, size=size)
    other, sha2, size2 = _src(tmp_path, b"tampered", "other.bin")
    with pytest.raises(DeliveryError, match="already exists with different content") as e:
        target.put_file(other, KEY, sha256=sha2, size=size2)
    assert e.value.retry is False
    assert (target.root / KEY).read_bytes() == b"original"
    with pytest.raises(DeliveryError) as e:
        target.put_bytes(b"origina!", KEY)  # same size, other content
    assert e.value.retry is False
    assert _all_files(target.root) == [KEY]


def test_source_not_matching_its_hash_is_not_delivered(tmp_path: Path,
                                                       target: LocalTarget) -> None:
    src, sha, size = _src(tmp_path, b"abc")
    with pytest.raises(DeliveryError, match="source for") as e:
        target.put_file(src, KEY, sha256="0" * 64, size=size)
    assert e.value.retry is False
    with pytest.raises(DeliveryError, match="source for"):
        target.put_file(src, KEY, sha256=sha, size=size + 1)
    assert _all_files(target.root) == []


def test_stale_partial_is_replaced(tmp_path: Path, target: LocalTarget) -> None:
    final = target.root / KEY
    final.parent.mkdir(parents=True)
    stale = final.with_name(final.name + ".partial")
    stale.write_bytes(b"half a clip from a crashed run")
    stale.chmod(0o444)
    src, sha, size = _src(tmp_path, b"the whole clip")
    assert not target.put_file(src, KEY, sha256=sha, size=size).already_present
    assert final.read_bytes() == b"the whole clip"
    assert not stale.exists()


class _BadDisk(LocalTarget):
    """The disk returns something else than what was written."""

    def _read_back(self, dir_fd: int, name: str) -> tuple[int, str]:
        size, sha = super()._read_back(dir_fd, name)
        return (size, "f" * 64) if name.endswith(".partial") else (size, sha)


def test_partial_is_never_visible_as_final(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    t = _BadDisk("bad", tmp_path / "t")
    src, sha, size = _src(tmp_path, b"x" * 5000)
    with pytest.raises(DeliveryError, match="landed as") as e:
        t.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.retry is True
    assert _all_files(tmp_path / "t") == []


class _Racer(LocalTarget):
    """Another writer publishes the final file while we are still verifying ours."""

    content = b""

    def _read_back(self, dir_fd: int, name: str) -> tuple[int, str]:
        if name.endswith(".partial"):
            final = name.removesuffix(".partial")
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444, dir_fd=dir_fd)
            os.write(fd, self.content)
            os.close(fd)
        return super()._read_back(dir_fd, name)


@pytest.mark.parametrize("same", [True, False])
def test_publish_race_is_resolved_by_comparing(tmp_path: Path, same: bool) -> None:
    (tmp_path / "t").mkdir()
    t = _Racer("race", tmp_path / "t")
    src, sha, size = _src(tmp_path, b"clip bytes")
    t.content = b"clip bytes" if same else b"clip BYTES"
    if same:
        assert t.put_file(src, KEY, sha256=sha, size=size).already_present
    else:
        with pytest.raises(DeliveryError, match="different content") as e:
            t.put_file(src, KEY, sha256=sha, size=size)
        assert e.value.retry is False
    assert _all_files(tmp_path / "t") == [KEY]
    assert (tmp_path / "t" / KEY).read_bytes() == t.content


@pytest.mark.parametrize("key", ["../escape.mp4", "/etc/escape.mp4", "a/../../escape.mp4",
                                 "a//b.mp4", "a/./b.mp4", "", "a\\..\\b"])
def test_escaping_keys_are_refused(tmp_path: Path, target: LocalTarget, key: str) -> None:
    src, sha, size = _src(tmp_path, b"x")
    with pytest.raises(DeliveryError, match="refusing key") as e:
        target.put_file(src, key, sha256=sha, size=size)
    assert e.value.retry is False
    with pytest.raises(DeliveryError):
        target.put_bytes(b"x", key)
    assert not (tmp_path / "escape.mp4").exists()
    assert _all_files(target.root) == []


def test_symlinked_directory_inside_root_is_refused(tmp_path: Path, target: LocalTarget) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (target.root / "unit").symlink_to(outside)
    src, sha, size = _src(tmp_path, b"x")
    with pytest.raises(DeliveryError, match="symlink") as e:
        target.put_file(src, "unit/o/clip.mp4", sha256=sha, size=size)
    assert e.value.retry is False
    assert list(outside.iterdir()) == []
    with pytest.raises(DeliveryError, match="symlink"):
        target.verify("unit/o/clip.mp4", sha256=sha, size=size)


def test_symlink_at_final_name_is_refused(tmp_path: Path, target: LocalTarget) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"x")
    (target.root / "d").mkdir()
    (target.root / "d" / "clip.mp4").symlink_to(secret)
    src, sha, size = _src(tmp_path, b"x")
    with pytest.raises(DeliveryError, match="symlink") as e:
        target.put_file(src, "d/clip.mp4", sha256=sha, size=size)
    assert e.value.retry is False


def test_missing_root_is_created_by_default(tmp_path: Path) -> None:
    t = LocalTarget("work", tmp_path / "new" / "target")
    with pytest.raises(DeliveryError, match="does not exist") as e:
        t.verify(KEY, sha256="0" * 64, size=0)  # reading never creates anything
    assert e.value.retry is True
    assert not (tmp_path / "new").exists()
    assert not t.put_bytes(b"x", "a/b").already_present
    assert (tmp_path / "new" / "target" / "a" / "b").read_bytes() == b"x"


def test_missing_mount_point_is_retryable(tmp_path: Path) -> None:
    t = LocalTarget("nfs", tmp_path / "not-mounted", create_root=False)
    src, sha, size = _src(tmp_path, b"x")
    with pytest.raises(DeliveryError, match="does not exist") as e:
        t.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.retry is True
    assert not (tmp_path / "not-mounted").exists()


class _FullDisk(LocalTarget):
    def _copy(self, src_fd: int, dst_fd: int, src_name: str) -> tuple[int, str]:
        os.write(dst_fd, b"some")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_no_space_is_retryable_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    t = _FullDisk("full", tmp_path / "t")
    src, sha, size = _src(tmp_path, b"x" * 100)
    with pytest.raises(DeliveryError, match="ENOSPC") as e:
        t.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.retry is True
    assert _all_files(tmp_path / "t") == []


@pytest.mark.parametrize(("code", "retry", "target_state"), [
    (errno.ENOSPC, True, False), (errno.EIO, True, False), (errno.EDQUOT, True, False),
    (errno.ESTALE, True, False),
    # the target's state (issue #12): retried with backoff and alarmed, never given up
    (errno.EACCES, True, True), (errno.EPERM, True, True), (errno.EROFS, True, True),
    (errno.ENOTDIR, True, True),
    # a name the file system refuses, a symlink: the key would escape; never retried
    (errno.ELOOP, False, False), (errno.ENAMETOOLONG, False, False),
])
def test_os_error_retry_meaning(code: int, retry: bool, target_state: bool) -> None:
    err = os_error_to_delivery(OSError(code, os.strerror(code)), "primary", "k", "write")
    assert (err.retry, err.target_state) == (retry, target_state)
    assert errno.errorcode[code] in str(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_permission_denied_is_the_targets_state(tmp_path: Path, target: LocalTarget) -> None:
    target.root.chmod(0o555)
    try:
        with pytest.raises(DeliveryError) as e:
            target.put_bytes(b"x", "a/b")
        assert e.value.target_state is True and e.value.retry is True
    finally:
        target.root.chmod(0o755)


def test_missing_source_file(tmp_path: Path, target: LocalTarget) -> None:
    with pytest.raises(DeliveryError, match="read source"):
        target.put_file(tmp_path / "gone.mp4", KEY, sha256="0" * 64, size=1)
    assert _all_files(target.root) == []
