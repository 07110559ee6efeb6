"""What the daemon needs from a device source, as one protocol.

Two sources exist: recorder trees under a ports directory (:class:`DirectorySource`, the
development and test dock) and USB block devices through udev (:class:`UdevSource`).
Only the udev one mounts recorders, so only it can unmount one whose copy is done
(``release``) or remount one read-write for a single step (``writable``). The daemon sees
both through :class:`DeviceSource`; :func:`open_source` builds the configured one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from .watch import DirectorySource

if TYPE_CHECKING:
    from ..config import Config
    from .udev import UdevSource

WritableFn = Callable[[str], AbstractContextManager[None]]
"""port -> a context manager inside which that port's recorder is writable."""


class DeviceSource(Protocol):
    """Docking events for the supervisor (``poll`` from its one thread)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def poll(self, timeout: float) -> Sequence[object]:
        """Events within ``timeout`` seconds (``Docked``, ``Undocked``, and the udev
        source's ``Foreign``, ``ForeignGone``, ``MountFailed``)."""
        ...

    def release(self, port: str) -> None:
        """The port's copy is complete: let the recorder go (unmount), if mounted."""
        ...

    def writable_for(self) -> WritableFn | None:
        """How a recorder is made writable for one step; None when no remount is needed."""
        ...


class DirectoryDevices:
    """Recorder trees under the ports directory: nothing to unmount or remount."""

    def __init__(self, inner: DirectorySource):
        self.inner = inner

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    def poll(self, timeout: float) -> Sequence[object]:
        return self.inner.poll(timeout)

    def release(self, port: str) -> None:
        """A directory needs no unmount."""

    def writable_for(self) -> WritableFn | None:
        return None


class UdevDevices:
    """USB recorders through udev, mounted read-only by the mount helper."""

    def __init__(self, inner: UdevSource):
        self.inner = inner

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    def poll(self, timeout: float) -> Sequence[object]:
        return self.inner.poll(timeout)

    def release(self, port: str) -> None:
        self.inner.release(port)

    def writable_for(self) -> WritableFn | None:
        return self.inner.writable


def open_source(cfg: Config) -> DeviceSource:
    """The device source ``cfg.devices.source`` names."""
    if cfg.devices.source == "udev":
        from .udev import UdevSource

        return UdevDevices(UdevSource(cfg))
    return DirectoryDevices(DirectorySource(cfg.paths.ports_dir, cfg.dock.ports,
                                            cfg.offload.settle_seconds))
