"""Deletion detection on a whole target: every dock's manifest chain and its checkpoints.

Each manifest carries its dock's sequence number (1, 2, 3, ...) and the hash of the
manifest before it. On a target root, for every dock:

* sequence numbers must run 1..N without a hole, each manifest's predecessor hash must be
  the manifest one below it, and no number may appear twice (a fork);
* the newest valid checkpoint (``_checkpoints/<dock>/``, signed by a trusted key of that
  dock) must not name a sequence number beyond the newest manifest present, and its head
  hash must be that manifest's hash;
* the newest checkpoint's age is reported; past ``Trust.max_checkpoint_age`` it is a
  problem: the dock publishes one at least hourly, so a stale newest checkpoint means
  newer ones (and the dockings they cover) were deleted, or the dock stopped publishing.

Below a target root (one docking, one officer's folder) only what is there is compared:
missing predecessors are warnings, since the rest of the chain lies elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from ..delivery.layout import PARTIAL_SUFFIX
from ..errors import VerifyError
from .checkpoint import (
    TOKEN_SUFFIX,
    Checkpoint,
    check_checkpoint,
    parse_checkpoint,
)
from .verify_context import Link, VerifyContext, read_regular

log = logging.getLogger(__name__)


def _fmt_age(seconds: float) -> str:
    if seconds < 0:
        return f"{-seconds:.0f} s in the future"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_checkpoint_dir(ctx: VerifyContext, cdir: Path) -> None:
    """Read every checkpoint under ``_checkpoints/``; keep each dock's newest valid one."""
    for dirpath, dirnames, filenames in os.walk(cdir, followlinks=False, onerror=lambda e:
                                                ctx.problems.append(
                                                    f"{e.filename}: cannot list")):
        d = Path(dirpath)
        rel = d.relative_to(cdir.parent).as_posix()
        for name in sorted(dirnames + filenames):
            if os.path.islink(d / name):
                ctx.problems.append(f"{rel}/{name}: is a symlink (not followed)")
        for name in sorted(filenames):
            where = f"{rel}/{name}"
            if os.path.islink(d / name) or name.endswith(TOKEN_SUFFIX):
                if name.endswith(TOKEN_SUFFIX) and not (d / name[:-len(TOKEN_SUFFIX)]).exists():
                    ctx.problems.append(f"{where}: timestamp token without its checkpoint")
                continue
            if name.endswith(PARTIAL_SUFFIX):  # being uploaded now, or cut by a crash
                ctx.warnings.append(f"{where}: stray partial upload")
                continue
            if not name.endswith(".json"):
                ctx.problems.append(f"{where}: not a checkpoint")
                continue
            _one_checkpoint(ctx, d / name, where)


def _one_checkpoint(ctx: VerifyContext, p: Path, where: str) -> None:
    try:
        data = read_regular(p)
        cp, body = parse_checkpoint(data)
    except OSError as exc:
        ctx.problems.append(f"{where}: cannot read ({exc.strerror or exc})")
        return
    except VerifyError as exc:
        ctx.problems.append(f"{where}: {exc}")
        return
    key = ctx.signing_key(cp.key_id, cp.dock, where)
    if key is None:
        return
    try:
        check_checkpoint(cp, body, key)
    except VerifyError as exc:
        ctx.problems.append(f"{where}: {exc}")
        return
    tsa_time = ctx.check_token_file(p.with_name(p.name + TOKEN_SUFFIX), where + TOKEN_SUFFIX,
                                    data)
    newest = ctx.checkpoints.get(cp.dock)
    if newest is None or (cp.created_at, cp.seq) > (newest[0].created_at, newest[0].seq):
        ctx.checkpoints[cp.dock] = (cp, where, tsa_time)


def check_chains(ctx: VerifyContext) -> None:
    """The chain rules of the module docstring, per dock."""
    by_dock: dict[str, list[Link]] = defaultdict(list)
    by_sha: dict[str, Link] = {}
    for link in ctx.links:
        if link.sha256 in by_sha:
            ctx.problems.append(f"{by_sha[link.sha256].where} and {link.where}: "
                                "the same manifest stored twice")
            continue
        by_sha[link.sha256] = link
        by_dock[link.dock].append(link)
    for dock in sorted(set(by_dock) | set(ctx.checkpoints)):
        _check_dock(ctx, dock, by_dock.get(dock, []), by_sha)


