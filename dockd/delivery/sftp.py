"""A storage target that is a directory on an SFTP server (OpenSSH or compatible).

Connection: asyncssh, driven from a private event-loop thread (``sftp_io.LoopThread``), one
connection reused by every call and re-opened after a failure (a call that fails on a
connection opened by an earlier call is retried once on a fresh one). Host keys are checked
against the configured ``known_hosts`` file only (no ``~/.ssh/config``, no agent, no
auto-accept); authentication is by the configured private key only (no passwords, no
keyboard-interactive, no GSS). The preferred cipher is AES-128-GCM (hardware AES, no
separate MAC), compression is off (clips are already compressed).

Each put, like the local backend (``dockd.delivery.local``):

1. checks the key (``split_key``: no absolute path, ``..``, empty component) and walks to
   its directory under the base path with ``lstat`` at every level, creating missing
   directories 0755 and refusing a symlink or non-directory on the way;
2. returns ``already_present`` if the final file exists with the same size and SHA-256,
   and refuses (``retry=False``) if it exists with other content (a different size is
   refused without reading it);
3. replaces a stale ``<name>.partial`` and writes a new one (``O_EXCL``, 0600) while hashing
   the source, with reads, hashing and SFTP writes overlapped (``sftp_io.send_stream``),
   refusing a source that does not match the expected size/SHA-256;
4. makes it read-only (0444) and ``fsync``\\ s it (``fsync@openssh.com``, where offered);
5. checks what landed: ``verify = "readback"`` re-reads the partial over SFTP and hashes it;
   ``verify = "checksum"`` runs ``sha256sum`` on the server over an exec channel (OpenSSH's
   sftp-server has no ``check-file``), falling back to read-back when the account may not
   run commands;
6. publishes it with a hard link ``hardlink@openssh.com(partial, final)``, which fails if
   the final name exists (then the two are compared and ours is dropped), and removes the
   partial. Why a link and not ``posix-rename@openssh.com``: posix-rename overwrites, so
   "check, then rename" leaves a window in which a copy that appeared meanwhile would be
   replaced; link is atomic and never overwrites, and the published inode is the very one
   that was fsync'ed and verified. Servers without the extension get the plain SFTP
   ``rename``, which by protocol (v3) fails if the target exists (OpenSSH implements it
   with link+unlink), after an existence check.

A failure leaves nothing under the final name (a partial may stay behind if the connection
dropped; the next put of that key replaces it). SFTP cannot fsync a directory, so the new
directory entry is as durable as the server's file system makes it (ext4/xfs journal it
within seconds); ``verify`` before clearing a recorder is the check that counts.
Retention (R7) cannot be enforced over SFTP: the server's own policy (read-only files,
immutable attributes, snapshots) must keep files; ``retention`` is accepted and ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

import asyncssh

from .. import secrets
from ..config import Config, TargetConfig
from ..errors import DeliveryError
from ..secrets import SecretFileError, read_secret, read_text_secret
from . import sftp_io
from .base import (
    Receipt,
    RemoteObject,
    Retention,
    check_digest,
    existing_receipt,
    os_error_to_delivery,
)
from .layout import PARTIAL_SUFFIX, split_key

log = logging.getLogger(__name__)

T = TypeVar("T")

CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
           "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr")
"""Preferred first: AES-GCM is the cheapest on CPUs with AES instructions (2-core docks)."""
CHUNK_SIZE = 1024 * 1024
CHUNKS_IN_FLIGHT = 8
REQUESTS_PER_CHUNK = 8
HASH_RATE_FLOOR = 20e6
"""Bytes/s the server's sha256sum is allowed at worst before the remote check times out."""


@dataclass
class SftpStats:
    """Running totals, for throughput figures (bench, deadline forecast)."""

    files: int = 0
    bytes_sent: int = 0
    send_seconds: float = 0.0
    """Time writing partials: read + hash + transfer + fsync (sums over parallel puts)."""
    bytes_checked: int = 0
    check_seconds: float = 0.0
    """Time verifying what landed (read-back or remote hash)."""


