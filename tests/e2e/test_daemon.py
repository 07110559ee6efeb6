"""The daemon as systemd runs it: READY=1 and watchdog pings over $NOTIFY_SOCKET, a clean
stop on SIGTERM, and log lines that name the port and the recorder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from dockd.config import for_workdir
from dockd.daemon import SystemdNotifier
from dockd.devices.simulator import plug
from tests.conftest import any_port_config, dockd_cmd, run_dockd, wait_for

pytestmark = pytest.mark.slow


def test_notifier_is_inactive_without_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert SystemdNotifier().notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert SystemdNotifier("x").watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert SystemdNotifier("x").watchdog_interval() is None


def test_ready_watchdog_stop_and_logs(workdir, make_recorder, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.5)
    run_dockd("keygen", "--workdir", str(workdir), check=True)
    cfg = for_workdir(workdir)
    rec = make_recorder(cfg, dest=workdir / "ports" / ".incoming" / "r", segments=2)
    log = tmp_path / "daemon.log"
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000",
               PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_PID", None)
    with log.open("wb") as fh:
        proc = subprocess.Popen(dockd_cmd("run", "--workdir", str(workdir), "--config",
                                          str(any_port_config(tmp_path))), stdout=fh,
                                stderr=subprocess.STDOUT, env=env)
    messages: list[str] = []

    def receive_until(pred, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
            if pred():
                return
        raise AssertionError(f"notify messages so far: {messages}")

    try:
        receive_until(lambda: any(m.startswith("READY=1") for m in messages))
        receive_until(lambda: sum(m == "WATCHDOG=1" for m in messages) >= 2, 10)
        plug(rec, cfg.paths.ports_dir, 1)
        wait_for(lambda: "delivered and verified" in log.read_text(), 60, 0.1, "delivery")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        receive_until(lambda: "STOPPING=1" in messages, 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    text = log.read_text()
    assert "dockd stopped" in text
    # the docking path (the pipeline facade and its stages; the supervisor logs by port)
    pipeline_lines = [ln for ln in text.splitlines() if " dockd.pipeline: " in ln or (
        " dockd.stages." in ln and " dockd.stages.supervisor: " not in ln)]
    assert len(pipeline_lines) >= 5
    for line in pipeline_lines:
        assert "port port-01 serial A1234567" in line, line


def test_run_refuses_to_start_when_the_web_port_is_taken(workdir, tmp_path):
    """Another program holds web.port: `dockd run` says so and exits, instead of running a
    dock without its page while a browser shows whatever else answers on that port."""
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    conf = tmp_path / "taken.toml"
    conf.write_text(f"[web]\nport = {port}\n", encoding="utf-8")
    try:
        r = run_dockd("run", "--workdir", str(workdir), "--config", str(conf), timeout=60)
    finally:
        squatter.close()
    assert r.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "web.port" in r.stderr
    assert "Traceback" not in r.stderr
    assert "ready: watching" not in r.stderr
