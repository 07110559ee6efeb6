"""Soak: a simulated dock under random dockings and faults for a bounded time (issue #10).

    .venv/bin/python bench/soak.py [--minutes 20] [--ports 8] [--serials 6] [--seed 1]
                                   [--workdir DIR] [--json]

Runs the real daemon (``dockd run``, a subprocess) on a directory-source dock with
``--ports`` ports, a primary local target and a required off-site SFTP target (a real
OpenSSH on 127.0.0.1, ``tests/sshd.py``), clearing on (``after_delivery``). For
``--minutes`` it docks and undocks recorders at random, and injects faults:

* recorder pulled out while it is being copied (and docked again later);
* a clip changed (appended to) right after docking, while it is copied;
* a second recorder with the *same serial* docked beside the first (same names and sizes,
  different bytes);
* ``kill -9`` of the daemon (restarted at once) and SIGTERM (restarted after it stopped);
* the off-site target down for a while (sshd stopped) and erroring (sessions killed).

Spoken-note analysis (Whisper) is off: on a shared 2-core box it would dominate the CPU;
it is tested on its own (tests/integration/test_notes.py). Read errors, a full staging disk, wrong bytes / lying checksums on a target and clock jumps
are covered state by state in ``tests/e2e/faults`` (they need in-process seams).

Then every fault is healed, every recorder still holding clips is docked again until it is
cleared (drain), the daemon is stopped, and the invariants are measured: clips lost
(neither on both targets nor still on the recorder), duplicates (a clip twice on a target),
premature erasures (a clip gone from a recorder, checked at every undocking, without its
verified copy on both targets), deadline misses, manifests verifying on both targets, and
the daemon's RSS and open file descriptors sampled every 2 s (per quarter of the run).
Exit status 0 only if lost, duplicates, premature erasures and deadline misses are 0 and
both targets verify.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
NAME = re.compile(r"^(?P<head>.+_)(?P<ts>\d{14})(?P<tail>_\d{4}\.MP4)$")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@dataclass
class Recorder:
    name: str
    serial: str
    home: Path  # where the tree lies while not docked
    template: Path
    files: dict[str, str] = field(default_factory=dict)  # rel path -> expected SHA-256
    port: int | None = None
    docked_at: float = 0.0
    twin_of: Recorder | None = None
    clock: int = 0


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="dockd-soak-")).absolute()
        self.faults: Counter[str] = Counter()
        self.dockings = 0
        self.premature = 0
        self.samples: list[tuple[float, int, int, int]] = []  # t, pid, rss kB, fds
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.index: dict[str, Counter[str]] = {"primary": Counter(), "offsite": Counter()}
        self.seen: dict[Path, str] = {}
        self.emptied: dict[int, float] = {}

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        from dockd.config import Config
        from dockd.devices.simulator import RecorderSpec, simulate_recorder
        from tests.sshd import SshdServer

        if self.work.exists():
            shutil.rmtree(self.work)
        (self.work / "pool").mkdir(parents=True)
        self.sshd = SshdServer(self.work / "sshd").start()
        self.ports_dir = self.work / "ports"
        self.ports_dir.mkdir()
        for n in range(1, self.args.ports + 1):
            (self.ports_dir / f"port-{n:02d}").mkdir()
        s = self.sshd
        self.config = self.work / "dockd.toml"
        self.config.write_text(f"""
