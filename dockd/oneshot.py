"""``dockd ingest PATH``: the manual import an admin uses for a recorder mounted elsewhere.

The same pipeline the daemon runs, with its stages overlapping as there: the recorder
copies in this thread while a finisher thread probes and checks the clips that landed and
each target's worker delivers them; once the copy ends the docking is signed and its
manifest (the commit marker) delivered last, then what landed is checked. Succeeds only if
every clip is delivered and verified.

Each copy on a target is read back once, as it lands (the delivery's verification); the
final check re-uses that record — every copy and the manifest have a verification time —
and reads only the small manifest and signature files again. ``reverify`` (the CLI's
``--reverify``) also re-reads the whole delivered docking on every local target, the way
``dockd verify`` does: a third read of every byte, for when the disk itself is in doubt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config import Config
from .daemon import build_pipeline
from .errors import DockdError, SigningError
from .ingest.offload import clean_stale_partials
from .ingest.probe import Prober
from .integrity.keys import generate_key
from .store import State, deliveries

log = logging.getLogger(__name__)


def _credential_key() -> bool:
    import os

    d = os.environ.get("CREDENTIALS_DIRECTORY")
    return d is not None and d != "" and (Path(d) / "dock.key").exists()


def ensure_key(cfg: Config) -> None:
    """Create the dock key when a fresh work directory has none (``--workdir`` convenience)."""
    if not cfg.paths.key_file.exists():
        kid = generate_key(cfg.paths.key_file, cfg.paths.public_key_file)
        log.warning("created a new signing key %s at %s", kid, cfg.paths.key_file)


def ingest_tree(cfg: Config, root: Path, *, port: str = "manual",
                create_key: bool = False, attempts: int = 3,
                progress: Callable[..., None] | None = None,
                hints: Mapping[str, str] | None = None,
                writable_for: Callable[[str], Any] | None = None,
                reverify: bool = False) -> dict[str, Any]:
    """Import one recorder tree. A missing signing key is created only with ``create_key``
    (the CLI sets it for ``--workdir`` or ``--create-key``); otherwise ingest stops and
    names the keygen command, so a production dock never signs with a surprise key.
    ``progress`` receives the copy's progress events
    (see :class:`dockd.ingest.progress.IngestProgress`); ``hints``: what the device layer
    knows (udev properties, ``DOCKD_FSCK``); ``writable_for``: port -> the recorder's write
    window (see ``Pipeline.writable_for``), for a recorder mounted read-only through the
    mount helper. ``reverify``: re-read every delivered byte on local targets at the end
    (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DockdError(f"{root}: not a directory (expected a mounted recorder tree)")
    _require_recorder_files(cfg, root)
    if create_key:
        ensure_key(cfg)
    elif not cfg.paths.key_file.exists() and not _credential_key():
        raise SigningError(
            f"no signing key at {cfg.paths.key_file}; create it first with: "
            "dockd keygen --config <your config> (or pass --create-key)")
    cfg.paths.staging_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(cfg.paths.staging_dir)
    with State(cfg.paths.database) as state, Prober(cfg.tools) as prober:
        pipe = build_pipeline(cfg, state, prober)
        pipe.writable_for = writable_for
        pipe.resume()
        pipe.on_progress = progress
        # the stages overlap as in the daemon: a finisher thread probes and checks clips
        # while the recorder copies, and each target's worker delivers them as they become
        # checked; signing, then the manifest (the commit marker), come last
        stage = pipe.delivery
        pipe.on_ready = stage.wake
        stage.start()
        try:
            pipe.finisher.start(threads=1)
            try:
                docking_id, known = pipe.begin_docking(port, root.absolute(), hints)
                out = pipe.offload(docking_id, root.absolute(), known)
            finally:
                pipe.finisher.stop()
            pipe.mark_interrupted(docking_id, "one-shot ingest finished")  # no-op if complete
            pipe.finish(docking_id)
            for _ in range(attempts):
                pipe.deliver_pending(ignore_backoff=True)
                if state.docking(docking_id)["state"] == "delivered":
                    break
        finally:
            stage.stop()
        cleared = pipe.clear(port, root.absolute())
        d = state.docking(docking_id)
        clips = state.clips_of(docking_id)
        problems = list(out.errors)
        for c in clips:
            if c["state"] not in ("delivered", "cleared"):
                problems.append(f"{c['safe_name']}: not delivered (state {c['state']}"
                                + (f": {c['error']}" if c["error"] else "") + ")")
        for e in deliveries.undelivered_of(state, docking_id):
            problems.append(f"{e['safe_name']}: {e['target']}: {e['last_error']}")
        manifest = deliveries.manifest_of(state, docking_id)
        if manifest is None:
            problems.append("no manifest")
        else:
            problems.extend(f"{e['safe_name']}: {e['target']}: not verified on delivery"
                            for e in deliveries.unverified_of(state, docking_id))
            problems.extend(_check_manifests(cfg, manifest["prefix"], manifest["sha256"]))
            if reverify:
                problems.extend(_verify_local(cfg, manifest["prefix"]))
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
            "findings": _findings_of(state, docking_id),
        }


