"""The keys a verification run trusts: what ``_keys/`` on the target holds (listed, never
trusted), the reviewer's anchors (``Trust.anchors``), and trust spread along the target's
key records (see :mod:`.keyhistory`). Without anchors the run is UNTRUSTED: the target's
own keys are used so tampering still shows, but the verdict cannot be OK."""

from __future__ import annotations

import os

from ..delivery.layout import KEYS_DIR, key_path
from ..errors import SigningError, VerifyError
from .keyhistory import RECORD_SUFFIX, TrustedKey, expand_trust, parse_record
from .keys import key_id, load_public_key
from .verify_context import PEM, VerifyContext, read_regular


def load_keys(ctx: VerifyContext) -> None:
    """Read what ``_keys/`` holds (reported, never trusted), then spread the reviewer's trust
    along the key records found there."""
    if ctx.root is not None:
        kdir = ctx.root / KEYS_DIR
        try:
            names = sorted(os.listdir(kdir))
        except OSError as exc:
            ctx.problems.append(f"{KEYS_DIR}/: cannot list ({exc.strerror or exc})")
            names = []
        for name in names:
            f = kdir / name
            where = f"{KEYS_DIR}/{name}"
            if f.is_symlink() or not f.is_file():
                ctx.problems.append(f"{where}: not a regular file")
            elif name.endswith(".pub"):
                try:
                    k = load_public_key(f)
                except SigningError as exc:
                    ctx.problems.append(f"{where}: {exc}")
                    continue
                kid = key_id(k)
                if key_path(kid) != where:
                    ctx.problems.append(f"{where}: file name does not match its key id {kid}")
                elif f.read_bytes() != k.public_bytes(*PEM):
                    ctx.problems.append(f"{where}: not the PEM dockd wrote for key {kid} "
                                        "(altered)")
                ctx.found_keys[kid] = k
            elif name.endswith(RECORD_SUFFIX):
                try:
                    ctx.records.append(parse_record(read_regular(f)))
                except (VerifyError, OSError) as exc:
                    ctx.problems.append(f"{where}: {exc}")
            elif not name.startswith("."):
                ctx.problems.append(f"{where}: not a key or key record")
    anchors = dict(ctx.trust.anchors)
    for kid, tk in list(anchors.items()):
        if tk.key is None:  # trust file entry: the fingerprint pins the key found here
            pinned = ctx.found_keys.get(kid) or next(
                (r.public_key for r in ctx.records if r.key_id == kid), None)
            if pinned is None:
                del anchors[kid]
                ctx.warnings.append(f"trusted key {kid} ({tk.dock}) is not on the target")
            else:
                anchors[kid] = TrustedKey(pinned, tk.dock, tk.how)
    if not ctx.trust.anchors:
        # UNTRUSTED: check against what the target offers, so tampering still shows, but
        # the verdict cannot be OK
        anchors = {kid: TrustedKey(k, None, "found on the target")
                   for kid, k in ctx.found_keys.items()}
        ctx.problems.append("UNTRUSTED: no trusted key given (--pubkey or --trust); keys "
                            "found on the target are never trusted: "
                            + (", ".join(sorted(ctx.found_keys)) or "none"))
    ctx.keys = expand_trust(anchors, ctx.records, ctx.problems)
    if ctx.trust.anchors:
        for kid, tk in sorted(ctx.keys.items()):
            ctx.info.append(f"trusted key {kid} (dock {tk.dock or '?'}): {tk.how}")
        for kid in sorted(set(ctx.found_keys) - set(ctx.keys)):
            ctx.warnings.append(f"{KEYS_DIR}: key {kid} found on the target is not trusted")
