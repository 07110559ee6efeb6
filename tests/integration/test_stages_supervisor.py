"""The supervisor's port table (#13): events dispatched by type, one job per port, other
threads ask through a queue, retries and releases decided by the one owner."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockd.config import Config, for_workdir
from dockd.devices.udev import Docked as UdevDocked
from dockd.devices.udev import Foreign, ForeignGone, MountFailed
from dockd.devices.watch import Docked, Undocked
from dockd.errors import CopyError
from dockd.pipeline import DockingOutcome
from dockd.stages.supervisor import ClearDocked, RereadDocked, Supervisor
from dockd.store import State

FP = (0, 0, 0, ())  # a port view's fingerprint (unused here)


class FakePipeline:
    """Records what the supervisor asks of the stages."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.requested: list[int] = []
        self.finisher = SimpleNamespace(request=self.requested.append)
        self.copy_error: Exception | None = None
        self.copy_errors: list[Exception] = []  # one per call, first
        self.gate = threading.Event()
        self.gate.set()

    def copy_docking(self, port: str, root: Path, hints: Mapping[str, str],
                     should_stop: Any) -> DockingOutcome:
        self.calls.append(("copy", port))
        self.hints = dict(hints)
        self.gate.wait(30)
        if self.copy_errors:
            raise self.copy_errors.pop(0)
        if self.copy_error is not None:
            raise self.copy_error
        return DockingOutcome(7)

    def clear(self, port: str, root: Path) -> None:
        self.calls.append(("clear", port))

    def reread_health(self, port: str, root: Path, hints: Mapping[str, str]) -> None:
        self.calls.append(("reread", port))

    def mark_interrupted(self, docking_id: int, why: str) -> None:
        self.calls.append(("interrupted", docking_id))

    def undocked(self, port: str) -> None:
        self.calls.append(("undocked", port))

    def profile(self, name: str) -> Any:
        return SimpleNamespace(clear_policy="never")


class FakeSource:
    def __init__(self) -> None:
        self.released: list[str] = []

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def poll(self, timeout: float) -> list[object]:
        return []

    def release(self, port: str) -> None:
        self.released.append(port)

    def writable_for(self) -> None:
        return None


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    cfg: Config = for_workdir(tmp_path)
    with State(cfg.paths.database) as st, ThreadPoolExecutor(2) as pool:
        s = Supervisor(cfg, st, FakePipeline(), FakeSource(), pool,  # type: ignore[arg-type]
                       threading.Event(), lambda: None)
        yield s
        s.pipeline.gate.set()  # type: ignore[attr-defined]


def settle(sup: Supervisor) -> None:
    """Turns of the supervisor loop until every job ended."""
    for _ in range(300):
        sup.serve()
        sup.reap()
        if not sup.jobs:
            return
        time.sleep(0.02)
    raise AssertionError(f"jobs still running: {sup.jobs}")


def port_row(sup: Supervisor, port: str) -> dict[str, Any]:
    row = sup.state.query_one("SELECT * FROM ports WHERE port = ?", (port,))
    assert row is not None
    return row


def test_events_are_dispatched_by_type(sup: Supervisor) -> None:
    sup.on_event(Foreign("port-01", "/dev/sdx", "1234", "5678", "S"))
    assert port_row(sup, "port-01")["state"] == "foreign"
    sup.on_event(ForeignGone("port-01"))
    assert port_row(sup, "port-01")["state"] == "empty"
    sup.on_event(MountFailed("port-02", "A1", "no filesystem"))
    assert port_row(sup, "port-02")["state"] == "error"
    assert port_row(sup, "port-02")["error"] == "no filesystem"
    sup.on_event(object())  # unknown: logged and ignored, the loop goes on
    assert sup.jobs == {} and sup.docked == {}


