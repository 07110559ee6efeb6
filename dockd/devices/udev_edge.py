"""The only code that talks to libudev (pyudev, imported when first called).

:func:`list_block_properties` enumerates the block devices (the udev source's snapshots and
``dockd ports learn``); :func:`watch_block_events` starts pyudev's monitor thread, which
only hands each event's action, device node and ``ID_PATH`` to a callback (udev events are
hints). Nothing else of dockd is imported here, so ``dockd ports learn`` needs neither the
udev source nor watchdog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Stoppable(Protocol):
    def stop(self) -> None: ...


def list_block_properties() -> list[dict[str, str]]:
    """udev properties of every initialised block device (the real enumeration)."""
    import pyudev

    ctx = pyudev.Context()
    out = []
    for dev in ctx.list_devices(subsystem="block"):
        try:
            if not dev.is_initialized:
                continue
            out.append({str(k): str(v) for k, v in dev.properties.items()})
        except (OSError, KeyError):  # vanished while we looked
            continue
    return out


def watch_block_events(on_event: Callable[[str, str, str], None]) -> Stoppable:
    """Call ``on_event(action, devnode, id_path)`` from a monitor thread for every block
    device event; stop it with ``.stop()``. Raises when there is no netlink or libudev."""
    import pyudev

    ctx = pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(ctx)
    monitor.filter_by(subsystem="block")

    def reduce(device: Any) -> None:  # monitor thread: reduce and hand over, nothing else
        on_event(str(device.action or ""), str(device.device_node or ""),
                 str(device.properties.get("ID_PATH", "")))

    observer = pyudev.MonitorObserver(monitor, callback=reduce, name="udev-monitor")
    observer.daemon = True
    observer.start()
    stoppable: Stoppable = observer
    return stoppable