def _findings_of(state: State, docking_id: int) -> list[dict[str, Any]]:
    """What the scan and the checks noticed (skipped links and special files, odd names,
    limits hit...): the docking's findings, then each clip's of severity warning or worse."""
    import json

    out: list[dict[str, Any]] = []
    row = state.query_one("SELECT findings FROM dockings WHERE id = ?", (docking_id,))
    for f in json.loads(row["findings"] or "[]") if row else []:
        if isinstance(f, dict):
            out.append({"kind": f.get("kind"), "severity": f.get("severity"),
                        "message": f.get("message")})
    for c in state.clips_of(docking_id):
        try:
            found = json.loads(c.get("findings") or "[]")
        except (TypeError, ValueError):
            continue
        for f in found:
            if isinstance(f, dict) and f.get("severity") in ("warning", "error"):
                out.append({"kind": f.get("kind"), "severity": f.get("severity"),
                            "message": f.get("message"), "clip": c["safe_name"]})
    return out


def _require_recorder_files(cfg: Config, root: Path) -> None:
    """Refuse a directory that holds nothing of a recorder (no device-info file of any
    profile, no clip in any profile's clip folders): importing it would deliver an empty
    signed manifest for a "recorder" that is not one."""
    from .devices.drivers import find_info_file
    from .ingest.scan import scan_recorder

    for p in cfg.profiles:
        if find_info_file(root, p.info_file) is not None:
            return
        if scan_recorder(root, p, max_files=1).entries:
            return
    profile = cfg.profiles[0]
    raise DockdError(
        f"{root}: no recorder files here: no {profile.info_file} and no clip "
        f"(.{', .'.join(profile.extensions)}) in {', '.join(profile.clip_dirs)}; nothing was "
        "imported (give the recorder's mount point)")


def _verify_local(cfg: Config, prefix: str) -> list[str]:
    """Re-verify the delivered docking on every local target, offline, with the dock's key."""
    from .integrity.keys import key_id, load_public_key
    from .integrity.verify import verify_path

    key = load_public_key(cfg.paths.public_key_file)
    problems: list[str] = []
    for t in cfg.targets:
        if t.kind != "local":
            continue
        report = verify_path(t.path / prefix, {key_id(key): key})
        problems.extend(f"{t.name}: {p}" for p in report.problems)
    return problems


def _check_manifests(cfg: Config, prefix: str, sha256: str) -> list[str]:
    """The manifest and its signature on every local target: the signed document, signed
    by this dock's key (small files; the clips were read back as they landed)."""
    import base64

    from cryptography.exceptions import InvalidSignature

    from .delivery.layout import manifest_key, signature_key
    from .errors import VerifyError
    from .integrity.keys import load_public_key
    from .integrity.manifest import manifest_sha256, parse_signature

    key = load_public_key(cfg.paths.public_key_file)
    problems: list[str] = []
    for t in cfg.targets:
        if t.kind != "local":
            continue
        try:
            body = (t.path / manifest_key(prefix)).read_bytes()
            sig = (t.path / signature_key(prefix)).read_bytes()
        except OSError as exc:
            problems.append(f"{t.name}: manifest not readable: {exc.strerror or exc}")
            continue
        if manifest_sha256(body) != sha256:
            problems.append(f"{t.name}: manifest.json is not the one signed (SHA-256 "
                            f"{manifest_sha256(body)}, expected {sha256})")
            continue
        try:
            key.verify(base64.b64decode(parse_signature(sig)["signature"]), body)
        except (InvalidSignature, VerifyError, ValueError, KeyError):
            problems.append(f"{t.name}: manifest.json.sig does not verify with the dock's key")
    return problems