def test_a_docked_recorder_is_copied_then_finished_elsewhere_and_released(
        sup: Supervisor, tmp_path: Path) -> None:
    pipe: FakePipeline = sup.pipeline  # type: ignore[assignment]
    sup.on_event(Docked("port-01", tmp_path, FP))
    assert sup.docked == {"port-01": tmp_path} and "port-01" in sup.jobs
    sup.on_event(Docked("port-01", tmp_path, FP))  # announced twice: still one job
    settle(sup)
    assert pipe.calls == [("copy", "port-01")]
    assert pipe.requested == [7]  # the finisher signs, not the copy job
    assert sup.source.released == ["port-01"]  # type: ignore[attr-defined]


def test_a_udev_recorder_brings_its_properties_to_the_job(sup: Supervisor,
                                                          tmp_path: Path) -> None:
    pipe: FakePipeline = sup.pipeline  # type: ignore[assignment]
    sup.on_event(UdevDocked("port-03", tmp_path, FP, hints={"ID_SERIAL_SHORT": "U1"}))
    settle(sup)
    assert sup.hints["port-03"] == {"ID_SERIAL_SHORT": "U1"}
    assert pipe.hints == {"ID_SERIAL_SHORT": "U1"} and pipe.requested == [7]


def test_clearing_asked_from_another_thread_runs_as_the_ports_job(sup: Supervisor,
                                                                   tmp_path: Path) -> None:
    pipe: FakePipeline = sup.pipeline  # type: ignore[assignment]
    sup.docked["port-01"] = tmp_path
    sup.on_event(Docked("port-02", tmp_path, FP))
    pipe.gate.clear()  # port-02 is still copying

    def ask() -> None:  # the delivery thread, say
        sup.ask(ClearDocked())
        sup.ask(RereadDocked())

    asker = threading.Thread(target=ask)
    asker.start()
    asker.join()
    assert ("clear", "port-01") not in pipe.calls  # nothing happens outside the owner
    sup.serve()
    assert sup.jobs["port-01"].kind == "clear" and sup.jobs["port-02"].kind == "dock"
    pipe.gate.set()
    settle(sup)
    assert ("clear", "port-01") in pipe.calls and ("clear", "port-02") not in pipe.calls
    assert ("reread", "port-02") not in pipe.calls
    assert sup.source.released == ["port-02"]  # type: ignore[attr-defined]  # not for a clear


def test_a_failed_copy_is_retried_but_not_after_the_recorder_left(sup: Supervisor,
                                                                   tmp_path: Path) -> None:
    pipe: FakePipeline = sup.pipeline  # type: ignore[assignment]
    pipe.copy_error = CopyError("read error on the recorder")
    sup.on_event(Docked("port-01", tmp_path, FP))
    settle(sup)
    assert "port-01" in sup.retry_at
    assert port_row(sup, "port-01")["state"] == "error"
    assert sup.source.released == []  # type: ignore[attr-defined]
    sup.on_event(Undocked("port-01"))
    assert sup.retry_at == {} and sup.docked == {}
    assert ("undocked", "port-01") in pipe.calls


def test_undocked_while_copying_stops_the_job_and_interrupts(sup: Supervisor,
                                                              tmp_path: Path) -> None:
    pipe: FakePipeline = sup.pipeline  # type: ignore[assignment]
    pipe.gate.clear()
    sup.on_event(Docked("port-01", tmp_path, FP))
    sup.on_event(Undocked("port-01"))
    assert sup.jobs["port-01"].gone.is_set()
    sup.on_event(Docked("port-01", tmp_path, FP))  # back while the last job winds up
    assert sup.redocked == {"port-01"}
    pipe.copy_errors = [CopyError("stopped")]  # the first recorder's job, told to stop
    pipe.gate.set()
    settle(sup)
    # the recorder that came back got its own job; the stopped one is not retried
    assert [c for c in pipe.calls if c[0] == "copy"] == [("copy", "port-01")] * 2
    assert "port-01" not in sup.retry_at
    assert pipe.requested == [7]
