"""SftpTarget against a real OpenSSH server on 127.0.0.1 (tests/sshd.py): the put protocol.

Fault tests (host keys, credentials, dropped connections, server restarts) are in
``test_delivery_sftp_faults.py``; error translation without a server is there too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockd.config import Config, TargetConfig
from dockd.delivery.base import StorageTarget
from dockd.delivery.sftp import SftpTarget
from dockd.delivery.targets import open_target
from dockd.errors import DeliveryError
from tests.sshd import SshdMissing, SshdServer

KEY = "110100/0012345/A1234567/2024-05-01/20240501T090000Z_dock-01_port-01_1/clip.mp4"


def start_server(workdir: Path, extra_config: str = "") -> SshdServer:
    try:
        return SshdServer(workdir, extra_config=extra_config).start()
    except SshdMissing as exc:
        pytest.fail(str(exc))


class Targets:
    r"""Makes ``SftpTarget``\ s for a server and closes them all at the end of a test."""

    def __init__(self, server: SshdServer, store: Path):
        self.server, self.store = server, store
        self.made: list[SftpTarget] = []

    def __call__(self, srv: SshdServer | None = None, path: Path | None = None,
                 **kw: object) -> SftpTarget:
        s = srv or self.server
        kw.setdefault("key_file", s.client_key)
        kw.setdefault("known_hosts", s.known_hosts)
        kw.setdefault("chunk_size", 64 * 1024)
        t = SftpTarget("primary", host=s.host, port=s.port, user=s.user,
                       path=str(path or self.store), **kw)  # type: ignore[arg-type]
        self.made.append(t)
        return t

    def close(self) -> None:
        for t in self.made:
            t.close()


def new_store(server: SshdServer, tmp_path: Path) -> Path:
    """A fresh base directory on a (module-wide) server for one test."""
    d = server.root / tmp_path.name
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    s = start_server(tmp_path_factory.mktemp("sshd"))
    yield s
    s.stop()


@pytest.fixture
def store(server: SshdServer, tmp_path: Path) -> Path:
    return new_store(server, tmp_path)


@pytest.fixture
def make_target(server: SshdServer, store: Path) -> Iterator[Targets]:
    targets = Targets(server, store)
    yield targets
    targets.close()


def src_file(tmp_path: Path, data: bytes, name: str = "src.bin") -> tuple[Path, str, int]:
    p = tmp_path / name
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest(), len(data)


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def test_put_verify_stat_and_read_only(tmp_path: Path, store: Path,
                                       make_target: Targets) -> None:
    target = make_target()
    assert isinstance(target, StorageTarget)
    data = os.urandom(300_000)
    src, sha, size = src_file(tmp_path, data)
    r = target.put_file(src, KEY, sha256=sha, size=size)
    assert (r.key, r.size, r.sha256, r.already_present) == (KEY, size, sha, False)
    final = store / KEY
    assert final.read_bytes() == data
    assert stat.S_IMODE(final.stat().st_mode) == 0o444
    assert all_files(store) == [KEY]  # no partial left behind
    assert target.verify(KEY, sha256=sha, size=size)
    assert not target.verify(KEY, sha256="0" * 64, size=size)
    assert not target.verify(KEY, sha256=sha, size=size + 1)
    assert not target.verify("u/o/s/d/missing.mp4", sha256=sha, size=size)
    st = target.stat(KEY)
    assert st is not None and (st.key, st.size, st.sha256) == (KEY, size, None)
    assert target.stat(KEY.rsplit("/", 1)[0] + "/missing.mp4") is None
    assert target.stat("not/there/at/all.mp4") is None
    doc = target.put_bytes(b'{"a": 1}', "110100/manifest.json")
    assert doc.sha256 == hashlib.sha256(b'{"a": 1}').hexdigest()
    assert (store / "110100/manifest.json").read_bytes() == b'{"a": 1}'
    assert target.put_bytes(b"", "empty.txt").size == 0
    assert target.verify("empty.txt", sha256=hashlib.sha256(b"").hexdigest(), size=0)


def test_describe_names_no_secret(make_target: Targets, server: SshdServer) -> None:
    d = make_target().describe()
    assert server.host in d and str(server.port) in d and "known_hosts" in d
    assert str(server.client_key) not in d and "PRIVATE" not in d


def test_re_put_is_idempotent(tmp_path: Path, store: Path,
                              make_target: Targets) -> None:
    target = make_target()
    src, sha, size = src_file(tmp_path, b"evidence" * 1000)
    target.put_file(src, KEY, sha256=sha, size=size)
    inode = (store / KEY).stat().st_ino
    r = target.put_file(src, KEY, sha256=sha, size=size)
    assert r.already_present
    assert (store / KEY).stat().st_ino == inode
    assert all_files(store) == [KEY]
    assert target.put_bytes(b"doc", "a/b.json").already_present is False
    assert target.put_bytes(b"doc", "a/b.json").already_present is True


@pytest.mark.parametrize("other", [b"tampered", b"much longer content"])
def test_conflicting_content_is_never_overwritten(tmp_path: Path, store: Path,
                                                  make_target: Targets,
                                                  other: bytes) -> None:
    target = make_target()
    src, sha, size = src_file(tmp_path, b"original")
    target.put_file(src, KEY, sha256=sha, size=size)
    o, sha2, size2 = src_file(tmp_path, other, "other.bin")
    with pytest.raises(DeliveryError, match="already exists with different content") as e:
        target.put_file(o, KEY, sha256=sha2, size=size2)
    assert e.value.retry is False
    assert (store / KEY).read_bytes() == b"original"
    assert all_files(store) == [KEY]


def test_stale_partial_is_replaced(tmp_path: Path, store: Path,
                                   make_target: Targets) -> None:
    stale = store / (KEY + ".partial")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"junk from a dropped connection")
    stale.chmod(0o444)
    src, sha, size = src_file(tmp_path, os.urandom(5000))
    make_target().put_file(src, KEY, sha256=sha, size=size)
    assert all_files(store) == [KEY]
    assert hashlib.sha256((store / KEY).read_bytes()).hexdigest() == sha


def test_partial_left_beside_a_published_file_is_cleaned(tmp_path: Path, store: Path,
                                                         make_target: Targets) -> None:
    target = make_target()
    src, sha, size = src_file(tmp_path, b"clip")
    target.put_file(src, KEY, sha256=sha, size=size)
    (store / (KEY + ".partial")).write_bytes(b"clip")  # crash between link and remove
    assert target.put_file(src, KEY, sha256=sha, size=size).already_present
    assert all_files(store) == [KEY]


def test_source_not_matching_its_digest_is_refused(tmp_path: Path, store: Path,
                                                   make_target: Targets) -> None:
    target = make_target()
    src, sha, size = src_file(tmp_path, b"what the recorder had")
    src.write_bytes(b"what the recorder has")  # same size, other bytes
    with pytest.raises(DeliveryError, match="source for") as e:
        target.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.retry is False
    assert all_files(store) == []
    with pytest.raises(DeliveryError, match="64 lowercase hex"):
        target.put_file(src, KEY, sha256="XYZ", size=size)


@pytest.mark.parametrize("key", ["../escape.mp4", "/etc/passwd", "a/../../b.mp4", "a//b.mp4",
                                 "a/./b.mp4", "", "a\\b.mp4", "a/b/"])
def test_keys_that_escape_are_refused(tmp_path: Path, store: Path, make_target: Targets,
                                      key: str) -> None:
    src, sha, size = src_file(tmp_path, b"x")
    target = make_target()
    with pytest.raises(DeliveryError, match="refusing key") as e:
        target.put_file(src, key, sha256=sha, size=size)
    assert e.value.retry is False
    with pytest.raises(DeliveryError, match="refusing key"):
        target.verify(key, sha256=sha, size=size)
    assert all_files(store) == []
    assert not (store.parent / "escape.mp4").exists() and not Path("/b.mp4").exists()


def test_symlinks_inside_the_target_are_refused(tmp_path: Path, store: Path,
                                                make_target: Targets) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store / "110100").symlink_to(outside)
    src, sha, size = src_file(tmp_path, b"x")
    target = make_target()
    with pytest.raises(DeliveryError, match="symlink") as e:
        target.put_file(src, "110100/clip.mp4", sha256=sha, size=size)
    assert e.value.retry is False
    assert list(outside.iterdir()) == []
    (store / "link.mp4").symlink_to(outside / "target.mp4")
    with pytest.raises(DeliveryError, match="symlink or not a regular file") as e:
        target.put_file(src, "link.mp4", sha256=sha, size=size)
    assert e.value.retry is False
    assert list(outside.iterdir()) == []


def test_missing_base_directory_is_retryable(tmp_path: Path, store: Path,
                                             make_target: Targets) -> None:
    target = make_target(path=store / "not-mounted")
    src, sha, size = src_file(tmp_path, b"x")
    with pytest.raises(DeliveryError, match="does not exist on the server") as e:
        target.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.retry is True


@pytest.mark.parametrize("verify", ["readback", "checksum"])
def test_verify_catches_a_corrupted_server_copy(tmp_path: Path, store: Path,
                                                make_target: Targets,
                                                verify: str) -> None:
    target = make_target(verify=verify)
    data = os.urandom(200_000)
    src, sha, size = src_file(tmp_path, data)
    target.put_file(src, KEY, sha256=sha, size=size)
    assert target.verify(KEY, sha256=sha, size=size)
    final = store / KEY
    final.chmod(0o644)
    with open(final, "r+b") as f:  # the store flips one byte, size unchanged
        f.seek(12345)
        f.write(bytes([data[12345] ^ 0xFF]))
    assert not target.verify(KEY, sha256=sha, size=size)
    # and a re-put refuses to overwrite what is there (the queue alarms; nothing is lost)
    with pytest.raises(DeliveryError, match="different content") as e:
        target.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.retry is False
    assert target.stats.bytes_checked > 0


def test_checksum_without_a_shell_falls_back_to_readback(
        tmp_path: Path, make_target: Targets, caplog: pytest.LogCaptureFixture) -> None:
    sftp_only = start_server(tmp_path / "sshd-sftp-only",
                             extra_config="ForceCommand internal-sftp\n")
    try:
        target = make_target(srv=sftp_only, path=sftp_only.root, verify="checksum",
                             io_timeout=10.0)
        src, sha, size = src_file(tmp_path, os.urandom(100_000))
        with caplog.at_level(logging.WARNING, logger="dockd.delivery.sftp"):
            assert not target.put_file(src, KEY, sha256=sha, size=size).already_present
        assert "verifying by read-back instead" in caplog.text
        assert target.verify(KEY, sha256=sha, size=size)
        assert all_files(sftp_only.root) == [KEY]
        target.close()
    finally:
        sftp_only.stop()


def test_parallel_puts_from_threads_share_one_connection(
        tmp_path: Path, store: Path, server: SshdServer, make_target: Targets) -> None:
    target = make_target(max_concurrency=3)
    sources = [src_file(tmp_path, os.urandom(50_000 + i), f"s{i}.bin") for i in range(8)]
    errors: list[BaseException] = []
    accepted_before = server.log_tail(10**7).count("Accepted publickey")

    def worker(items: list[tuple[Path, str, int]]) -> None:
        try:
            same, same_sha, same_size = sources[0]  # every thread also delivers one key
            target.put_file(same, "d/same.bin", sha256=same_sha, size=same_size)
            for p, sha, size in items:
                target.put_file(p, f"d/{p.name}", sha256=sha, size=size)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(sources[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert all_files(store) == sorted(["d/same.bin"] + [f"d/s{i}.bin" for i in range(8)])
    for p, sha, size in sources:
        assert target.verify(f"d/{p.name}", sha256=sha, size=size)
    assert server.log_tail(10**7).count("Accepted publickey") == accepted_before + 1


def test_open_target_builds_an_sftp_target(server: SshdServer, store: Path) -> None:
    t = TargetConfig(name="offsite", kind="sftp", host=server.host, port=server.port,
                     user=server.user, key_file=str(server.client_key),
                     known_hosts=str(server.known_hosts), path=store, required=False,
                     verify="checksum", max_concurrency=2)
    target = open_target(t, Config())
    try:
        assert isinstance(target, SftpTarget)
        assert (target.name, target.required, target.verify_mode, target.max_concurrency) \
            == ("offsite", False, "checksum", 2)
        assert target.put_bytes(b"k", "_keys/a.pub").already_present is False
    finally:
        target.close()


def test_bandwidth_throttle_sees_every_chunk(tmp_path: Path, store: Path,
                                             make_target: Targets) -> None:
    target = make_target()  # 64 KiB chunks
    seen: list[int] = []
    target.throttle = seen.append
    src, sha, size = src_file(tmp_path, os.urandom(300_000))
    target.put_file(src, KEY, sha256=sha, size=size)
    assert sum(seen) == size and max(seen) == 64 * 1024
    assert target.stats.files == 1 and target.stats.bytes_sent == size
