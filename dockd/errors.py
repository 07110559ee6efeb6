"""One exception tree for dockd.

Third-party errors are translated at the boundary (``raise X from exc``) so callers only
ever catch ``DockdError`` subclasses. Each error says whether retrying can help:
``retry`` (transient: try again later), ``fatal`` (never: alarm instead).
"""

from __future__ import annotations


class DockdError(Exception):
    """Base of every error dockd raises on purpose."""

    retry: bool = False


class ConfigError(DockdError):
    """The configuration is invalid. ``problems`` lists every problem, each with its key path."""

    def __init__(self, problems: list[str], config: object = None):
        self.problems = list(problems)
        self.config = config  # what could be built (defaults where a value was bad), or None
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class StateError(DockdError):
    """The state database refused an operation (bad transition, schema too new, ...)."""


class TransitionError(StateError):
    """A clip was asked to move along an edge the state machine does not have,
    or it was no longer in the state the caller expected (someone else moved it)."""


class RecorderGone(DockdError):
    """The recorder disappeared (unplugged) while we were reading it. Retry at next docking."""

    retry = True


class SourceChanged(RecorderGone):
    """A clip's file on the recorder changed (grew, shrank) while it was copied. The recorder
    may well still be there: settle and copy the clip again rather than end the docking."""


class CopyError(DockdError):
    """A clip could not be copied to staging (I/O error, short read, hash mismatch)."""

    retry = True


class StagingFull(CopyError):
    """The staging disk has no room for the clip. Nothing is lost; retried when space frees up."""


class HostileName(DockdError):
    """A name on the recorder would escape the staging area or is not a regular file."""


class ProbeError(DockdError):
    """exiftool/ffprobe could not read a clip. The clip is kept and flagged, never dropped."""


class SigningError(DockdError):
    """The signing key is missing, unreadable, or has unsafe permissions."""


class VerifyError(DockdError):
    """A delivered file or manifest does not match its signature or hash."""


class DeliveryError(DockdError):
    """Delivery to a storage target failed. ``retry`` says whether trying later may help."""

    def __init__(self, message: str, *, retry: bool = True, retry_after: float | None = None,
                 target_state: bool = False):
        super().__init__(message)
        self.retry = retry or target_state
        self.retry_after = retry_after
        self.target_state = target_state
        """The target itself is unusable (read-only, not a directory, permission, a missing
        key or credentials, authentication refused): retried with backoff and alarmed, unlike
        a store that refuses this content (``retry=False``)."""


class DeliveryCancelled(DeliveryError):
    """An upload stopped because dockd is stopping: not a failure, resumed after restart."""

    def __init__(self, message: str = "dockd is stopping"):
        super().__init__(message, retry=True)
