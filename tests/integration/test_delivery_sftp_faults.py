"""SftpTarget faults: host keys, credentials, dropped connections, server down and back,
and the translation of SSH/SFTP errors into retry meanings."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from dockd.delivery import sftp_io
from dockd.delivery.sftp import SftpTarget
from dockd.errors import DeliveryError
from tests.integration.test_delivery_sftp import (
    KEY,
    Targets,
    all_files,
    new_store,
    src_file,
    start_server,
)
from tests.sshd import SshdServer, free_port, known_hosts_line, ssh_keygen

BIG = 48 * 1024 * 1024
"""Large enough that an upload is still running when the test cuts it (loopback, 2 cores)."""


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


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[SshdServer]:
    """A server of this test's own, which it may stop and restart."""
    s = start_server(tmp_path / "sshd-own")
    yield s
    s.stop()


def wait_for_path(path: Path, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.002)


class Upload(threading.Thread):
    """``put_file`` in a thread; the outcome in ``.error`` / ``.receipt``."""

    def __init__(self, target: SftpTarget, src: Path, sha: str, size: int):
        super().__init__(daemon=True)
        self.args_ = (target, src, sha, size)
        self.error: BaseException | None = None
        self.receipt: object = None

    def run(self) -> None:
        target, src, sha, size = self.args_
        try:
            self.receipt = target.put_file(src, KEY, sha256=sha, size=size)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc


# --------------------------------------------------------------------------- host keys


def test_unknown_host_key_is_refused(tmp_path: Path, server: SshdServer, store: Path,
                                     make_target: Targets) -> None:
    other = ssh_keygen(tmp_path / "other_host_key")
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts_line("192.0.2.1", 22, Path(f"{other}.pub")))  # another host only
    target = make_target(known_hosts=kh)
    src, sha, size = src_file(tmp_path, b"x")
    with pytest.raises(DeliveryError, match="host key") as e:
        target.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.target_state is True
    assert str(kh) in str(e.value)
    assert all_files(store) == []


def test_changed_host_key_is_refused(tmp_path: Path, server: SshdServer, store: Path,
                                     make_target: Targets) -> None:
    other = ssh_keygen(tmp_path / "impostor_key")
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts_line(server.host, server.port, Path(f"{other}.pub")))
    target = make_target(known_hosts=kh)
    with pytest.raises(DeliveryError, match="changed host key") as e:
        target.stat(KEY)
    assert e.value.target_state is True and str(kh) in str(e.value)


def test_missing_known_hosts_file_is_refused(tmp_path: Path,
                                             make_target: Targets) -> None:
    target = make_target(known_hosts=tmp_path / "nope")
    with pytest.raises(DeliveryError, match="known_hosts file .*nope does not exist") as e:
        target.stat(KEY)
    assert e.value.target_state is True


# --------------------------------------------------------------------------- credentials


def test_key_not_authorized_is_refused(tmp_path: Path,
                                       make_target: Targets) -> None:
    stranger = ssh_keygen(tmp_path / "stranger")
    target = make_target(key_file=stranger)
    with pytest.raises(DeliveryError, match="refused key authentication") as e:
        target.stat(KEY)
    assert e.value.target_state is True
    assert "PRIVATE KEY" not in str(e.value)


@pytest.mark.parametrize("content", [None, b"not a key\n"])
def test_unreadable_key_file_is_refused(tmp_path: Path, make_target: Targets,
                                        content: bytes | None) -> None:
    key = tmp_path / "id_bad"
    if content is not None:
        key.write_bytes(content)
        key.chmod(0o600)
    target = make_target(key_file=key)
    with pytest.raises(DeliveryError, match="cannot load the private key file") as e:
        target.stat(KEY)
    assert e.value.target_state is True


# --------------------------------------------------------------------------- network


def test_server_down_is_retryable(tmp_path: Path, server: SshdServer) -> None:
    target = SftpTarget("primary", host="127.0.0.1", port=free_port(), user=server.user,
                        key_file=server.client_key, known_hosts=server.known_hosts,
                        path="/srv", connect_timeout=5)
    try:
        src, sha, size = src_file(tmp_path, b"x")
        started = time.monotonic()
        with pytest.raises(DeliveryError, match="cannot connect to") as e:
            target.put_file(src, KEY, sha256=sha, size=size)
        assert e.value.retry is True
        assert time.monotonic() - started < 5
    finally:
        target.close()


def test_stale_connection_is_replaced_transparently(tmp_path: Path, server: SshdServer,
                                                    store: Path,
                                                    make_target: Targets) -> None:
    target = make_target()
    src, sha, size = src_file(tmp_path, b"first")
    target.put_file(src, "a/1.bin", sha256=sha, size=size)
    assert server.kill_sessions() >= 1  # the link drops between two calls
    time.sleep(0.2)
    assert target.put_file(src, "a/2.bin", sha256=sha, size=size).already_present is False
    assert all_files(store) == ["a/1.bin", "a/2.bin"]


