"""What one offline verification run knows and collects (:mod:`.verify` drives it).

:class:`Trust` is what the reviewer trusts, given from outside the target; a
:class:`VerifyContext` carries it through one run and collects the problems, warnings,
trusted keys (:mod:`.targetkeys`) and chain links (:mod:`.chain`) the check functions find.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import VerifyError
from .checkpoint import Checkpoint
from .keyhistory import KeyRecord, TrustedKey
from .tsa import check_token

PEM = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
"""How dockd writes public keys (``public_bytes(*PEM)``)."""


@dataclass
class Trust:
    """What the reviewer trusts, given from outside the target."""

    anchors: dict[str, TrustedKey] = field(default_factory=dict)
    tsa_roots: list[x509.Certificate] = field(default_factory=list)
    max_checkpoint_age: timedelta | None = timedelta(hours=2)
    now: datetime | None = None
    """The reviewer's clock (default: now)."""


@dataclass(frozen=True)
class Link:
    """One manifest's place in its dock's hash chain."""

    where: str
    dock: str
    sha256: str
    prev: str | None
    seq: int | None


@dataclass
class VerifyContext:
    """Everything one verification run collects; the check functions add to it."""

    root: Path | None
    path: Path
    whole_target: bool
    trust: Trust
    keys: dict[str, TrustedKey] = field(default_factory=dict)
    found_keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    records: list[KeyRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    checkpoints: dict[str, tuple[Checkpoint, str, datetime | None]] = field(default_factory=dict)
    """dock -> its newest valid checkpoint, where it lies and the TSA's time for it (set by
    :mod:`.chain`)."""
    tokens: dict[str, int] = field(default_factory=lambda: {"ok": 0, "unchecked": 0,
                                                            "missing": 0})
    bound: dict[str, str] = field(default_factory=dict)
    """key id -> dock, for keys the reviewer gave without a dock (bound on first use)."""

    @property
    def now(self) -> datetime:
        return self.trust.now or datetime.now(UTC)

    def signing_key(self, kid: str, dock: object, where: str) -> Ed25519PublicKey | None:
        """The trusted key ``kid`` if it may sign for ``dock``; else None (problem added)."""
        tk = self.keys.get(kid)
        if tk is None:
            found = " (a key of that id is on the target, but keys found there are never " \
                    "trusted)" if kid in self.found_keys else ""
            self.problems.append(f"{where}: signed by {kid}, which is not a trusted key"
                                 f"{found}")
            return None
        if dock is None:  # unreadable document: the signature check names what is wrong
            return tk.key
        owner = tk.dock or self.bound.setdefault(kid, str(dock))
        if owner != dock:
            self.problems.append(f"{where}: claims dock {dock} but is signed by {kid}, a key "
                                 f"of dock {owner}")
            return None
        return tk.key

    def check_token_file(self, token_path: Path, where: str, data: bytes) -> datetime | None:
        """Check an RFC 3161 token beside a file; the TSA's time when it is good."""
        try:
            token = read_regular(token_path)
        except FileNotFoundError:
            self.tokens["missing"] += 1
            return None
        except OSError as exc:
            self.problems.append(f"{where}: cannot read ({exc.strerror or exc})")
            return None
        if not self.trust.tsa_roots:
            self.tokens["unchecked"] += 1
            return None
        try:
            info = check_token(token, data, self.trust.tsa_roots)
        except VerifyError as exc:
            self.problems.append(f"{where}: {exc}")
            return None
        self.tokens["ok"] += 1
        return info.gen_time


def read_regular(p: Path) -> bytes:
    # O_NONBLOCK: a FIFO planted in place of a file must not hang the verifier
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"{p} is not a regular file")
        return f.read()
