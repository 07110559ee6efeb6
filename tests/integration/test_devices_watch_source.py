"""The directory device source with a real watchdog observer: plug, unplug, re-plug, settle,
the slow re-scan (the pure core: tests/unit/test_devices_watch.py)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from dockd.devices.simulator import plug, unplug
from dockd.devices.watch import DirectorySource, Docked, Undocked, scan_ports


def make_tree(path: Path, marker: str = "x") -> Path:
    (path / "DCIM" / "20261123").mkdir(parents=True)
    (path / "ZFY_INFO.INI").write_text(marker)
    return path


def poll_until(source: DirectorySource, n: int, limit: float = 10.0) -> list:
    events: list = []
    deadline = time.monotonic() + limit
    while len(events) < n and time.monotonic() < deadline:
        events += source.poll(0.2)
    return events


def test_real_watchdog_plug_unplug_replug(tmp_path: Path) -> None:
    ports = tmp_path / "ports"  # does not exist yet
    source = DirectorySource(ports, 2, settle_seconds=0.3, rescan_seconds=60.0)
    with source:
        assert (ports / "port-01").is_dir() and (ports / "port-02").is_dir()
        assert source.poll(0.1) == []
        started = time.monotonic()
        plug(make_tree(tmp_path / "t1"), ports, 2)
        events = poll_until(source, 1)
        elapsed = time.monotonic() - started
        assert events == [Docked("port-02", ports / "port-02",
                                 scan_ports(ports, 2)["port-02"].fingerprint)]
        assert 0.3 <= elapsed < 5.0  # settled, and seen through the event, not the 60 s timer
        assert set(source.docked) == {"port-02"}

        unplug(ports, 2)
        started = time.monotonic()
        assert poll_until(source, 1) == [Undocked("port-02")]
        assert time.monotonic() - started < 5.0

        plug(make_tree(tmp_path / "t2"), ports, 2)
        first = poll_until(source, 1)
        unplug(ports, 2)
        plug(make_tree(tmp_path / "t3"), ports, 2)  # a different recorder on the same port
        events = first + poll_until(source, 2)
        assert [type(e) for e in events] == [Docked, Undocked, Docked]
        assert events[-1].fingerprint == scan_ports(ports, 2)["port-02"].fingerprint
    with pytest.raises(RuntimeError):  # stopped
        source.poll(0.0)
    source.stop()  # idempotent


def test_recorders_present_at_start_are_reported_after_settle(tmp_path: Path) -> None:
    ports = tmp_path / "ports"
    plug(make_tree(tmp_path / "t1"), ports, 1)
    source = DirectorySource(ports, 3, settle_seconds=0.4, rescan_seconds=60.0)
    source.start()
    try:
        started = time.monotonic()
        assert source.poll(0.1) == []  # not yet settled
        events = poll_until(source, 1)
        assert [e.port for e in events] == ["port-01"] and isinstance(events[0], Docked)
        assert time.monotonic() - started >= 0.35
    finally:
        source.stop()


def test_slow_rescan_finds_changes_without_any_event(tmp_path: Path) -> None:
    ports = tmp_path / "ports"
    source = DirectorySource(ports, 1, settle_seconds=0.0, rescan_seconds=0.3,
                             use_observer=False)
    source.start()
    try:
        plug(make_tree(tmp_path / "t1"), ports, 1)
        assert [type(e) for e in poll_until(source, 1, limit=5)] == [Docked]
        shutil.rmtree(ports / "port-01")  # vanishes entirely, not just empties
        assert poll_until(source, 1, limit=5) == [Undocked("port-01")]
    finally:
        source.stop()


def test_poll_waits_no_longer_than_asked(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path / "ports", 1, settle_seconds=0.0, rescan_seconds=60.0)
    source.start()
    try:
        started = time.monotonic()
        assert source.poll(0.3) == []
        assert 0.25 <= time.monotonic() - started < 2.0
    finally:
        source.stop()


def test_changes_inside_a_port_directory_are_seen_through_events(tmp_path: Path) -> None:
    """Filling and emptying a port directory in place (no rename) is seen without the timer."""
    ports = tmp_path / "ports"
    source = DirectorySource(ports, 1, settle_seconds=0.2, rescan_seconds=60.0)
    source.start()
    try:
        assert source.poll(0.3) == []
        port = ports / "port-01"
        (port / "DCIM").mkdir()  # e.g. a copy into the mount point
        started = time.monotonic()
        events = poll_until(source, 1)
        assert [type(e) for e in events] == [Docked] and time.monotonic() - started < 5.0
        (port / "DCIM").rmdir()  # emptied in place
        assert poll_until(source, 1) == [Undocked("port-01")]
    finally:
        source.stop()


def test_without_settle_a_recorder_present_at_start_is_reported_by_the_first_poll(
        tmp_path: Path) -> None:
    ports = tmp_path / "ports"
    plug(make_tree(tmp_path / "t1"), ports, 3)
    source = DirectorySource(ports, 3, settle_seconds=0.0, rescan_seconds=60.0,
                             use_observer=False)
    source.start()
    try:
        assert [e.port for e in source.poll(0.0)] == ["port-03"]
        assert source.poll(0.0) == []
    finally:
        source.stop()
