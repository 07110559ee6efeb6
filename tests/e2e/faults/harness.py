"""The fault-matrix harness: an in-process dock, hook points at every pipeline state, the
faults of issue #10, recovery the way the daemon recovers, and the invariants.

A dock here is the production pipeline (``build_pipeline``) on a work directory with two
required local targets — ``primary`` and ``offsite`` — both wrapped so a test can reach
into them: ``offsite`` can go down, return errors, store wrong bytes, or claim a checksum
for bytes it does not hold. The recorder is a real simulated tree (ffmpeg clips).

Hook points (``STATES``) fire once, the first time the pipeline reaches them:
``discovered`` (clips registered), ``copying`` (a clip's source opened), ``copied`` /
``probed`` / ``checked`` (the first clip committed to that state), ``signing`` (the
manifest is about to be made), ``delivering:<target>`` (the first upload to it) and
``clearing`` (the recorder is about to be cleared).

Recovery follows the daemon: a crashed or stopped process is replaced by a fresh one
(new ``State`` and pipeline on the same files, stale partials cleaned, ``resume``); a
removed recorder is re-docked; a failed offload is retried; delivery passes repeat; the
recorder is cleared when everything is verified.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dockd.config import ByteSize, Config, TargetConfig, for_workdir
from dockd.daemon import build_pipeline
from dockd.delivery.base import Receipt, RemoteObject
from dockd.delivery.local import LocalTarget
from dockd.errors import DeliveryError, DockdError
from dockd.ingest import offload as offload_mod
from dockd.ingest.offload import clean_stale_partials
from dockd.ingest.probe import Prober
from dockd.integrity.keys import generate_key, own_key
from dockd.integrity.verify import verify_path
from dockd.stages import check as check_mod
from dockd.store import State, utcnow
from dockd.store import clips as clips_store

PORT = "port-01"
STATES = ("discovered", "copying", "copied", "probed", "checked", "signing",
          "delivering:primary", "delivering:offsite", "clearing")
FAULTS = ("kill9", "sigterm", "removed", "read_error", "disk_full", "target_down",
          "target_erroring", "target_wrong_bytes", "target_lying_checksum", "clock_jump")


class Crash(BaseException):
    """kill -9 inside the process: nothing below catches a BaseException but cleanups."""


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- targets


class HookTarget:
    """A storage target that calls the dock's hook on its first upload and can be made to
    misbehave (down, erroring, storing wrong bytes, lying about a checksum)."""

    def __init__(self, inner: LocalTarget, dock: Dock):
        self.inner = inner
        self.dock = dock
        self.name = inner.name
        self.required = True
        self.throttle = None
        self.mode: str | None = None
        self.lies: set[str] = set()

    def describe(self) -> str:
        return f"test target {self.name}"

    def _gate(self, what: str) -> None:
        if self.mode == "down":
            raise DeliveryError(f"{self.name}: connection refused ({what})", retry=True)
        if self.mode == "erroring":
            raise DeliveryError(f"{self.name}: 503 Slow Down ({what})", retry=True)

    def put_file(self, local_path: Path, key: str, *, sha256: str, size: int,
                 retention: Any = None) -> Receipt:
        self.dock.hook(f"delivering:{self.name}")
        self._gate("put")
        receipt = self.inner.put_file(local_path, key, sha256=sha256, size=size,
                                      retention=retention)
        if self.mode in ("wrong_bytes", "lying") and not receipt.already_present:
            landed = self.inner.root / key
            landed.chmod(0o644)
            data = bytearray(landed.read_bytes())
            data[len(data) // 2] ^= 0x01
            landed.write_bytes(bytes(data))
            self.dock.corrupted += 1
            if self.mode == "lying":
                self.lies.add(key)
            # the bytes changed after the inner put read them back: this target's put has
            # not checked what it stores (like S3's), so the delivery must read it back
            receipt = dataclasses.replace(receipt, verified=False)
        return receipt

    def put_bytes(self, data: bytes, key: str, *, retention: Any = None) -> Receipt:
        self._gate("put")
        return self.inner.put_bytes(data, key, retention=retention)

    def stat(self, key: str) -> RemoteObject | None:
        self._gate("stat")
        found = self.inner.stat(key)
        if found is not None and key in self.lies:  # claims the checksum it was sent
            return RemoteObject(key=key, size=found.size, sha256=self.dock.expected(key))
        return found

    def verify(self, key: str, *, sha256: str, size: int) -> bool:
        self._gate("verify")
        return self.inner.verify(key, sha256=sha256, size=size)

    def quarantine(self, key: str) -> str:
        self._gate("quarantine")
        return self.inner.quarantine(key)

    def close(self) -> None:
        self.inner.close()


# --------------------------------------------------------------------------- the dock


class Dock:
    def __init__(self, workdir: Path, template: Path, prober: Prober, fault: str, at: str):
        self.workdir = workdir
        self.fault, self.at = fault, at
        self.fired = False
        self.corrupted = 0
        self.removed_to: Path | None = None
        self.stopping = False
        self.disk_full = False
        self.read_error = False
        self.clock_offset = timedelta(0)
        self.prober = prober
        base = for_workdir(workdir)
        generate_key(base.paths.key_file, base.paths.public_key_file)
        offsite = TargetConfig(name="offsite", kind="local", path=workdir / "offsite")
        prof = dataclasses.replace(base.profiles[0], clear_policy="after_delivery")
        self.cfg: Config = dataclasses.replace(
            base, targets=(base.targets[0], offsite), profiles=(prof,),
            offload=dataclasses.replace(base.offload, settle_seconds=0.05,
                                        min_free=ByteSize(0)),
            delivery=dataclasses.replace(base.delivery, retry_seconds=0.01))
        self.rec = workdir / "recorder"
        shutil.copytree(template, self.rec)
        self.originals = Counter(sha(p) for p in self.rec.rglob("*.MP4"))
        self._by_key: dict[str, str] = {}
        self.state: State | None = None
        self.pipe: Any = None

    # -- process lifecycle ------------------------------------------------------------

    def clock(self) -> datetime:
        return utcnow() + self.clock_offset

    def start(self) -> None:
        """A (re)started daemon: fresh state and pipeline, stale partials cleaned, resume."""
        self.cfg.paths.staging_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(self.cfg.paths.staging_dir)
        self.state = State(self.cfg.paths.database, clock=self.clock)
        self.pipe = build_pipeline(self.cfg, self.state, self.prober)
        real_sign = self.pipe.sign

        def sign(docking_id: int) -> str:
            self.hook("signing")
            return str(real_sign(docking_id))

        self.pipe.sign = sign
        self.need_docking = True  # a (re)started daemon sees the docked recorder again
        self.pipe.targets = [HookTarget(t, self) for t in self.pipe.targets]  # type: ignore[arg-type]
        self.offsite.mode = self._target_mode if self.fired and not self.healed else None
        self.pipe.resume()

    _target_mode: str | None = None
    healed = False
    need_docking = True

    @property
    def offsite(self) -> HookTarget:
        return next(t for t in self.pipe.targets if t.name == "offsite")

    def stop_process(self) -> None:
        if self.state is not None:
            for t in self.pipe.targets:
                t.close()
            self.state.close()
            self.state = None

    def should_stop(self) -> bool:
        return self.stopping

    # -- faults -----------------------------------------------------------------------

    def hook(self, where: str) -> None:
        if self.fired or where != self.at:
            return
        self.fired = True
        f = self.fault
        if f == "kill9":
            raise Crash(where)
        if f == "sigterm":
            self.stopping = True
        elif f == "removed":
            self.removed_to = self.workdir / "pocket"
            self.rec.rename(self.removed_to)
        elif f == "read_error":
            self.read_error = True
        elif f == "disk_full":
            self.disk_full = True
        elif f == "clock_jump":
            self.clock_offset = timedelta(hours=-6)  # NTP steps the dock's clock back
        else:
            self._target_mode = {"target_down": "down", "target_erroring": "erroring",
                                 "target_wrong_bytes": "wrong_bytes",
                                 "target_lying_checksum": "lying"}[f]
            self.offsite.mode = self._target_mode

    def heal(self) -> None:
        self.healed = True
        self.stopping = False
        self.read_error = False
        self.disk_full = False
        if self.pipe is not None:
            self.offsite.mode = None
        if self.removed_to is not None:
            self.removed_to.rename(self.rec)  # docked again
            self.removed_to = None
            self.need_docking = True

    def expected(self, key: str) -> str:
        if not self._by_key:
            assert self.state is not None
            for r in self.state.query("SELECT d.key, c.sha256 FROM deliveries d JOIN clips c "
                                      "ON c.id = d.clip_id"):
                self._by_key[r["key"]] = r["sha256"]
        return self._by_key.get(key, "0" * 64)

    def install(self, monkeypatch: Any) -> None:
        """The seams: the recorder's reader, staging free space, clip state commits."""
        real_open, real_readv, real_statvfs = offload_mod._open_source, os.readv, os.statvfs
        rec_roots = (str(self.rec), str(self.workdir / "pocket"))
        staging = str(self.cfg.paths.staging_dir)

        def open_source(root: Path, rel_path: str) -> Any:
            self.hook("copying")
            return real_open(root, rel_path)

        def readv(fd: int, buffers: Any) -> int:
            if self.read_error:
                try:
                    where = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    where = ""
                if where.startswith(rec_roots):
                    raise OSError(errno.EIO, "Input/output error (injected)")
            return real_readv(fd, buffers)

        def statvfs(path: Any) -> Any:
            if self.disk_full and os.fspath(path).startswith(staging):
                return os.statvfs_result((4096, 1, 10**6, 0, 0, 1000, 0, 0, 0, 255))
            return real_statvfs(path)

        real_advance = State.advance_clip

        def advance_clip(st: State, clip_id: int, old: str, new: str, **fields: Any) -> None:
            real_advance(st, clip_id, old, new, **fields)
            if new in ("copied", "probed", "checked"):
                self.hook(new)

        # the stages commit clip transitions through dockd.store.clips (one clip, or a
        # probed batch in one transaction): the fault fires right after that commit
        real_one, real_many = clips_store.advance, clips_store.advance_many

        def advance_one(st: State, clip_id: int, old: str, new: str,
                        fields: dict[str, Any] | None = None) -> None:
            real_one(st, clip_id, old, new, fields)
            if new in ("copied", "probed", "checked"):
                self.hook(new)

        def advance_many(st: State, moves: Any, old: str, new: str) -> int:
            n = real_many(st, moves, old, new)
            if n and new in ("copied", "probed", "checked"):
                self.hook(new)
            return n

        monkeypatch.setattr(offload_mod, "_open_source", open_source)
        monkeypatch.setattr(os, "readv", readv)
        monkeypatch.setattr(os, "statvfs", statvfs)
        monkeypatch.setattr(State, "advance_clip", advance_clip)
        monkeypatch.setattr(clips_store, "advance", advance_one)
        monkeypatch.setattr(clips_store, "advance_many", advance_many)

        # the check stage records a probed batch copied -> probed -> checked in one
        # transaction: both moments come right after that commit
        real_record = check_mod._record

        def record(*a: Any, **kw: Any) -> int:
            n = real_record(*a, **kw)
            if n:
                self.hook("probed")
                self.hook("checked")
            return n

        monkeypatch.setattr(check_mod, "_record", record)

    # -- one daemon pass --------------------------------------------------------------

    def one_pass(self) -> str:
        """What the daemon does for a docked recorder: offload (retried), sign, deliver,
        clear. Returns "crashed", "stopped" or "ok"."""
        pipe = self.pipe
        try:
            if self.rec.is_dir() and self.need_docking:
                try:  # a Docked event (or the daemon's retry of a failed offload)
                    d, known = pipe.begin_docking(PORT, self.rec)
                    self.hook("discovered")
                    try:
                        pipe.offload(d, self.rec, known, self.should_stop)
                        self.need_docking = False
                    except DockdError:
                        if not self.rec.is_dir():  # the daemon's Undocked: interrupted
                            pipe.mark_interrupted(d, "recorder removed")
                    if self.stopping:
                        return "stopped"
                    pipe.finish(d)
                except DockdError:
                    pass  # retried by the next pass, as the daemon's retry_at does
            else:
                for row in self.state.query("SELECT id FROM dockings WHERE state = "  # type: ignore[union-attr]
                                            "'offloading'"):
                    pipe.mark_interrupted(row["id"], "recorder removed")
            if self.stopping:
                return "stopped"
            pipe.resume()
            for _ in range(2):
                pipe.deliver_pending(self.should_stop, ignore_backoff=True)
                if self.stopping:
                    return "stopped"
            if self.rec.is_dir():
                self.hook("clearing")
                if self.stopping:
                    return "stopped"
                pipe.clear(PORT, self.rec)
        except Crash:
            return "crashed"
        return "ok"

    def run(self, max_passes: int = 6) -> None:
        self.start()
        outcome = self.one_pass()
        self.heal()
        if outcome in ("crashed", "stopped"):
            self.stop_process()
            self.start()
        for _ in range(max_passes):
            self.one_pass()
            if self.settled():
                break
        self.stop_process()

    def settled(self) -> bool:
        assert self.state is not None
        rows = self.state.query("SELECT state FROM clips")
        dockings = self.state.query("SELECT state FROM dockings")
        return bool(rows) and all(r["state"] == "cleared" for r in rows) and \
            all(d["state"] == "delivered" for d in dockings) and \
            not list(self.rec.rglob("*.MP4"))


