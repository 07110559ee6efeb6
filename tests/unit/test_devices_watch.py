"""The directory device source's pure core: reconcile, settle, scan (the source itself with a
real watchdog observer: tests/integration/test_devices_watch_source.py)."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dockd.devices.watch import (
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
