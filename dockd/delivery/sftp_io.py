"""Plumbing for the SFTP target: the event-loop thread, error translation, streaming I/O.

``SftpTarget`` (``dockd.delivery.sftp``) is synchronous like every ``StorageTarget``; it
drives asyncssh on one private event loop that runs in a daemon thread (``LoopThread``).
Callers on any thread submit coroutines and block on the answer, so one SSH connection
serves every thread, and several uploads can share it at once.

Streaming (``send_stream``, ``hash_remote``) keeps the pipe full: source reads and SHA-256
run in the loop's thread pool (file I/O and ``hashlib`` release the GIL) while earlier
chunks are still being encrypted and written, and each chunk goes out as several SFTP
requests of the server's maximum write length in flight at once.

``translate`` turns asyncssh and OS errors into ``DeliveryError`` with their retry meaning
(see ``dockd.delivery.base``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import stat
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, BinaryIO, Protocol, TypeVar

import asyncssh

from ..errors import DeliveryError
from .base import os_error_to_delivery

log = logging.getLogger(__name__)

T = TypeVar("T")

# permission or a read-only / misconfigured share on the server: the target's state
_TARGET_STATE_SFTP_CODES = frozenset({
    asyncssh.FX_PERMISSION_DENIED, asyncssh.FX_WRITE_PROTECT, asyncssh.FX_NOT_A_DIRECTORY,
})
_FATAL_SFTP_CODES = frozenset({
    asyncssh.FX_PERMISSION_DENIED, asyncssh.FX_WRITE_PROTECT, asyncssh.FX_OP_UNSUPPORTED,
    asyncssh.FX_INVALID_FILENAME, asyncssh.FX_LINK_LOOP, asyncssh.FX_NOT_A_DIRECTORY,
    asyncssh.FX_FILE_IS_A_DIRECTORY, asyncssh.FX_INVALID_PARAMETER,
    asyncssh.FX_OWNER_INVALID, asyncssh.FX_GROUP_INVALID,
})
CONNECTION_CODES = frozenset({asyncssh.FX_CONNECTION_LOST, asyncssh.FX_NO_CONNECTION})
"""SFTP status codes that mean the connection, not the request, failed."""
SAFE_LEN = 16 * 1024
"""Request size every SFTP server accepts (used when a server announces no limits)."""
_NO_SPACE_WORDS = ("no space", "quota", "disk full", "enospc", "edquot")


# --------------------------------------------------------------------------- loop thread


class LoopThread:
    """An asyncio event loop in a daemon thread, started on first use, stoppable and
    restartable. ``run(coro)`` may be called from any thread but the loop's own."""

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name=self.name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._ensure()
        if threading.current_thread() is self._thread:  # pragma: no cover - misuse
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop (would deadlock)")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return fut.result()

    def stop(self) -> None:
        """Cancel what is left, shut the thread pool down and end the thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_default_executor()

        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


# --------------------------------------------------------------------------- errors


def is_connection_error(exc: BaseException) -> bool:
    """True if ``exc`` means the SSH connection is gone or wedged (drop it, reconnect)."""
    if isinstance(exc, (asyncssh.HostKeyNotVerifiable, asyncssh.PermissionDenied)):
        return False
    if isinstance(exc, asyncssh.SFTPError):
        return exc.code in CONNECTION_CODES
    return isinstance(exc, (OSError, TimeoutError, asyncssh.DisconnectError,
                            asyncssh.ChannelOpenError, asyncssh.ProtocolError))


def translate(exc: BaseException, *, target: str, where: str, action: str,
              known_hosts: str, user: str, key_file: str) -> DeliveryError:
    """A ``DeliveryError`` for ``exc`` with the right retry meaning (see the base module)."""
    if isinstance(exc, DeliveryError):
        return exc
    prefix = f"{target}: cannot {action} {where}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return DeliveryError(
            f"{prefix}: the server's host key is not in known_hosts file {known_hosts} or "
            f"does not match it (unknown server or changed host key); refusing to connect. "
            f"Check the server's key fingerprint and add it to {known_hosts}", target_state=True)
    if isinstance(exc, asyncssh.PermissionDenied):
        return DeliveryError(
            f"{prefix}: the server refused key authentication for user {user!r} with the "
            f"key in {key_file} ({exc.reason})", target_state=True)
    if isinstance(exc, asyncssh.KeyExchangeFailed):
        return DeliveryError(f"{prefix}: no common key exchange/cipher with the server "
                             f"({exc.reason})", target_state=True)
    if isinstance(exc, asyncssh.SFTPError):
        reason = exc.reason or ""
        if exc.code in (asyncssh.FX_NO_SPACE_ON_FILESYSTEM, asyncssh.FX_QUOTA_EXCEEDED) or (
                exc.code == asyncssh.FX_FAILURE
                and any(w in reason.lower() for w in _NO_SPACE_WORDS)):
            return DeliveryError(f"{prefix}: no space or quota left on the server ({reason})",
                                 retry=True)
        retry = exc.code not in _FATAL_SFTP_CODES
        state = exc.code in _TARGET_STATE_SFTP_CODES
        return DeliveryError(f"{prefix}: {reason or 'SFTP error'} (SFTP status {exc.code})",
                             retry=retry, target_state=state)
    if isinstance(exc, asyncssh.ChannelOpenError):
        retry = exc.code != asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        return DeliveryError(f"{prefix}: the server refused the SFTP channel ({exc.reason})",
                             retry=retry)
    if isinstance(exc, asyncssh.DisconnectError):
        return DeliveryError(f"{prefix}: connection lost ({exc.reason})", retry=True)
    if isinstance(exc, TimeoutError):
        return DeliveryError(f"{prefix}: timed out", retry=True)
    if isinstance(exc, OSError):
        return os_error_to_delivery(exc, target, where, action)
    return DeliveryError(f"{prefix}: {type(exc).__name__}: {exc}", retry=True)


# --------------------------------------------------------------------------- attributes


def is_dir(attrs: asyncssh.SFTPAttrs) -> bool:
    return attrs.permissions is not None and stat.S_ISDIR(attrs.permissions)


def is_regular(attrs: asyncssh.SFTPAttrs) -> bool:
    return attrs.permissions is not None and stat.S_ISREG(attrs.permissions)


async def lstat_or_none(sftp: asyncssh.SFTPClient, path: str,
                        timeout: float) -> asyncssh.SFTPAttrs | None:
    try:
        return await asyncio.wait_for(sftp.lstat(path), timeout)
    except asyncssh.SFTPNoSuchFile:
        return None


async def remove_quiet(sftp: asyncssh.SFTPClient, path: str, timeout: float) -> None:
    """Remove ``path``; absent is fine, anything else is logged (never raised)."""
    try:
        await asyncio.wait_for(sftp.remove(path), timeout)
    except asyncssh.SFTPNoSuchFile:
        pass
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        log.warning("cannot remove %s: %s", path, exc)


# --------------------------------------------------------------------------- streaming


class Source(Protocol):
    def read_hash(self, n: int, h: hashlib._Hash) -> bytes:
        """Up to ``n`` further bytes (b"" at the end), added to ``h`` before returning."""
        ...


class FileSource:
    """A local file read in order from its start (reads and hashing run in a worker thread).
    A new ``FileSource`` on the same stream starts over (a put retried on a new connection)."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        stream.seek(0)

    def read_hash(self, n: int, h: hashlib._Hash) -> bytes:
        data = self._stream.read(n)
        h.update(data)
        return data


