"""Helpers for the "what officers and IT see stays true" tests: a real ``dockd run`` subprocess
with its own config file (and environment), and read-outs of its state database."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dockd.config import Config, load
from dockd.store import State
from tests.conftest import dockd_cmd, wait_for


def write_config(workdir: Path, extra: str = "", *, ports: int = 4) -> Path:
    """A config file for a test daemon under ``workdir``: no web page (the port is shared by
    parallel tests), quick settling, ``extra`` TOML appended."""
    path = workdir / "dockd.toml"
    path.write_text(f"[dock]\nports = {ports}\n\n[offload]\nsettle_seconds = 0.5\n\n"
                    f"[web]\nenabled = false\n\n{extra}\n", encoding="utf-8")
    return path


def load_cfg(workdir: Path, config: Path) -> Config:
    return load(config, workdir=workdir)


class Dockd:
    """``dockd run --config C --workdir W`` as a subprocess."""

    def __init__(self, workdir: Path, config: Path, log: Path, env: dict[str, str] | None = None):
        self.workdir, self.config, self.log = workdir, config, log
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0

    def start(self, *, wait_ready: bool = True) -> Dockd:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                dockd_cmd("run", "--config", str(self.config), "--workdir", str(self.workdir)),
                stdout=fh, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            wait_for(lambda: " ready: watching" in self.text(), 60, 0.05, "daemon ready")
        return self

    def text(self) -> str:
        """The log written by this run only."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as fh:
            fh.seek(self.log_offset)
            return fh.read().decode("utf-8", "replace")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(timeout)
        return self.proc.returncode

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def db_query(workdir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with State(workdir / "state" / "dockd.db") as s:
        return s.query(sql, params)


def wait_db(workdir: Path, pred: Callable[[State], object], what: str,
            timeout: float = 90) -> object:
    def check() -> object:
        try:
            with State(workdir / "state" / "dockd.db") as s:
                return pred(s)
        except Exception:  # not there yet / busy
            return False

    return wait_for(check, timeout, 0.05, what)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(dockd_cmd(*args), capture_output=True, text=True, timeout=timeout)