[dock]
ports = {self.args.ports}
[offload]
settle_seconds = 0.3
min_free = "0"
workers = 4
[delivery]
retry_seconds = 2
[[targets]]
name = "primary"
kind = "local"
path = "{self.work}/target"
[[targets]]
name = "offsite"
kind = "sftp"
host = "{s.host}"
port = {s.port}
user = "{s.user}"
key_file = "{s.client_key}"
known_hosts = "{s.known_hosts}"
path = "{s.root}"
[notes]
enabled = false
[[profiles]]
name = "zfy-generic"
clear_policy = "after_delivery"
""")
        self.dockd("keygen")
        c = Config()
        self.recorders: list[Recorder] = []
        for i in range(self.args.serials):
            serial = f"S{i:07d}"
            tpl = simulate_recorder(self.work / "templates" / serial,
                                    RecorderSpec(serial=serial, segments=3,
                                                 segment_seconds=1.0,
                                                 target_size=self.args.recorder_mib * MIB),
                                    profile=c.profiles[0], tz=c.tz, tools=c.tools).root
            self.recorders.append(Recorder(serial, serial, self.work / "pool" / serial, tpl))
            twin = Recorder(f"{serial}-twin", serial, self.work / "pool" / f"{serial}-twin",
                            tpl)
            twin.twin_of = self.recorders[-1]
            self.recorders.append(twin)
        for r in self.recorders:
            shutil.copytree(r.template, r.home, ignore=shutil.ignore_patterns("*.MP4"))

    def dockd(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "dockd.cli", *args, "--config", str(self.config),
                        "--workdir", str(self.work)], check=True, capture_output=True,
                       timeout=120)

    # ------------------------------------------------------------------ the daemon

    def start_daemon(self) -> None:
        log = (self.work / "daemon.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dockd.cli", "run", "--config", str(self.config),
             "--workdir", str(self.work)], stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def sampler(self, stop: threading.Event) -> None:
        t0 = time.monotonic()
        while not stop.wait(2.0):
            proc = self.proc
            if proc is None or proc.poll() is not None:
                continue
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
                fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            except (OSError, AttributeError):
                continue
            self.samples.append((time.monotonic() - t0, proc.pid, rss, fds))

    # ------------------------------------------------------------------ recorders

    def record(self, r: Recorder) -> None:
        """New footage on ``r``: the template's clips under new times, unique bytes (a twin
        records the same names and sizes as its sibling, different bytes)."""
        if r.twin_of is not None and r.twin_of.files:
            names = sorted(r.twin_of.files)
        else:
            r.clock += 1
            names = []
            for p in sorted(r.template.rglob("*.MP4")):
                m = NAME.match(p.name)
                assert m, p.name
                ts = f"2030{(r.clock // 86400) % 12 + 1:02d}{r.clock % 28 + 1:02d}" \
                     f"{self.rng.randrange(24):02d}{self.rng.randrange(60):02d}" \
                     f"{self.rng.randrange(60):02d}"
                names.append(str(p.parent.relative_to(r.template) / (m["head"] + ts + m["tail"])))
        tpl = sorted(r.template.rglob("*.MP4"))
        for rel, src in zip(names, tpl * 2, strict=False):
            data = bytearray(src.read_bytes())
            data[-64:] = self.rng.randbytes(64)  # inside the trailing free box
            dest = r.home / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(bytes(data))
            r.files[rel] = hashlib.sha256(data).hexdigest()

    def plug(self, r: Recorder, port: int) -> None:
        from dockd.devices.simulator import plug

        if not r.files:
            self.record(r)
        plug(r.home, self.ports_dir, port)
        r.port, r.docked_at = port, time.monotonic()
        self.dockings += 1
        if self.rng.random() < self.args.p_change:
            self.faults["clip changed while copying"] += 1
            rel = self.rng.choice(sorted(r.files))
            path = self.ports_dir / f"port-{port:02d}" / rel

            def change() -> None:
                time.sleep(self.rng.uniform(0.3, 0.6))
                with self.lock:
                    if r.port != port or not path.exists():
                        return
                    try:
                        with path.open("ab") as fh:
                            fh.write(self.rng.randbytes(4096))
                        r.files[rel] = sha(path)
                    except OSError:
                        pass  # erased meanwhile: then nothing changed

            threading.Thread(target=change, daemon=True).start()

    def unplug(self, r: Recorder) -> None:
        from dockd.devices.simulator import unplug

        with self.lock:
            assert r.port is not None
            unplug(self.ports_dir, r.port, keep_to=r.home)
            self.emptied[r.port] = time.monotonic()  # a port stays empty a moment
            r.port = None
            self.check_erased(r)

    def check_erased(self, r: Recorder) -> None:
        """Every clip gone from the recorder must have its verified copy on both targets."""
        self.refresh_index()
        for rel, digest in list(r.files.items()):
            if (r.home / rel).exists():
                continue
            if not all(self.index[t][digest] >= 1 for t in self.index):
                self.premature += 1
                print(f"PREMATURE ERASURE: {r.name} {rel} {digest}", file=sys.stderr)
            del r.files[rel]

    def refresh_index(self) -> None:
        for name, root in (("primary", self.work / "target"), ("offsite", self.sshd.root)):
            for p in root.rglob("*.MP4"):
                if "_quarantine" in p.parts or p in self.seen:
                    continue
                try:
                    self.seen[p] = digest = sha(p)
                except OSError:
                    continue
                self.index[name][digest] += 1

    # ------------------------------------------------------------------ the run

    def docked_state(self, r: Recorder) -> str:
        """'copying' while the recorder still has clips not yet copied, else 'idle'."""
        from dockd.store import open_readonly

        try:
            with open_readonly(self.work / "state" / "dockd.db") as st:
                row = st.query_one("SELECT count(*) AS n FROM clips c JOIN dockings d ON "
                                   "d.id = c.docking_id WHERE d.port = ? AND d.state = "
                                   "'offloading' AND c.state = 'discovered'",
                                   (f"port-{r.port:02d}",))
        except Exception:
            return "idle"
        return "copying" if row and row["n"] else "idle"

    def tick(self) -> None:
        a = self.args
        docked = {r.port: r for r in self.recorders if r.port is not None}
        for r in list(docked.values()):
            if not any((self.ports_dir / f"port-{r.port:02d}" / rel).exists()
                       for rel in r.files) and time.monotonic() - r.docked_at > 2:
                self.unplug(r)  # cleared: the officer takes it
            elif self.rng.random() < a.p_pull and self.docked_state(r) == "copying":
                self.faults["recorder pulled out while copying"] += 1
                self.unplug(r)
            elif time.monotonic() - r.docked_at > a.max_docked:
                self.unplug(r)
        free = [n for n in self.free_ports()]
        for n in free:
            if self.rng.random() > a.p_dock:
                continue
            idle = [r for r in self.recorders if r.port is None and
                    (r.twin_of is None or r.twin_of.port is not None)]
            if not idle:
                break
            r = self.rng.choice(idle)
            if r.twin_of is not None:
                if self.rng.random() > a.p_twin:
                    continue
                self.faults["same serial in two ports"] += 1
            self.plug(r, n)

    def log(self, msg: str) -> None:
        if self.args.verbose:
            print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    def free_ports(self) -> list[int]:
        """Empty ports whose recorder left more than 2 s ago (nobody swaps faster; the
        directory source sees a port empty before it sees the next recorder)."""
        used = {r.port for r in self.recorders if r.port is not None}
        now = time.monotonic()
        return [n for n in range(1, self.args.ports + 1)
                if n not in used and now - self.emptied.get(n, 0.0) > 2.0]

    def fault(self) -> None:
        kind = self.rng.choice(["kill -9", "SIGTERM", "target down", "target erroring"])
        self.faults[kind] += 1
        if kind == "kill -9":
            self.stop_daemon(signal.SIGKILL)
            self.start_daemon()
        elif kind == "SIGTERM":
            self.stop_daemon(signal.SIGTERM)
            self.start_daemon()
        elif kind == "target down":
            self.sshd.stop()
            time.sleep(self.rng.uniform(3, self.args.down_max))
            self.sshd.restart()
        else:
            self.sshd.kill_sessions()

    def run(self) -> dict[str, Any]:
        a = self.args
        t_start = time.monotonic()
        self.setup()
        stop = threading.Event()
        sampler = threading.Thread(target=self.sampler, args=(stop,), daemon=True)
        self.start_daemon()
        sampler.start()
        end = time.monotonic() + a.minutes * 60
        next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5) * a.fault_every
        while time.monotonic() < end:
            self.tick()
            if time.monotonic() >= next_fault:
                self.fault()
                next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5) * a.fault_every
            time.sleep(0.25)
        drained = self.drain()
        self.stop_daemon(signal.SIGTERM)
        stop.set()
        sampler.join()
        self.sshd.stop()
        return self.report(time.monotonic() - t_start, drained)

    def drain(self) -> bool:
        """Heal everything, dock every recorder still holding clips until it is cleared."""
        self.args.p_change = 0.0  # healed: nothing writes to the recorders any more
        for r in self.recorders:
            if r.port is not None:
                self.unplug(r)
        deadline = time.monotonic() + self.args.drain_minutes * 60
        while time.monotonic() < deadline:
            waiting = [r for r in self.recorders if r.files and r.port is None]
            docked = [r for r in self.recorders if r.port is not None]
            if not waiting and not docked:
                return True
            for r in docked:
                if not any((self.ports_dir / f"port-{r.port:02d}" / rel).exists()
                           for rel in r.files) and time.monotonic() - r.docked_at > 2:
                    self.unplug(r)
                elif time.monotonic() - r.docked_at > 20:
                    # a clip changed after dockd had checked it is kept (it differs from the
                    # delivered copy) and read again only at the next docking: re-dock
                    self.unplug(r)
            for n in self.free_ports():
                if not waiting:
                    break
                r = waiting.pop(0)
                if r.twin_of is not None and r.twin_of.port is not None:
                    continue  # twins one after the other here
                self.plug(r, n)
                self.log(f"drain: {r.name} docked in port-{n:02d} ({len(r.files)} clips)")
            time.sleep(0.5)
        for r in self.recorders:  # what is still docked is taken out (and counted)
            if r.port is not None:
                self.unplug(r)
        return False

    def report(self, seconds: float, drained: bool) -> dict[str, Any]:
        from dockd.integrity.verify import verify_path
        from dockd.store import State

        self.refresh_index()
        lost = 0
        for r in self.recorders:
            for rel, digest in r.files.items():
                on_rec = (r.home / rel).exists()
                if not on_rec and not all(self.index[t][digest] for t in self.index):
                    lost += 1
        still_on_recorders = sum(len(r.files) for r in self.recorders)
        left = [f"{r.name}:{rel}" for r in self.recorders for rel in r.files][:5]
        duplicates = sum(n - 1 for idx in self.index.values() for n in idx.values() if n > 1)
        with State(self.work / "state" / "dockd.db") as st:
            clips = st.query("SELECT state, size, deadline_at, delivered_at FROM clips")
            misses = sum(1 for c in clips if c["delivered_at"] and c["deadline_at"] and
                         c["delivered_at"] > c["deadline_at"])
            alerts = Counter(r["kind"] for r in st.query("SELECT kind FROM alerts"))
            states = Counter(c["state"] for c in clips)
            audit = st.verify_audit_chain()
        from dockd.integrity.keys import own_key

        mine = own_key(self.work / "keys" / "dock.pub")
        verified = {name: verify_path(root, mine) for name, root in
                    (("primary", self.work / "target"), ("offsite", self.sshd.root))}
        quarters: list[dict[str, Any]] = []
        if self.samples:
            span = max(s[0] for s in self.samples) or 1.0
            for q in range(4):
                part = [s for s in self.samples if q * span / 4 <= s[0] <= (q + 1) * span / 4]
                if part:
                    quarters.append({"rss_mib_max": round(max(s[2] for s in part) / 1024, 1),
                                     "fds_max": max(s[3] for s in part)})
        injected = sum(self.faults.values())
        ok = lost == 0 and duplicates == 0 and self.premature == 0 and misses == 0 and \
            all(v.ok for v in verified.values()) and not audit and drained
        return {
            "ok": ok, "minutes": self.args.minutes, "wall_s": round(seconds, 1),
            "ports": self.args.ports, "dockings": self.dockings,
            "clips": sum(states.values()), "clip_states": dict(states),
            "bytes": sum(c["size"] or 0 for c in clips),
            "faults_injected": injected, "faults_survived": injected if ok else None,
            "faults": dict(self.faults), "clips_lost": lost, "duplicates": duplicates,
            "premature_erasures": self.premature, "deadline_misses": misses,
            "still_on_recorders_after_drain": still_on_recorders, "left": left,
            "drained": drained,
            "targets_verify": {k: v.ok for k, v in verified.items()},
            "verify_problems": {k: v.problems[:5] for k, v in verified.items()},
            "audit_chain_ok": not audit, "alerts": dict(alerts),
            "rss_peak_mib": round(max((s[2] for s in self.samples), default=0) / 1024, 1),
            "fds_peak": max((s[3] for s in self.samples), default=0),
            "by_quarter": quarters, "daemon_processes": len({s[1] for s in self.samples}),
            "workdir": str(self.work),
        }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--ports", type=int, default=8)
    p.add_argument("--serials", type=int, default=6)
    p.add_argument("--recorder-mib", type=int, default=3, help="footage per docking")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fault-every", type=float, default=None,
                   help="seconds between daemon/target faults (default: run/12, 10..60)")
    p.add_argument("--p-dock", type=float, default=0.2)
    p.add_argument("--p-pull", type=float, default=0.05)
    p.add_argument("--p-change", type=float, default=0.15)
    p.add_argument("--p-twin", type=float, default=0.3)
    p.add_argument("--max-docked", type=float, default=60.0)
    p.add_argument("--down-max", type=float, default=15.0)
    p.add_argument("--drain-minutes", type=float, default=3.0)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.fault_every is None:
        args.fault_every = min(60.0, max(10.0, args.minutes * 60 / 12))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    soak = Soak(args)
    try:
        res = soak.run()
    finally:
        if soak.proc is not None and soak.proc.poll() is None:
            soak.proc.kill()
        sshd = getattr(soak, "sshd", None)
        if sshd is not None:
            sshd.stop()
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:32} {v}")
    if not args.keep and res["ok"]:
        shutil.rmtree(soak.work, ignore_errors=True)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
