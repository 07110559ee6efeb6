"""DNS rebinding (issue 11): the status server answers only requests that name one of the
dock's own hosts. Real HTTP over loopback with raw Host headers, as curl -H 'Host: ...'."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from dockd.config import ConfigError, from_dict
from dockd.status import web_hosts
from dockd.status.web import WebHandle, start_web
from tests.integration.test_status_data import Dock, build_dock


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Dock, WebHandle]]:
    dock = build_dock(tmp_path / "w")
    cfg = dataclasses.replace(dock.cfg, web=dataclasses.replace(
        dock.cfg.web, allowed_hosts=("dock-07.example.org", "10.1.2.3")))
    stop = threading.Event()
    handle = start_web(cfg, dock.db, stop, port=0)
    assert handle is not None
    try:
        yield dock, handle
    finally:
        stop.set()
        handle.stop()


def raw_get(port: int, path: str, host_lines: list[bytes]) -> tuple[int, bytes]:
    """GET with exactly the given Host header lines (none, one or several)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\n" + b"".join(host_lines)
                  + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("host", [b"attacker.example", b"attacker.example:8470",
                                  b"localhost.attacker.example", b"127.0.0.1.nip.io",
                                  b"dock-07.example.org.evil", b"LOCALHOST:99999",
                                  b"[::2]:8470", b"", b"local host"])
@pytest.mark.parametrize("path", ["/api/status", "/api/recorders", "/", "/metrics"])
def test_foreign_host_names_are_refused(served, host: bytes, path: str) -> None:
    _dock, handle = served
    status, body = raw_get(handle.port, path, [b"Host: " + host + b"\r\n"])
    assert status in (400, 421), (host, status)
    assert b"officer" not in body and b"serial" not in body


@pytest.mark.parametrize("host", [b"127.0.0.1", b"127.0.0.1:{port}", b"localhost",
                                  b"LocalHost.:{port}", b"[::1]:{port}", b"[::1]",
                                  b"dock-07.example.org", b"DOCK-07.example.org:{port}",
                                  b"10.1.2.3:{port}"])
def test_own_host_names_are_served(served, host: bytes) -> None:
    dock, handle = served
    host = host.replace(b"{port}", str(handle.port).encode())
    status, body = raw_get(handle.port, "/api/status", [b"Host: " + host + b"\r\n"])
    assert status == 200, (host, body[:200])
    assert json.loads(body)["dock"] == dock.cfg.dock.id


def test_missing_or_repeated_host_is_refused(served) -> None:
    _dock, handle = served
    one = f"Host: 127.0.0.1:{handle.port}\r\n".encode()
    assert raw_get(handle.port, "/api/status", [one])[0] == 200
    assert raw_get(handle.port, "/api/status", [one, b"Host: attacker.example\r\n"])[0] \
        in (400, 421)
    assert raw_get(handle.port, "/api/status", [])[0] in (400, 421)


def test_curl_with_a_rebinding_host(served) -> None:
    """The acceptance check, literally: curl -H 'Host: attacker.example' is refused."""
    import shutil
    import subprocess

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    _dock, handle = served
    url = f"http://127.0.0.1:{handle.port}/api/ports"

    def code(*extra: str) -> str:
        return subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}",
                               "--max-time", "10", *extra, url],
                              capture_output=True, text=True, timeout=30).stdout
    assert code("-H", "Host: attacker.example") == "421"
    assert code("-H", "Host: 127.0.0.1") == "200"
    assert code() == "200"


def test_bind_address_is_allowed_and_wildcards_are_not_names() -> None:
    assert "192.168.7.2" in web_hosts.allowed_hosts("192.168.7.2")
    assert web_hosts.allowed_hosts("0.0.0.0") == web_hosts.allowed_hosts("::") == \
        frozenset({"localhost", "127.0.0.1", "::1"})


@pytest.mark.parametrize("bad", ["*", "0.0.0.0", "a b", "http://dock", "dock/x", ""])
def test_bad_allowed_hosts_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="web.allowed_hosts"):
        from_dict({"web": {"allowed_hosts": [bad]}})
    assert from_dict({"web": {"allowed_hosts": ["dock-07", "10.0.0.5", "::1"]}})


def test_port_in_use_is_a_clear_error_and_leaks_no_socket(tmp_path) -> None:
    import gc
    import warnings

    from dockd.status.web import WebError

    dock = build_dock(tmp_path / "w")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cfg = dataclasses.replace(dock.cfg, web=dataclasses.replace(dock.cfg.web, port=port))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(WebError, match="cannot listen"):
                start_web(cfg, dock.db)
            gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