# --------------------------------------------------------------------------- invariants


def target_copies(root: Path) -> Counter[str]:
    return Counter(sha(p) for p in root.rglob("*.MP4") if "_quarantine" not in p.parts)


def check_invariants(dock: Dock) -> list[str]:
    """Every invariant of issue #10's fault matrix; returns the violations."""
    return invariants(dock.cfg, dock.originals, dock.rec)


def invariants(cfg: Config, originals: Counter[str], rec: Path) -> list[str]:
    """Each recorder clip (``originals``: SHA-256 counts) once on every target, verified;
    nothing marked delivered that is not; nothing erased without its copies; manifests and
    audit chain verify; no partials, staging empty; every clip cleared, docking delivered."""
    problems: list[str] = []
    targets = {t.name: t.path for t in cfg.targets}
    for name, root in targets.items():
        got = target_copies(root)
        if got != originals:
            lost = originals - got
            extra = got - originals
            problems.append(f"{name}: copies differ from the recorder's clips: lost "
                            f"{sum(lost.values())}, duplicated or foreign {sum(extra.values())}")
        for d in {p.parent for p in root.rglob("manifest.json")}:
            report = verify_path(d, own_key(cfg.paths.public_key_file))
            if not report.ok:
                problems.append(f"{name}: {d.name}: {report.problems}")
        if list(root.rglob("*.partial")):
            problems.append(f"{name}: stray partials")
    if [p for p in cfg.paths.staging_dir.rglob("*") if p.is_file()]:
        problems.append("staging not empty after everything was delivered")
    with State(cfg.paths.database) as st:
        for c in st.query("SELECT * FROM clips"):
            if c["state"] in ("delivered", "cleared"):
                for dl in st.query("SELECT * FROM deliveries WHERE clip_id = ?", (c["id"],)):
                    f = targets[dl["target"]] / dl["key"]
                    if dl["state"] != "delivered" or not f.is_file() or sha(f) != c["sha256"]:
                        problems.append(f"clip {c['id']} marked {c['state']} but its copy on "
                                        f"{dl['target']} is not there verified")
            if c["state"] != "cleared":
                problems.append(f"clip {c['id']} {c['safe_name']} left in state {c['state']}")
        for a in st.query("SELECT detail FROM audit WHERE action = 'cleared'"):
            detail = json.loads(a["detail"])
            for name, root in targets.items():
                if target_copies(root)[detail["sha256"]] != 1:
                    problems.append(f"{detail['name']} erased without exactly one verified "
                                    f"copy on {name}")
        for d in st.query("SELECT id, state FROM dockings"):
            if d["state"] != "delivered":
                problems.append(f"docking {d['id']} left {d['state']}")
        problems.extend(st.verify_audit_chain())
    if list(rec.rglob("*.MP4")):
        problems.append("recorder not cleared although everything was delivered")
    return problems




