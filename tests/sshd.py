"""A throw-away OpenSSH server on 127.0.0.1 for tests and benchmarks.

    with SshdServer(tmp_path / "sshd") as server:
        server.root            # a directory the test user may write (the SFTP base dir)
        server.port, server.user, server.client_key, server.known_hosts

``SshdServer`` runs ``/usr/sbin/sshd -D -e -f <generated config> -p <free port>`` as the
current user, with a generated ed25519 host key, a generated ed25519 user key in its own
``AuthorizedKeysFile``, ``StrictModes no``, ``UsePAM no``, no passwords, and the SFTP
subsystem (``internal-sftp`` by default). It waits (bounded) until the server answers with
its SSH banner, and ``stop()`` ends the listener *and* every session it started (found
as the listener's descendants: sshd's per-connection children leave its process group).
``kill_sessions()`` ends the sessions only, as a dropped connection would; ``restart()``
brings the server back on the same port with the same keys.

Nothing here runs at import time. If ``sshd`` is missing, ``SshdMissing`` says that
``make test`` installs it (Debian packages ``openssh-server`` and ``openssh-client``).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 10.0
INSTALL_HINT = ("OpenSSH server not found at /usr/sbin/sshd: `make test` installs it "
                "(Debian packages openssh-server openssh-client)")


class SshdMissing(RuntimeError):
    """``sshd`` or ``ssh-keygen`` is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ssh_keygen(path: Path, comment: str = "dockd-test") -> Path:
    """Generate an unencrypted ed25519 key at ``path`` (``path.pub`` beside it)."""
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise SshdMissing(INSTALL_HINT)
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path


def known_hosts_line(host: str, port: int, pub_key: Path) -> str:
    """A ``known_hosts`` line for ``host:port`` with the public key in ``pub_key``."""
    kind, blob = pub_key.read_text().split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {kind} {blob}\n"


def _descendants(root: int) -> list[int]:
    """Every live descendant of process ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class SshdServer:
    """One sshd on 127.0.0.1 serving the current user with key authentication only."""

    def __init__(self, workdir: Path, *, port: int | None = None,
                 sftp_subsystem: str = "internal-sftp", extra_config: str = ""):
        if not os.access(SSHD, os.X_OK):
            raise SshdMissing(INSTALL_HINT)
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.root = self.workdir / "store"
        """A directory the user can write: use it as the SFTP target's base path."""
        self.root.mkdir(exist_ok=True)
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "id_ed25519"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.known_hosts = self.workdir / "known_hosts"
        self.config = self.workdir / "sshd_config"
        self.log_file = self.workdir / "sshd.log"
        self.sftp_subsystem = sftp_subsystem
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self._make_keys()
        self._write_config()

    # ------------------------------------------------------------------ set-up

    def _make_keys(self) -> None:
        if not self.host_key.exists():
            ssh_keygen(self.host_key, "dockd-test-host")
        if not self.client_key.exists():
            ssh_keygen(self.client_key, "dockd-test-user")
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        self.known_hosts.write_text(
            known_hosts_line(self.host, self.port, Path(f"{self.host_key}.pub")))

    def _write_config(self) -> None:
        root_login = "PermitRootLogin prohibit-password\n" if os.geteuid() == 0 else ""
        self.config.write_text(
            f"ListenAddress {self.host}\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.workdir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            f"{root_login}"
            f"AllowUsers {self.user}\n"
            "UseDNS no\n"
            "MaxStartups 64\n"
            "MaxSessions 64\n"
            "LogLevel VERBOSE\n"
            f"Subsystem sftp {self.sftp_subsystem}\n"
            f"{self.extra_config}")

    # ------------------------------------------------------------------ life cycle

    def start(self) -> SshdServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config), "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._wait_ready()
        log.debug("sshd listening on %s:%d (pid %d)", self.host, self.port, self.proc.pid)
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not answer on port {self.port} within "
                           f"{START_TIMEOUT} s:\n{self.log_tail()}")

    def session_pids(self) -> list[int]:
        """Processes sshd started for connections: every descendant of the listener (the
        per-connection children call setsid(), so the process group does not find them)."""
        if self.proc is None:
            return []
        return _descendants(self.proc.pid)

    def kill_sessions(self) -> int:
        """SIGKILL every connection's processes (the listener stays): a dropped link."""
        pids = self.session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def stop(self) -> None:
        """End the listener and every session, and wait for the listener to exit."""
        sessions = self.session_pids()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def restart(self) -> SshdServer:
        self.stop()
        return self.start()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def ssh_command(self, *args: str) -> list[str]:
        """``ssh`` argv that reaches this server non-interactively (for tests and benches)."""
        return ["ssh", *self.client_options(), "-p", str(self.port),
                f"{self.user}@{self.host}", *args]

    def client_options(self) -> list[str]:
        """``-o`` options for ssh/scp/sftp: this key, this known_hosts, no prompts."""
        return ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "IdentitiesOnly=yes",
                "-o", "GlobalKnownHostsFile=/dev/null", "-i", str(self.client_key)]

    def __enter__(self) -> SshdServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
