"""Target audit (on the dock): does every target still hold what was delivered to it?

The state database knows every object delivered and verified on each target (clips,
manifests, signatures, tokens, checkpoints) with its size and SHA-256. Each pass:

* every delivered object is looked up (``stat``): missing or of another size is a finding;
* ``integrity.audit_rehash_per_pass`` objects per target are re-read in full (``verify``),
  those re-read longest ago first, so over time every object is re-hashed without
  re-reading the whole archive in one pass;
* findings raise one alarm per target (``target_audit``), with an audit entry; a clean pass
  resolves nothing by itself (an operator closes the alarm after investigating).

A target that cannot be reached is skipped with a warning: that is the delivery queue's
alarm, not evidence of tampering.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..alerts import raise_alert
from ..config import Config
from ..errors import DeliveryError
from ..integrity.checkpoint import TOKEN_SUFFIX
from ..store import State, trust
from .base import StorageTarget
from .layout import MANIFEST_NAME, SIGNATURE_NAME

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expected:
    key: str
    size: int
    sha256: str


@dataclass
class AuditResult:
    target: str
    checked: int = 0
    rehashed: int = 0
    problems: list[str] = field(default_factory=list)
    unreachable: str | None = None


def _doc(key: str, data: bytes) -> Expected:
    return Expected(key, len(data), hashlib.sha256(data).hexdigest())


def expected_objects(state: State, target: str) -> list[Expected]:
    """Everything the state database says was delivered to ``target``."""
    out = [Expected(r["key"], r["size"], r["sha256"])
           for r in trust.delivered_clips_on(state, target)]
    for r in trust.delivered_manifests_on(state, target):
        out.append(_doc(f"{r['prefix']}/{MANIFEST_NAME}", bytes(r["manifest"])))
        out.append(_doc(f"{r['prefix']}/{SIGNATURE_NAME}", bytes(r["signature"])))
        if r["token"] is not None:
            out.append(_doc(f"{r['prefix']}/{MANIFEST_NAME}{TOKEN_SUFFIX}", bytes(r["token"])))
    for r in trust.published_checkpoints_on(state, target):
        out.append(_doc(r["key"], bytes(r["body"])))
        if r["token"] is not None:
            out.append(_doc(r["key"] + TOKEN_SUFFIX, bytes(r["token"])))
    return out


def audit_target(state: State, target: StorageTarget, rehash: int) -> AuditResult:
    """One pass over one target (see the module docstring); records what it re-read."""
    res = AuditResult(target.name)
    expected = expected_objects(state, target.name)
    try:
        for e in expected:
            obj = target.stat(e.key)
            res.checked += 1
            if obj is None:
                res.problems.append(f"{e.key}: missing (delivered {e.size} bytes)")
            elif obj.size != e.size:
                res.problems.append(f"{e.key}: size {obj.size}, delivered {e.size}")
            elif obj.sha256 is not None and obj.sha256 != e.sha256:
                res.problems.append(f"{e.key}: stored checksum differs from the delivered "
                                    "SHA-256")
        bad = {p.split(": ", 1)[0] for p in res.problems}
        last = trust.last_rehashed(state, target.name)
        order = sorted((e for e in expected if e.key not in bad),
                       key=lambda e: (last.get(e.key) or "", e.key))
        for e in order[:max(0, rehash)]:
            ok = target.verify(e.key, sha256=e.sha256, size=e.size)
            res.rehashed += 1
            if not ok:
                res.problems.append(f"{e.key}: content changed (SHA-256 differs from the "
                                    "delivered copy)")
            with state.tx() as conn:
                trust.record_rehash(conn, target.name, e.key, state.now(),
                                    None if ok else "changed")
    except (DeliveryError, OSError) as exc:
        res.unreachable = str(exc)
        log.warning("target audit of %s incomplete: %s", target.name, exc)
    return res


def audit_targets(state: State, cfg: Config, targets: Sequence[StorageTarget]
                  ) -> list[AuditResult]:
    """Audit every target once; alarm for each one that lost or changed something."""
    results = []
    for t in targets:
        res = audit_target(state, t, cfg.integrity.audit_rehash_per_pass)
        results.append(res)
        state.audit("target_audit", f"target/{t.name}",
                    {"checked": res.checked, "rehashed": res.rehashed,
                     "problems": res.problems[:50], "unreachable": res.unreachable})
        if res.problems:
            shown = "; ".join(res.problems[:5])
            more = f" (and {len(res.problems) - 5} more)" if len(res.problems) > 5 else ""
            raise_alert(state, level="alarm", kind="target_audit", subject=f"target/{t.name}",
                        message=f"{t.describe()}: {len(res.problems)} delivered object(s) "
                                f"missing or changed: {shown}{more}",
                        command=cfg.delivery.alert_command)
        log.info("target audit of %s: %d object(s) listed, %d re-read, %d problem(s)",
                 t.name, res.checked, res.rehashed, len(res.problems))
    return results
