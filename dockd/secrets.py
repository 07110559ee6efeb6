"""Secrets the daemon reads: where they come from and who else may read their files.

Secrets: the dock's signing key (:mod:`dockd.integrity.keys`), an S3 target's credentials
file, an SFTP target's private key and its passphrase, and ``web.token``.

**systemd credentials first.** With ``LoadCredential=NAME:/etc/dockd/FILE`` in
``dockd.service``, systemd hands the file to the service as ``$CREDENTIALS_DIRECTORY/NAME``
(a private, non-swappable ramfs readable only by the service), so the original can stay
root-only. The names (:func:`credential_name`):

=====================================  ==========================================
``dock.key``                           the signing key (:mod:`dockd.integrity.keys`)
``web.token``                          the web token (instead of ``web.token``)
``s3.<target>.credentials``            an S3 target's credentials file (INI)
``sftp.<target>.key``                  an SFTP target's private key
``sftp.<target>.passphrase``           that key's passphrase
=====================================  ==========================================

A credential that exists wins over the configured file.

**Permissions.** A secret file that others may read (``o+r``) or that group or others may
write is refused (:class:`SecretFileError`, with the ``chmod`` that fixes it), as OpenSSH
refuses an unprotected key; group-readable is accepted only for the daemon's own group
(``0640 root:dockd`` is the documented layout) and warned about otherwise. A configuration
file holding ``web.token`` that others may read draws a warning (loopback clients need no
token anyway). Every secret read here is registered with :mod:`dockd.logredact`, so no log
line shows it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from . import logredact
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
WEB_TOKEN = "web.token"
MAX_SECRET = 1024 * 1024
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


class SecretFileError(ConfigError):
    """A secret file is missing, unreadable, or readable/writable by others."""

    def __init__(self, message: str):
        super().__init__([message])
        self.message = message

    def __str__(self) -> str:
        return self.message


def credential_name(kind: str, target: str = "") -> str:
    """``web.token``, ``s3.<target>.credentials``, ``sftp.<target>.key`` / ``.passphrase``."""
    if kind == WEB_TOKEN:
        return WEB_TOKEN
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", target)
    return f"{kind.split('.')[0]}.{safe}.{kind.split('.', 1)[1]}"


def credential(name: str) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/<name>`` when systemd passed that credential, else None."""
    base = os.environ.get(CREDENTIALS_ENV)
    if not base or not _NAME_RE.fullmatch(name):
        return None
    path = Path(base) / name
    return path if path.is_file() else None


def resolve(configured: str | Path, name: str) -> Path | None:
    """The systemd credential ``name`` if present, else the configured path ("" = None)."""
    cred = credential(name)
    if cred is not None:
        return cred
    return Path(configured) if str(configured) else None


def check_mode(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a secret file others may read or group/others may write; warn when a group
    other than ours may read it."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 or mode & 0o004:
        who = "written by group or others" if mode & 0o022 else "read by others"
        raise SecretFileError(f"{what} {path} may be {who} (mode {mode:04o}); refusing to "
                              f"use it: chmod 0600 {path} (or 0640 with the dockd group)")
    if mode & 0o040 and st.st_gid != os.getegid():
        log.warning("%s %s is readable by group %d (mode %04o); chmod 0600 it", what, path,
                    st.st_gid, mode)


def read_secret(path: Path, what: str, *, limit: int = MAX_SECRET) -> bytes:
    """The bytes of a secret file, permission-checked on the open descriptor; the value is
    registered for log redaction."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise SecretFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{what} {path} is not a regular file")
        in_credentials = credential(path.name) == path
        if not in_credentials:  # systemd's credential files are private to the service
            check_mode(path, st, what)
        if st.st_size > limit:
            raise SecretFileError(f"{what} {path} is larger than {limit} bytes")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    logredact.register(data.decode("utf-8", "replace").strip())
    return data


def read_text_secret(path: Path, what: str) -> str:
    """A one-value secret file (token, passphrase): its text without surrounding space."""
    try:
        value = read_secret(path, what).decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise SecretFileError(f"{what} {path} is not UTF-8 text") from exc
    if not value:
        raise SecretFileError(f"{what} {path} is empty")
    logredact.register(value)
    return value


def with_credentials(cfg: Config, config_path: Path | None = None) -> Config:
    """``cfg`` with ``web.token`` from its systemd credential when present; registers the
    token for log redaction and warns when the configuration file holding it may be read
    by others."""
    token = cfg.web.token
    cred = credential(WEB_TOKEN)
    if cred is not None:
        token = read_text_secret(cred, "web token credential")
        cfg = dataclasses.replace(cfg, web=dataclasses.replace(cfg.web, token=token))
    elif token and config_path is not None:
        try:
            mode = stat.S_IMODE(os.stat(config_path).st_mode)
        except OSError:
            mode = 0
        if mode & 0o004:
            log.warning("%s holds web.token and may be read by any local user (mode %04o): "
                        "chmod 0640 it (root:dockd), or pass the token as the systemd "
                        "credential %s", config_path, mode, WEB_TOKEN)
    logredact.register(token)
    return cfg
