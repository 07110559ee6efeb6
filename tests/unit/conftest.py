"""The unit tier is pure: a unit test that starts a process or opens a network connection
fails, pointing at tests/integration (tests/README.md)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

_INET = (socket.AF_INET, socket.AF_INET6)


@pytest.fixture(autouse=True)
def _pure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def no_process(self: Any, args: Any, *a: Any, **kw: Any) -> None:
        raise AssertionError(f"a unit test may not start a process ({args!r}): it belongs in "
                             "tests/integration")

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guard(real: Any) -> Any:
        def connect(self: socket.socket, address: Any) -> Any:
            if self.family in _INET:
                raise AssertionError(f"a unit test may not open a network connection "
                                     f"({address!r}): it belongs in tests/integration")
            return real(self, address)
        return connect

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(socket.socket, "connect", guard(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(real_connect_ex))
    yield