class BytesSource:
    def __init__(self, data: bytes):
        self._view = memoryview(data)
        self._pos = 0

    def read_hash(self, n: int, h: hashlib._Hash) -> bytes:
        data = bytes(self._view[self._pos:self._pos + n])
        self._pos += len(data)
        h.update(data)
        return data


async def _drain(pending: set[asyncio.Task[Any]], keep: int) -> set[asyncio.Task[Any]]:
    """Wait until at most ``keep`` tasks are pending; re-raise the first failure."""
    while len(pending) > keep:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    return pending


async def _cancel_all(pending: set[asyncio.Task[Any]]) -> None:
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _next_chunk(source: Source, n: int, h: hashlib._Hash,
                throttle: Callable[[int], object] | None) -> bytes:
    data = source.read_hash(n, h)
    if throttle is not None and data:
        throttle(len(data))  # blocks this worker thread as long as the bandwidth cap says
    return data


async def send_stream(rfile: asyncssh.SFTPClientFile, source: Source, *, chunk_size: int,
                      chunks_in_flight: int, timeout: float,
                      throttle: Callable[[int], object] | None = None) -> tuple[int, str]:
    """Write everything ``source`` yields to ``rfile`` from offset 0; (size, SHA-256 hex).

    The next chunk is read and hashed in the thread pool while up to ``chunks_in_flight``
    chunks are on the wire; each chunk write is itself pipelined by asyncssh (the file was
    opened with the server's write length as block size). Every write must finish within
    ``timeout`` seconds, so a wedged server cannot hang a delivery. ``throttle`` (the
    queue's bandwidth pacer) is called with each chunk's size before it is sent.
    """
    loop = asyncio.get_running_loop()
    h = hashlib.sha256()
    offset = 0
    pending: set[asyncio.Task[Any]] = set()
    reading: asyncio.Future[bytes] = loop.run_in_executor(
        None, _next_chunk, source, chunk_size, h, throttle)
    try:
        while True:
            data = await reading
            if not data:
                break
            reading = loop.run_in_executor(None, _next_chunk, source, chunk_size, h, throttle)
            pending = await _drain(pending, chunks_in_flight - 1)
            pending.add(asyncio.ensure_future(
                asyncio.wait_for(rfile.write(data, offset), timeout)))
            offset += len(data)
        await _drain(pending, 0)
        pending = set()
    finally:
        await _cancel_all(pending)
        if not reading.done():
            with contextlib.suppress(Exception):
                await reading
    return offset, h.hexdigest()


