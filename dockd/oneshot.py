"""``dockd ingest PATH``: the manual import an admin uses for a recorder mounted elsewhere.

One pass of the same pipeline the daemon runs: identify, offload, probe, check, sign,
deliver, then verify what landed. Succeeds only if every clip is delivered and verified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config import Config
from .daemon import build_pipeline
from .errors import DockdError
from .ingest.offload import clean_stale_partials
from .ingest.probe import Prober
from .integrity.keys import generate_key
from .state import State

log = logging.getLogger(__name__)


def ensure_key(cfg: Config) -> None:
    """Create the dock key when a fresh work directory has none (``--workdir`` convenience)."""
    if not cfg.paths.key_file.exists():
        kid = generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
        log.warning("created a new signing key %s at %s", kid, cfg.paths.key_file)


def ingest_tree(cfg: Config, root: Path, *, port: str = "manual",
                create_key: bool = True, attempts: int = 3,
                hints: Mapping[str, str] | None = None,
                writable_for: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """``hints``: what the device layer knows (udev properties, ``DOCKD_FSCK``);
    ``writable_for``: port -> the recorder's write window (see ``Pipeline.writable_for``),
    for a recorder mounted read-only through the mount helper."""
    root = Path(root)
    if not root.is_dir():
        raise DockdError(f"{root}: not a directory (expected a mounted recorder tree)")
    if create_key:
        ensure_key(cfg)
    cfg.paths.staging_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(cfg.paths.staging_dir)
    with State(cfg.paths.database) as state, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, state, prober)
        pipe.writable_for = writable_for
        pipe.resume()
        docking_id, known = pipe.begin_docking(port, root.absolute(), hints)
        out = pipe.offload(docking_id, root.absolute(), known)
        pipe.mark_interrupted(docking_id, "one-shot ingest finished")  # no-op when complete
        pipe.finish(docking_id)
        for _ in range(attempts):
            pipe.deliver_pending(ignore_backoff=True)
            if state.docking(docking_id)["state"] == "delivered":
                break
        cleared = pipe.clear(port, root.absolute())
        d = state.docking(docking_id)
        clips = state.clips_of(docking_id)
        problems = list(out.errors)
        for c in clips:
            if c["state"] not in ("delivered", "cleared"):
                problems.append(f"{c['safe_name']}: not delivered (state {c['state']}"
                                + (f": {c['error']}" if c["error"] else "") + ")")
        for e in state.query(
                "SELECT dl.target, dl.last_error, c.safe_name FROM deliveries dl "
                "JOIN clips c ON c.id = dl.clip_id WHERE c.docking_id = ? AND "
                "dl.state != 'delivered'", (docking_id,)):
            problems.append(f"{e['safe_name']}: {e['target']}: {e['last_error']}")
        manifest = state.query_one("SELECT sha256, prefix FROM manifests WHERE docking_id = ?",
                                   (docking_id,))
        verified = _verify_local(cfg, manifest["prefix"]) if manifest else ["no manifest"]
        problems.extend(verified)
        delivered = sum(c["state"] in ("delivered", "cleared") for c in clips)
        cleared_names = cleared.cleared if cleared else []
        return {
            "ok": not problems and d["state"] == "delivered",
            "docking_id": docking_id,
            "serial": d["serial"],
            "state": d["state"],
            "clips_total": len(clips),
            "clips_delivered": delivered,
            "skipped_known": out.skipped_known,
            "cleared": cleared_names,
            "manifest_sha256": manifest["sha256"] if manifest else None,
            "prefix": manifest["prefix"] if manifest else None,
            "targets": [t.name for t in pipe.targets],
            "problems": problems,
        }


def _verify_local(cfg: Config, prefix: str) -> list[str]:
    """Re-verify the delivered docking on every local target, offline, with the dock's key."""
    from .integrity.keys import key_id, load_public_key
    from .integrity.verify import verify_path

    key = load_public_key(cfg.paths.public_key_file)
    problems = []
    for t in cfg.targets:
        if t.kind != "local":
            continue
        report = verify_path(t.path / prefix, {key_id(key): key})
        problems.extend(f"{t.name}: {p}" for p in report.problems)
    return problems
