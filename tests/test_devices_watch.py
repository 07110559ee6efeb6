"""The directory device source: pure reconcile/settle, and a real watchdog run."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockd.devices.simulator import plug, unplug
from dockd.devices.watch import (
    DirectorySource,
    Docked,
    PortView,
    Undocked,
    reconcile,
    scan_ports,
    settle_step,
)

PORTS = ["port-01", "port-02", "port-03"]


def view(port: str, ino: int, names: tuple[str, ...] = ("DCIM",)) -> PortView:
    return PortView(port, Path("/ports") / port, (1, ino, 100, names))


# --------------------------------------------------------------------------- reconcile


def test_reconcile_docked_undocked_and_replug() -> None:
    old = {"port-02": view("port-02", 5), "port-03": view("port-03", 7)}
    new = {"port-01": view("port-01", 9), "port-02": view("port-02", 6)}
    assert reconcile(old, new) == [
        Docked("port-01", Path("/ports/port-01"), (1, 9, 100, ("DCIM",))),
        Undocked("port-02"),
        Docked("port-02", Path("/ports/port-02"), (1, 6, 100, ("DCIM",))),
        Undocked("port-03"),
    ]
    assert reconcile(new, new) == []
    assert reconcile({}, {}) == []


def test_top_level_names_are_part_of_the_fingerprint() -> None:
    old = {"port-01": view("port-01", 5, ("DCIM",))}
    new = {"port-01": view("port-01", 5, ("DCIM", "ZFY_INFO.INI"))}
    assert [type(e) for e in reconcile(old, new)] == [Undocked, Docked]


states = st.lists(
    st.dictionaries(st.sampled_from(PORTS), st.integers(1, 4)).map(
        lambda d: {p: view(p, ino) for p, ino in d.items()}),
    min_size=1, max_size=12)


def apply(tracked: dict[str, PortView], events) -> dict[str, PortView]:
    tracked = dict(tracked)
    for ev in events:
        if isinstance(ev, Undocked):
            assert ev.port in tracked, "undocked a port that was not docked"
            del tracked[ev.port]
        else:
            assert ev.port not in tracked, "docked a port twice"
            tracked[ev.port] = PortView(ev.port, ev.root, ev.fingerprint)
    return tracked


@settings(max_examples=300, deadline=None)
@given(states, st.data())
def test_reconcile_converges_whatever_updates_are_seen(history, data) -> None:
    """Scans may be repeated, skipped or seen out of order: the tracked set still follows."""
    seen = data.draw(st.lists(st.sampled_from(history), max_size=20), label="scans seen")
    tracked: dict[str, PortView] = {}
    previous: dict[str, PortView] = {}
    for scan in [*seen, history[-1]]:
        events = reconcile(previous, scan)
        ports = [e.port for e in events]
        assert ports == sorted(ports)
        tracked = apply(tracked, events)
        assert tracked == scan
        previous = scan
    assert reconcile(previous, previous) == []


# --------------------------------------------------------------------------- settle


def test_settle_reports_a_new_view_only_after_it_stayed_the_same() -> None:
    a = {"port-01": view("port-01", 5)}
    events, reported, pending = settle_step({}, {}, a, now=10.0, settle_seconds=2.0)
    assert events == [] and reported == {} and pending["port-01"][1] == 10.0
    events, reported, pending = settle_step(reported, pending, a, now=11.0, settle_seconds=2.0)
    assert events == [] and pending["port-01"][1] == 10.0
    changed = {"port-01": view("port-01", 5, ("DCIM", "MORE"))}
    events, reported, pending = settle_step(reported, pending, changed, now=12.5,
                                            settle_seconds=2.0)
    assert events == [] and pending["port-01"][1] == 12.5  # the clock starts again
    events, reported, pending = settle_step(reported, pending, changed, now=14.5,
                                            settle_seconds=2.0)
    assert [type(e) for e in events] == [Docked] and pending == {}
    assert reported == changed


def test_settle_reports_undocking_at_once_and_forgets_flicker() -> None:
    a = {"port-01": view("port-01", 5)}
    _, reported, pending = settle_step({}, {}, a, now=0.0, settle_seconds=0.0)
    assert reported == a and pending == {}
    events, reported, pending = settle_step(reported, pending, {}, now=0.1, settle_seconds=5.0)
    assert events == [Undocked("port-01")] and reported == {}
    # a tree that appears and vanishes within the settle time is never reported
    _, reported, pending = settle_step(reported, pending, a, now=1.0, settle_seconds=5.0)
    events, reported, pending = settle_step(reported, pending, {}, now=2.0, settle_seconds=5.0)
    assert events == [] and reported == {} and pending == {}


def test_settle_replug_is_undocked_then_docked_after_settle() -> None:
    a, b = {"port-01": view("port-01", 5)}, {"port-01": view("port-01", 6)}
    _, reported, pending = settle_step({}, {}, a, now=0.0, settle_seconds=0.0)
    events, reported, pending = settle_step(reported, pending, b, now=1.0, settle_seconds=1.0)
    assert events == [Undocked("port-01")] and reported == {}
    events, reported, pending = settle_step(reported, pending, b, now=2.0, settle_seconds=1.0)
    assert events == [Docked("port-01", b["port-01"].root, b["port-01"].fingerprint)]


# --------------------------------------------------------------------------- scan


def test_scan_ports(tmp_path: Path) -> None:
    assert scan_ports(tmp_path / "missing", 4) == {}
    ports = tmp_path / "ports"
    for name in ("port-01", "port-02", ".incoming-x", "port-05"):
        (ports / name).mkdir(parents=True)
    (ports / "port-02" / "DCIM").mkdir()
    (ports / "port-02" / "ZFY_INFO.INI").write_text("x")
    (ports / ".incoming-x" / "DCIM").mkdir()
    (ports / "port-05" / "DCIM").mkdir()  # beyond n_ports
    (ports / "port-03").write_text("a file, not a port")
    views = scan_ports(ports, 4)
    assert list(views) == ["port-02"]
    st_ = os.stat(ports / "port-02")
    assert views["port-02"].fingerprint == (st_.st_dev, st_.st_ino, st_.st_ctime_ns,
                                            ("DCIM", "ZFY_INFO.INI"))
    assert views["port-02"].root == ports / "port-02"
    assert scan_ports(ports, 4) == views  # nothing changed, nothing differs


# --------------------------------------------------------------------------- the source


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