def _check_dock(ctx: VerifyContext, dock: str, links: list[Link],
                by_sha: dict[str, Link]) -> None:
    problems, whole = ctx.problems, ctx.whole_target
    missing_msg = problems if whole else ctx.warnings
    by_seq: dict[int, list[Link]] = defaultdict(list)
    legacy = 0
    for link in links:
        if link.seq is None:  # written before sequence numbers existed (or null: forged)
            legacy += 1
            ctx.warnings.append(f"{link.where}: no sequence number (a manifest from before "
                                "sequence numbers): deletions around it rest on its hash "
                                "chain only")
            continue
        by_seq[link.seq].append(link)
    for seq, same in sorted(by_seq.items()):
        if len(same) > 1:
            problems.append(f"dock {dock}: fork in the manifest chain: "
                            f"{', '.join(sorted(x.where for x in same))} all have sequence "
                            f"number {seq}")
    for link in links:
        if link.prev is None:
            if link.seq not in (None, 1):
                problems.append(f"{link.where}: sequence number {link.seq} but no predecessor")
            continue
        pred = by_sha.get(link.prev)
        if pred is None:
            missing_msg.append(f"{link.where}: its predecessor manifest {link.prev[:12]}… "
                               f"(sequence number {(link.seq or 1) - 1}) is missing"
                               + ("" if whole else f" under {ctx.path}"))
        elif pred.dock != link.dock:
            problems.append(f"{link.where}: predecessor {pred.where} is a manifest of dock "
                            f"{pred.dock}, not {link.dock}")
        elif link.seq is not None and pred.seq is not None and pred.seq != link.seq - 1:
            problems.append(f"{link.where}: sequence number {link.seq} follows {pred.where} "
                            f"with {pred.seq}")
    top = max(by_seq, default=0)
    if whole and by_seq:
        # the upgrade numbered a dock's manifests in order, counting the legacy ones
        holes = [n for n in range(legacy + 1, top) if n not in by_seq]
        if holes:
            problems.append(f"dock {dock}: docking(s) with sequence number(s) "
                            f"{_ranges(holes)} missing (deleted?) from the target")
    if not whole:
        return
    newest = ctx.checkpoints.get(dock)
    if newest is None:
        problems.append(f"dock {dock}: no valid checkpoint on the target: deletion of the "
                        "newest docking(s) cannot be ruled out")
        return
    cp, where, tsa_time = newest
    _check_head(ctx, dock, cp, where, by_seq, top)
    _check_age(ctx, dock, cp, where, tsa_time)


def _check_head(ctx: VerifyContext, dock: str, cp: Checkpoint, where: str,
                by_seq: dict[int, list[Link]], top: int) -> None:
    if cp.seq > top:
        ctx.problems.append(f"dock {dock}: newest checkpoint {where} names sequence number "
                            f"{cp.seq}, but the newest docking on the target has {top}: "
                            f"docking(s) {_ranges(list(range(top + 1, cp.seq + 1)))} missing "
                            "(deleted?)")
    elif cp.seq and cp.seq in by_seq and all(x.sha256 != cp.head_sha256
                                             for x in by_seq[cp.seq]):
        ctx.problems.append(f"dock {dock}: newest checkpoint {where} names manifest "
                            f"{(cp.head_sha256 or '')[:12]}… as sequence number {cp.seq}, "
                            f"but {by_seq[cp.seq][0].where} is another manifest (replaced?)")


def _check_age(ctx: VerifyContext, dock: str, cp: Checkpoint, where: str,
               tsa_time: object) -> None:
    age = (ctx.now - cp.created_at).total_seconds()
    stamp = f"TSA time {tsa_time.isoformat()}" if tsa_time is not None and hasattr(
        tsa_time, "isoformat") else "no trusted timestamp"
    ctx.info.append(f"dock {dock}: newest checkpoint {where} (sequence number {cp.seq}) "
                    f"is {_fmt_age(age)} old ({stamp})")
    limit = ctx.trust.max_checkpoint_age
    if limit is not None and limit.total_seconds() > 0 and age > limit.total_seconds():
        ctx.problems.append(f"dock {dock}: newest checkpoint {where} is {_fmt_age(age)} old "
                            f"(limit {_fmt_age(limit.total_seconds())}): newer checkpoints "
                            "and the dockings they cover may have been deleted, or the dock "
                            "stopped publishing")


def _ranges(nums: list[int]) -> str:
    out: list[str] = []
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(out)