def test_connection_killed_mid_upload_never_shows_a_partial(
        tmp_path: Path, server: SshdServer, store: Path,
        make_target: Targets) -> None:
    target = make_target(chunk_size=1024 * 1024)
    src, sha, size = src_file(tmp_path, os.urandom(BIG))
    up = Upload(target, src, sha, size)
    up.start()
    wait_for_path(store / (KEY + ".partial"))
    server.kill_sessions()
    up.join(60)
    assert isinstance(up.error, DeliveryError) and up.error.retry is True, up.error
    assert not (store / KEY).exists()  # never under the final name
    r = target.put_file(src, KEY, sha256=sha, size=size)  # reconnects, replaces the partial
    assert r.already_present is False
    assert all_files(store) == [KEY]
    assert target.verify(KEY, sha256=sha, size=size)


def test_link_dropped_mid_upload_on_a_reused_connection_is_retried_once(
        tmp_path: Path, server: SshdServer, store: Path, make_target: Targets) -> None:
    target = make_target(chunk_size=1024 * 1024)
    assert target.stat(KEY) is None  # the connection now exists: the put reuses it
    src, sha, size = src_file(tmp_path, os.urandom(BIG))
    up = Upload(target, src, sha, size)
    up.start()
    wait_for_path(store / (KEY + ".partial"))
    server.kill_sessions()
    up.join(60)
    assert up.error is None  # one transparent retry on a new connection, from byte 0
    assert all_files(store) == [KEY]
    assert target.verify(KEY, sha256=sha, size=size)


def test_server_stopped_mid_upload_then_restarted(tmp_path: Path, own_server: SshdServer,
                                                  make_target: Targets) -> None:
    target = make_target(srv=own_server, path=own_server.root, chunk_size=1024 * 1024)
    src, sha, size = src_file(tmp_path, os.urandom(BIG))
    up = Upload(target, src, sha, size)
    up.start()
    wait_for_path(own_server.root / (KEY + ".partial"))
    own_server.stop()
    up.join(60)
    assert isinstance(up.error, DeliveryError) and up.error.retry is True, up.error
    assert not (own_server.root / KEY).exists()
    with pytest.raises(DeliveryError) as e:  # still down: retryable, and quick
        target.put_file(src, KEY, sha256=sha, size=size)
    assert e.value.retry is True
    own_server.start()  # same port, same host key
    assert target.put_file(src, KEY, sha256=sha, size=size).already_present is False
    assert all_files(own_server.root) == [KEY]
    assert target.put_file(src, KEY, sha256=sha, size=size).already_present is True


# --------------------------------------------------------------------------- translation


def _tr(exc: BaseException) -> DeliveryError:
    return sftp_io.translate(exc, target="t", where="k", action="deliver",
                             known_hosts="/etc/dockd/known_hosts", user="dockd",
                             key_file="/etc/dockd/id")


# the target's state (permission, read-only share, host key, key refused) is retried with
# backoff and alarmed (issue #12); only a store refusing the content is never retried
@pytest.mark.parametrize(("exc", "retry", "words"), [
    (asyncssh.SFTPFailure("No space left on device"), True, "no space"),
    (asyncssh.SFTPFailure("Disk quota exceeded"), True, "no space"),
    (asyncssh.SFTPNoSpaceOnFilesystem("full"), True, "no space"),
    (asyncssh.SFTPQuotaExceeded("quota"), True, "no space"),
    (asyncssh.SFTPFailure("Failure"), True, "Failure"),
    (asyncssh.SFTPPermissionDenied("Permission denied"), True, "Permission denied"),
    (asyncssh.SFTPWriteProtect("read-only"), True, "read-only"),
    (asyncssh.SFTPConnectionLost("lost"), True, "lost"),
    (asyncssh.HostKeyNotVerifiable("Host key is not trusted"), True, "/etc/dockd/known_hosts"),
    (asyncssh.PermissionDenied("Permission denied"), True, "refused key authentication"),
    (asyncssh.KeyExchangeFailed("no matching cipher"), True, "no common"),
    (asyncssh.ConnectionLost("Connection lost"), True, "connection lost"),
    (asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "no"), False,
     "refused the SFTP channel"),
    (asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, "busy"), True, "busy"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), True, "refused"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True, "reset"),
    (TimeoutError(), True, "timed out"),
    (OSError(errno.EACCES, "Permission denied"), True, "Permission denied"),
])
def test_errors_are_translated_with_their_retry_meaning(exc: BaseException, retry: bool,
                                                        words: str) -> None:
    err = _tr(exc)
    assert isinstance(err, DeliveryError)
    assert err.retry is retry
    assert words in str(err)


def test_connection_errors_are_told_apart() -> None:
    assert sftp_io.is_connection_error(asyncssh.ConnectionLost("x"))
    assert sftp_io.is_connection_error(asyncssh.SFTPConnectionLost("x"))
    assert sftp_io.is_connection_error(ConnectionResetError())
    assert sftp_io.is_connection_error(TimeoutError())
    assert not sftp_io.is_connection_error(asyncssh.SFTPFailure("x"))
    assert not sftp_io.is_connection_error(asyncssh.HostKeyNotVerifiable("x"))
    assert not sftp_io.is_connection_error(asyncssh.PermissionDenied("x"))