async def hash_remote(rfile: asyncssh.SFTPClientFile, *, chunk_size: int,
                      timeout: float) -> tuple[int, str]:
    """(size, SHA-256 hex) of an open remote file, read to its end.

    The next chunk is requested (as parallel SFTP reads) while the previous one is hashed
    in the thread pool.
    """
    loop = asyncio.get_running_loop()
    h = hashlib.sha256()
    size = 0

    def fetch(offset: int) -> asyncio.Task[bytes]:
        return asyncio.ensure_future(asyncio.wait_for(rfile.read(chunk_size, offset), timeout))

    nxt = fetch(0)
    try:
        while True:
            data = await nxt
            if not data:
                break
            size += len(data)
            nxt = fetch(size)
            await loop.run_in_executor(None, h.update, data)
    finally:
        await _cancel_all({nxt})
    return size, h.hexdigest()


# --------------------------------------------------------------------------- remote hash

HASH_SCRIPT = (
    'while IFS= read -r f; do '
    's=$(stat -c %s "$f" 2>/dev/null) || s=-1; '
    'd=$(openssl dgst -sha256 -r "$f" 2>/dev/null || sha256sum -b "$f" 2>/dev/null); '
    'printf "%s %s\\n" "$s" "${d%% *}"; done')
"""A shell loop on the server: one path per line in, ``<size> <sha256>`` per line out.
openssl first (it uses the CPU's SHA instructions), coreutils' sha256sum otherwise."""


class RemoteHasher:
    """One long-lived hashing process per connection on the server (``HASH_SCRIPT``).

    Starting a command costs a session and a login shell (tens of ms, far more with a
    heavy shell profile), so one process answers every request on the connection, one at
    a time. ``sha256`` answers None when the account cannot run it (a ``ForceCommand
    internal-sftp`` account, a server without a POSIX shell); callers then read back.
    """

    def __init__(self, conn: asyncssh.SSHClientConnection):
        self._conn = conn
        self._lock = asyncio.Lock()
        self._proc: asyncssh.SSHClientProcess[str] | None = None
        self.broken: str | None = None
        """Why remote hashing is not available on this connection, once known."""

    async def sha256(self, path: str, timeout: float) -> tuple[int, str] | None:
        if self.broken is not None or "\n" in path:
            return None
        async with self._lock:
            try:
                proc = self._proc
                if proc is None:
                    proc = await asyncio.wait_for(
                        self._conn.create_process(HASH_SCRIPT, encoding="utf-8"), timeout)
                    self._proc = proc
                assert proc is not None
                proc.stdin.write(path + "\n")
                line = await asyncio.wait_for(proc.stdout.readline(), timeout)
            except asyncssh.ChannelOpenError as exc:
                self.broken = f"cannot run commands: {exc.reason}"
                return None
            except (asyncssh.Error, OSError, TimeoutError, BrokenPipeError) as exc:
                self.close()
                if is_connection_error(exc) and not isinstance(exc, TimeoutError):
                    raise
                self.broken = f"hashing process failed: {exc!r}"
                return None
        fields = line.split()
        if (len(fields) == 2 and fields[0].lstrip("-").isdigit() and len(fields[1]) == 64
                and all(c in "0123456789abcdef" for c in fields[1])):
            return int(fields[0]), fields[1]
        self.close()
        self.broken = f"unexpected answer {line[:120]!r}"
        return None

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.close()