class SftpTarget:
    """A directory on an SFTP server. Implements ``StorageTarget``."""

    def __init__(self, name: str, *, host: str, user: str, key_file: str | Path,
                 known_hosts: str | Path, path: str | PurePosixPath, port: int = 22,
                 passphrase_file: str | Path = "",
                 required: bool = True, verify: str = "readback", max_concurrency: int = 4,
                 connect_timeout: float = 20.0, io_timeout: float = 60.0,
                 chunk_size: int = CHUNK_SIZE, ciphers: tuple[str, ...] = CIPHERS):
        if verify not in ("readback", "checksum"):
            raise ValueError(f"verify must be 'readback' or 'checksum', not {verify!r}")
        self.name = name
        self.required = required
        self.host = host
        self.port = port
        self.user = user
        self.key_file = str(key_file)
        self.passphrase_file = str(passphrase_file)
        self.known_hosts = str(known_hosts)
        self.base = str(PurePosixPath(path))
        self.verify_mode = verify
        self.max_concurrency = max(1, max_concurrency)
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.chunk_size = chunk_size
        self.ciphers = ciphers
        self.stats = SftpStats()
        self.throttle: Callable[[int], object] | None = None
        """Set by the queue for a bandwidth cap: called with each chunk's size before it is
        sent (from a worker thread; it may block)."""
        self._runner = sftp_io.LoopThread(f"sftp-{name}")
        self._stats_lock = threading.Lock()
        # owned by the loop thread:
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._connecting: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None
        self._dirs: set[str] = set()
        self._hasher: sftp_io.RemoteHasher | None = None
        self._key_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = \
            weakref.WeakValueDictionary()
        """One put per key at a time: puts of one key share the ``.partial`` name."""
        self._remote_hash = verify == "checksum"

    @classmethod
    def from_config(cls, t: TargetConfig, cfg: Config) -> SftpTarget:
        key = secrets.resolve(t.key_file, secrets.credential_name("sftp.key", t.name))
        phrase = secrets.resolve(t.passphrase_file,
                                 secrets.credential_name("sftp.passphrase", t.name))
        return cls(t.name, host=t.host, port=t.port, user=t.user, key_file=key or "",
                   passphrase_file=phrase or "",
                   known_hosts=t.known_hosts, path=PurePosixPath(str(t.path)),
                   required=t.required, verify=t.verify, max_concurrency=t.max_concurrency)

    def describe(self) -> str:
        return (f"sftp {self.user}@{self.host}:{self.port} directory {self.base} "
                f"(verify={self.verify_mode}, known_hosts={self.known_hosts})")

    def __repr__(self) -> str:
        return f"SftpTarget({self.name!r}, {self.describe()!r})"

    def close(self) -> None:
        """Close the connection and stop the loop thread (a later call starts them again)."""
        try:
            self._runner.run(self._disconnect())
        finally:
            self._runner.stop()
            self._connecting = None  # asyncio primitives belong to the stopped loop
            self._slots = None
            self._key_locks = weakref.WeakValueDictionary()

    # ------------------------------------------------------------------ public operations

    def put_file(self, local_path: Path, key: str, *, sha256: str, size: int,
                 retention: Retention | None = None) -> Receipt:
        check_digest(sha256, size)
        parts = self._parts(key)
        try:
            src = open(local_path, "rb")  # noqa: SIM115 - closed below, after the loop ran
        except OSError as exc:
            raise os_error_to_delivery(exc, self.name, str(local_path),
                                               "read source") from exc
        with src:
            return self._call(key, "deliver", lambda sftp: self._put(
                sftp, parts, key, sha256, size, lambda: sftp_io.FileSource(src)))

    def put_bytes(self, data: bytes, key: str, *,
                  retention: Retention | None = None) -> Receipt:
        parts = self._parts(key)
        sha256 = hashlib.sha256(data).hexdigest()
        return self._call(key, "deliver", lambda sftp: self._put(
            sftp, parts, key, sha256, len(data), lambda: sftp_io.BytesSource(data)))

    def stat(self, key: str) -> RemoteObject | None:
        parts = self._parts(key)

        async def op(sftp: asyncssh.SFTPClient) -> RemoteObject | None:
            final = await self._existing_final(sftp, parts, key)
            if final is None:
                return None
            return RemoteObject(key=key, size=final[1].size or 0, sha256=None)

        return self._call(key, "stat", op)

    def verify(self, key: str, *, sha256: str, size: int) -> bool:
        parts = self._parts(key)

        async def op(sftp: asyncssh.SFTPClient) -> bool:
            final = await self._existing_final(sftp, parts, key)
            found: tuple[int, str] | None = None
            if final is not None:
                path, attrs = final
                found = (attrs.size or 0, "?")
                if attrs.size == size:
                    found = await self._hash_landed(sftp, path, size)
            if found != (size, sha256):
                log.warning("%s: %s does not verify (expected %d bytes %s, found %s)",
                            self.name, key, size, sha256, found)
                return False
            return True

        return self._call(key, "verify", op)

    # ------------------------------------------------------------------ connection

    def _parts(self, key: str) -> list[str]:
        try:
            return split_key(key)
        except ValueError as exc:
            raise DeliveryError(f"{self.name}: refusing key: {exc}", retry=False) from exc

    def _translate(self, exc: BaseException, where: str, action: str) -> DeliveryError:
        return sftp_io.translate(exc, target=self.name, where=where, action=action,
                                 known_hosts=self.known_hosts, user=self.user,
                                 key_file=self.key_file)

    def _call(self, key: str, action: str,
              op: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        return self._runner.run(self._with_client(key, action, op))

    async def _with_client(self, key: str, action: str,
                           op: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        async with self._slots:
            for attempt in (1, 2):
                sftp, fresh = await self._client(key, action)
                try:
                    return await op(sftp)
                except DeliveryError:
                    raise
                except (asyncssh.Error, OSError, TimeoutError) as exc:
                    err = self._translate(exc, key, action)
                    if not sftp_io.is_connection_error(exc):
                        raise err from exc
                    if sftp is self._sftp:  # not already replaced by a parallel call
                        await self._disconnect()
                    if fresh or attempt == 2:
                        raise err from exc
                    log.info("%s: connection to %s:%d was lost (%s); reconnecting",
                             self.name, self.host, self.port, err)
            raise AssertionError("unreachable")  # pragma: no cover

    async def _client(self, key: str, action: str) -> tuple[asyncssh.SFTPClient, bool]:
        """The SFTP client, connecting first if needed; (client, connected just now)."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._sftp is not None and self._conn is not None and not self._conn.is_closed():
                return self._sftp, False
            await self._disconnect()
            if not Path(self.known_hosts).is_file():
                raise DeliveryError(f"{self.name}: known_hosts file {self.known_hosts} does not "
                                    "exist; refusing to connect without host-key checking",
                                    target_state=True)
            client_key = self._load_key()
            try:
                self._conn = await asyncssh.connect(
                    self.host, self.port, username=self.user, config=None,
                    known_hosts=self.known_hosts, client_keys=[client_key],
                    agent_path=None, password=None, preferred_auth="publickey",
                    password_auth=False, kbdint_auth=False, gss_auth=False,
                    host_based_auth=False, encryption_algs=list(self.ciphers),
                    compression_algs=["none"], connect_timeout=self.connect_timeout,
                    keepalive_interval=15, keepalive_count_max=4)
                self._sftp = await asyncio.wait_for(self._conn.start_sftp_client(),
                                                    self.io_timeout)
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                await self._disconnect()
                raise self._translate(exc, f"{self.host}:{self.port}", "connect to") from exc
            log.info("%s: connected to %s@%s:%d (sftp version %d)", self.name, self.user,
                     self.host, self.port, self._sftp.version)
            return self._sftp, True

    def _load_key(self) -> asyncssh.SSHKey:
        """The private key, from a file others may not read (:mod:`dockd.secrets`), with its
        passphrase when one is configured; both registered for log redaction."""
        try:
            data = read_secret(Path(self.key_file), "SFTP private key")
            phrase = (read_text_secret(Path(self.passphrase_file), "SFTP key passphrase")
                      if self.passphrase_file else None)
            return asyncssh.import_private_key(data, phrase)
        except SecretFileError as exc:
            raise DeliveryError(f"{self.name}: cannot load the private key file "
                                f"{self.key_file}: {exc}", target_state=True) from exc
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError) as exc:
            reason = ("wrong or missing passphrase" if isinstance(exc, asyncssh.KeyEncryptionError)
                      or "passphrase" in str(exc).lower() else "not a private key")
            raise DeliveryError(f"{self.name}: cannot load the private key file "
                                f"{self.key_file} ({reason})", target_state=True) from exc

    async def _disconnect(self) -> None:
        conn, self._conn, self._sftp = self._conn, None, None
        self._dirs.clear()
        if self._hasher is not None:
            self._hasher.close()
            self._hasher = None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                log.debug("%s: closing the connection: %s", self.name, exc)

    # ------------------------------------------------------------------ the put protocol

    async def _put(self, sftp: asyncssh.SFTPClient, parts: list[str], key: str, sha256: str,
                   size: int, source: Callable[[], sftp_io.Source]) -> Receipt:
        lock = self._key_locks.setdefault(key, asyncio.Lock())
        async with lock:
            return await self._put_locked(sftp, parts, key, sha256, size, source)

    async def _put_locked(self, sftp: asyncssh.SFTPClient, parts: list[str], key: str,
                          sha256: str, size: int,
                          source: Callable[[], sftp_io.Source]) -> Receipt:
        directory = await self._directory(sftp, parts, key, create=True)
        assert directory is not None
        final = f"{directory}/{parts[-1]}"
        partial = final + PARTIAL_SUFFIX
        existing = await self._final_attrs(sftp, final, key)
        if existing is not None:
            await sftp_io.remove_quiet(sftp, partial, self.io_timeout)
            return await self._compare(sftp, final, existing, key, sha256, size)
        try:
            await sftp_io.remove_quiet(sftp, partial, self.io_timeout)
            await self._write_partial(sftp, partial, key, sha256, size, source())
            landed = await self._hash_landed(sftp, partial, size)
            if landed != (size, sha256):
                raise DeliveryError(f"{self.name}: {key} landed as {landed[0]} bytes "
                                    f"{landed[1]}, expected {size} bytes {sha256}", retry=True)
            return await self._publish(sftp, partial, final, key, sha256, size)
        except BaseException:
            if self._conn is not None and not self._conn.is_closed():
                await asyncio.shield(sftp_io.remove_quiet(sftp, partial, self.io_timeout))
            raise

    async def _write_partial(self, sftp: asyncssh.SFTPClient, partial: str, key: str,
                             sha256: str, size: int, source: sftp_io.Source) -> None:
        started = time.perf_counter()
        block = sftp.limits.max_write_len or sftp_io.SAFE_LEN
        rfile = await asyncio.wait_for(sftp.open(
            partial, asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL,
            asyncssh.SFTPAttrs(permissions=0o600), encoding=None, block_size=block,
            max_requests=REQUESTS_PER_CHUNK), self.io_timeout)
        try:
            written = await sftp_io.send_stream(
                rfile, source, chunk_size=_aligned(self.chunk_size, block),
                chunks_in_flight=CHUNKS_IN_FLIGHT,
                timeout=self.io_timeout, throttle=self.throttle)
            if written != (size, sha256):
                raise DeliveryError(
                    f"{self.name}: source for {key} is {written[0]} bytes {written[1]}, "
                    f"expected {size} bytes {sha256}; not delivered", retry=False)
            await asyncio.wait_for(rfile.chmod(0o444), self.io_timeout)
            try:
                await asyncio.wait_for(rfile.fsync(), self.io_timeout + size / 50e6)
            except asyncssh.SFTPOpUnsupported:
                log.debug("%s: server does not offer fsync@openssh.com", self.name)
        finally:
            await asyncio.shield(asyncio.wait_for(rfile.close(), self.io_timeout))
        with self._stats_lock:
            self.stats.bytes_sent += size
            self.stats.send_seconds += time.perf_counter() - started

    async def _publish(self, sftp: asyncssh.SFTPClient, partial: str, final: str, key: str,
                       sha256: str, size: int) -> Receipt:
        try:
            await asyncio.wait_for(sftp.link(partial, final), self.io_timeout)
        except asyncssh.SFTPOpUnsupported:
            # no hardlink@openssh.com: SFTP v3 rename never overwrites; check first anyway
            if await self._final_attrs(sftp, final, key) is None:
                await asyncio.wait_for(sftp.rename(partial, final), self.io_timeout)
            else:
                return await self._lost_race(sftp, partial, final, key, sha256, size)
        except asyncssh.SFTPError as exc:
            if exc.code in sftp_io.CONNECTION_CODES:
                raise
            # EEXIST arrives as FX_FAILURE (OpenSSH) or FX_FILE_ALREADY_EXISTS (v5+)
            if await self._final_attrs(sftp, final, key) is None:
                raise
            return await self._lost_race(sftp, partial, final, key, sha256, size)
        else:
            await sftp_io.remove_quiet(sftp, partial, self.io_timeout)
        with self._stats_lock:
            self.stats.files += 1
        log.info("%s: delivered %s (%d bytes, sha256 %s)", self.name, key, size, sha256)
        # the partial was checked (``_hash_landed``, as ``verify`` does) after fsync, and the
        # link / rename published that very inode
        return Receipt(key=key, size=size, sha256=sha256, already_present=False, verified=True)

    async def _lost_race(self, sftp: asyncssh.SFTPClient, partial: str, final: str, key: str,
                         sha256: str, size: int) -> Receipt:
        """``final`` appeared while we wrote: it wins; ours is dropped after comparing."""
        await sftp_io.remove_quiet(sftp, partial, self.io_timeout)
        existing = await self._final_attrs(sftp, final, key)
        if existing is None:
            raise DeliveryError(f"{self.name}: {key} appeared and vanished while publishing",
                                retry=True)
        return await self._compare(sftp, final, existing, key, sha256, size)

    async def _compare(self, sftp: asyncssh.SFTPClient, final: str,
                       attrs: asyncssh.SFTPAttrs, key: str, sha256: str,
                       size: int) -> Receipt:
        found: tuple[int, str] = (attrs.size or 0, "(not read: size differs)")
        if attrs.size == size:
            found = await self._hash_landed(sftp, final, size)
        return existing_receipt(self.name, key, found, sha256=sha256, size=size,
                                verified=True)

    # ------------------------------------------------------------------ remote helpers

    async def _directory(self, sftp: asyncssh.SFTPClient, parts: list[str], key: str, *,
                         create: bool) -> str | None:
        """The remote directory of ``key`` (created if ``create``); None if absent."""
        if self.base not in self._dirs:
            try:
                base = await asyncio.wait_for(sftp.stat(self.base), self.io_timeout)
            except asyncssh.SFTPNoSuchFile:
                raise DeliveryError(f"{self.name}: base directory {self.base} does not exist "
                                    "on the server (storage not mounted?)", retry=True) from None
            if not sftp_io.is_dir(base):
                raise DeliveryError(f"{self.name}: base path {self.base} on the server is not "
                                    "a directory", retry=False)
            self._dirs.add(self.base)
        path = self.base
        for part in parts[:-1]:
            path = f"{path}/{part}"
            if path in self._dirs:
                continue
            attrs = await sftp_io.lstat_or_none(sftp, path, self.io_timeout)
            if attrs is None:
                if not create:
                    return None
                try:
                    await asyncio.wait_for(
                        sftp.mkdir(path, asyncssh.SFTPAttrs(permissions=0o755)),
                        self.io_timeout)
                except asyncssh.SFTPFailure:
                    pass  # created by a parallel put in between; checked below
                attrs = await asyncio.wait_for(sftp.lstat(path), self.io_timeout)
            if not sftp_io.is_dir(attrs):
                raise DeliveryError(f"{self.name}: refusing key {key}: {part!r} is a symlink "
                                    "or not a directory inside the target", retry=False)
            self._dirs.add(path)
        return path

    async def _final_attrs(self, sftp: asyncssh.SFTPClient, final: str,
                           key: str) -> asyncssh.SFTPAttrs | None:
        attrs = await sftp_io.lstat_or_none(sftp, final, self.io_timeout)
        if attrs is not None and not sftp_io.is_regular(attrs):
            raise DeliveryError(f"{self.name}: {key} is a symlink or not a regular file on "
                                "the server; refusing", retry=False)
        return attrs

    async def _existing_final(self, sftp: asyncssh.SFTPClient, parts: list[str],
                              key: str) -> tuple[str, asyncssh.SFTPAttrs] | None:
        directory = await self._directory(sftp, parts, key, create=False)
        if directory is None:
            return None
        final = f"{directory}/{parts[-1]}"
        attrs = await self._final_attrs(sftp, final, key)
        return None if attrs is None else (final, attrs)

    async def _hash_landed(self, sftp: asyncssh.SFTPClient, path: str,
                           size: int) -> tuple[int, str]:
        """(size, SHA-256) of a remote file: the server's sha256sum or a read-back."""
        started = time.perf_counter()
        found = await self._remote_sha256(path, size) if self._remote_hash else None
        if found is None:
            block = sftp.limits.max_read_len or sftp_io.SAFE_LEN
            rfile = await asyncio.wait_for(
                sftp.open(path, asyncssh.FXF_READ, encoding=None, block_size=block,
                          max_requests=REQUESTS_PER_CHUNK), self.io_timeout)
            try:
                found = await sftp_io.hash_remote(
                    rfile, chunk_size=_aligned(self.chunk_size, block), timeout=self.io_timeout)
            finally:
                await asyncio.shield(asyncio.wait_for(rfile.close(), self.io_timeout))
        with self._stats_lock:
            self.stats.bytes_checked += found[0]
            self.stats.check_seconds += time.perf_counter() - started
        return found

    async def _remote_sha256(self, path: str, size: int) -> tuple[int, str] | None:
        """(size, SHA-256) computed by the server; None, and read-back from then on, if
        this account cannot run commands."""
        if self._conn is None:
            return None
        if self._hasher is None:
            self._hasher = sftp_io.RemoteHasher(self._conn)
        found = await self._hasher.sha256(path, self.io_timeout + size / HASH_RATE_FLOOR)
        if found is None and self._hasher.broken is not None:
            log.warning("%s: cannot hash files on %s (%s); verifying by read-back instead",
                        self.name, self.host, self._hasher.broken)
            self._remote_hash = False
        return found


def _aligned(chunk_size: int, block: int) -> int:
    """``chunk_size`` rounded down to whole SFTP requests (no short request per chunk)."""
    return max(1, chunk_size // block) * block if chunk_size >= block else chunk_size
