"""Recorder drivers: who is this recorder, whom does it belong to, and how healthy is it.

A driver is anything with the small :class:`RecorderDriver` protocol. The
:class:`DriverRegistry` asks every registered driver how well it ``match``-es a docked
recorder (0 = not mine, higher = more specific) and the most specific one wins; ties go
to the driver registered first. :func:`registry_from_config` registers one
:class:`ProfileDriver` per configured profile and then :class:`GenericMassStorageDriver`,
which takes any directory. :class:`FakeDriver` serves tests, as httpx ships ``MockTransport``.

Clip naming and clip folders belong to the profile (``RecorderSnapshot.profile``), not to
driver code: the ingest side looks the profile up by name.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from ..config import Config, ProfileConfig
from ..errors import DockdError, RecorderGone
from ..model import Finding, RecorderHealth, RecorderIdentity, RecorderSnapshot
from . import infofile
from .infofile import get_field

log = logging.getLogger(__name__)

SCORE_INFO_FILE = 10
SCORE_MODEL_MATCH = 10
SCORE_GENERIC = 1
SCORE_NAMES = 5
"""No info file, but clip names that the profile's pattern reads a serial from."""
NAMES_SAMPLE = 200

DEVICE_TIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y/%m/%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y%m%d%H%M%S",
    "%Y-%m-%d %H:%M:%S.%f",
)

EARLIEST_PLAUSIBLE = datetime(2000, 1, 1, tzinfo=UTC)
"""An info file mtime before this is a recorder that lost its clock, not a dock time."""

FUTURE_TOLERANCE = timedelta(minutes=5)


@runtime_checkable
class RecorderDriver(Protocol):
    """What the device layer needs from a recorder driver."""

    name: str

    def match(self, root: Path, hints: Mapping[str, str]) -> int:
        """How specifically this driver handles the recorder at ``root``; 0: not at all."""
        ...

    def snapshot(self, root: Path, hints: Mapping[str, str], *, now: datetime) -> RecorderSnapshot:
        """Identity and health of the recorder, read before any clip is copied."""
        ...


# --------------------------------------------------------------------------- pure helpers


def parse_battery(value: str) -> int | None:
    """``"87"``/``"87%"`` -> 87; anything else (empty, garbage, out of 0..100) -> None."""
    text = value.strip().rstrip("%").strip()
    if not text.isascii() or not text.isdigit():
        return None
    percent = int(text)
    return percent if 0 <= percent <= 100 else None


def parse_device_time(value: str, tz: ZoneInfo) -> datetime | None:
    """The recorder's local clock reading (``DeviceTime``) as an aware UTC datetime."""
    text = value.strip()
    for fmt in DEVICE_TIME_FORMATS:
        try:
            local = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return local.replace(tzinfo=tz).astimezone(UTC)
    return None


def clock_reference(mtime: float | None, now: datetime) -> datetime:
    """The dock time at which the recorder wrote its info file, or ``now`` when implausible.

    Assumption: the recorder rewrites its info file (with ``DeviceTime``) when it is
    docked, and the file's mtime is the *dock's* clock at that moment (the host stamps it,
    or the recorder stamps it from a host-synchronised clock, as the simulator does). Then
    ``DeviceTime - mtime`` is the recorder's offset even if the file was read later. An
    mtime before 2000 or in the dock's future cannot be a dock time; ``now`` is used instead.
    """
    if mtime is None:
        return now
    try:
        ref = datetime.fromtimestamp(mtime, UTC)
    except (OverflowError, OSError, ValueError):
        return now
    if ref < EARLIEST_PLAUSIBLE or ref > now + FUTURE_TOLERANCE:
        return now
    return ref


def storage_of(root: Path) -> tuple[int | None, int | None]:
    """(total, free) bytes of the filesystem holding ``root``; (None, None) if unknown."""
    try:
        st = os.statvfs(root)
    except OSError:
        return None, None
    if st.f_blocks == 0:  # a driver that does not report sizes (fusefat): unknown, not full
        return None, None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def serial_from_hints(hints: Mapping[str, str], root: Path) -> str:
    """The serial udev reported (``ID_SERIAL_SHORT``, ``ID_SERIAL``), else the root's name."""
    for key in ("ID_SERIAL_SHORT", "ID_SERIAL"):
        value = _printable(hints.get(key, ""))
        if value:
            return value
    return root.name


def find_info_file(root: Path, name: str) -> Path | None:
    """The regular file at ``root`` whose name equals ``name`` ignoring case (FAT is case-blind)."""
    wanted = name.casefold()
    try:
        with os.scandir(root) as it:
            candidates = sorted(e.name for e in it
                                if e.name.casefold() == wanted and e.is_file(follow_symlinks=False))
    except OSError:
        return None
    if not candidates:
        return None
    return root / (name if name in candidates else candidates[0])


def identity_from_names(root: Path, profile: ProfileConfig,
                        sample: int = NAMES_SAMPLE) -> tuple[str, str] | None:
    """(serial, officer number) from the clip names, through the profile's named groups
    ``serial`` and ``officer`` (``<serial>_<officer>_<time>_<seq>``): the value most clips
    carry. None when the pattern has no ``serial`` group or no clip name matches it."""
    from ..ingest.scan import scan_recorder

    rx = profile.regex
    if "serial" not in rx.groupindex:
        return None
    scan = scan_recorder(root, profile, max_files=sample)
    serials: Counter[str] = Counter()
    officers: Counter[str] = Counter()
    for e in scan.entries:
        m = rx.match(e.rel_path.rsplit("/", 1)[-1])
        if not m:
            continue
        serial = _printable(m.group("serial") or "")
        if not serial:
            continue
        serials[serial] += 1
        for key in ("officer", "officer_no"):
            if key in rx.groupindex and m.group(key):
                officers[_printable(m.group(key))] += 1
                break
    if not serials:
        return None
    if len(serials) > 1:
        log.warning("recorder at %s: clip names carry %d serials %s; using the most common",
                    root, len(serials), sorted(serials)[:5])
    officer = officers.most_common(1)[0][0] if officers else ""
    return serials.most_common(1)[0][0], officer


def fs_findings(hints: Mapping[str, str]) -> list[Finding]:
    """A finding when the read-only fsck of the recorder (hint ``DOCKD_FSCK``) found errors:
    a damaged card may show unreadable folders as empty or files as missing, so this docking
    may not hold everything the recorder recorded."""
    verdict = (hints.get("DOCKD_FSCK") or "").strip().lower()
    if verdict not in ("errors", "failed"):
        return []
    detail = (hints.get("DOCKD_FSCK_DETAIL") or "").strip()[:500]
    return [Finding("filesystem_errors", "warning",
                    f"the recorder's filesystem check reported {verdict}: footage in damaged "
                    "areas may be missing from this docking; keep the recorder for inspection",
                    {"fsck": verdict, "detail": detail})]


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable()).strip()


def _require_root(root: Path) -> None:
    if not root.is_dir():
        raise RecorderGone(f"recorder root {root} is gone")


# --------------------------------------------------------------------------- drivers


class ProfileDriver:
    """A recorder described by a profile: an info file at its root, clips per the profile."""

    def __init__(self, profile: ProfileConfig, tz: ZoneInfo):
        self.profile = profile
        self.tz = tz
        self.name = f"profile:{profile.name}"

    def __repr__(self) -> str:
        return f"ProfileDriver({self.profile.name!r})"

    def match(self, root: Path, hints: Mapping[str, str]) -> int:
        path = find_info_file(root, self.profile.info_file)
        if path is None:
            return self._match_names(root, hints)
        if not self.profile.match_models:
            return SCORE_INFO_FILE
        fields, _ = infofile.read_info(path, self.profile.info_encoding)
        model = get_field(fields, infofile.KEY_MODEL) or hints.get("ID_MODEL", "")
        folded = model.strip().casefold()
        if any(fnmatch.fnmatchcase(folded, p.casefold()) for p in self.profile.match_models):
            return SCORE_INFO_FILE + SCORE_MODEL_MATCH
        return 0

    def _match_names(self, root: Path, hints: Mapping[str, str]) -> int:
        """No info file: still this profile's recorder when its clip names say who it is (and
        the udev model, if the profile names models, matches)."""
        if self.profile.match_models:
            model = hints.get("ID_MODEL", "").strip().casefold()
            if not any(fnmatch.fnmatchcase(model, p.casefold())
                       for p in self.profile.match_models):
                return 0
        try:
            return SCORE_NAMES if identity_from_names(root, self.profile) else 0
        except RecorderGone:
            return 0

    def snapshot(self, root: Path, hints: Mapping[str, str], *, now: datetime) -> RecorderSnapshot:
        _require_aware(now)
        now = now.astimezone(UTC)
        _require_root(root)
        path = find_info_file(root, self.profile.info_file)
        fields: dict[str, str] = {}
        mtime: float | None = None
        findings: list[Finding] = fs_findings(hints)
        if path is None:
            log.warning("recorder at %s: info file %s not found; using udev hints",
                        root, self.profile.info_file)
            findings.append(Finding("info_missing", "warning",
                                    f"no info file {self.profile.info_file}; identity from udev",
                                    {"info_file": self.profile.info_file}))
        else:
            try:
                mtime = path.lstat().st_mtime
            except OSError:
                mtime = None
            if hints.get("DOCKD_FILE_TIMES") == "unreliable":
                mtime = None  # the clock offset is then measured against the dock's now
                findings.append(Finding(
                    "file_times_unreliable", "info",
                    f"file times read through {hints.get('DOCKD_FS_DRIVER', '?')} are not "
                    "trusted; clip times come from names and metadata",
                    {"fs_driver": hints.get("DOCKD_FS_DRIVER", "")}))
            fields, info_findings = infofile.read_info(path, self.profile.info_encoding)
            findings.extend(info_findings)
            for f in info_findings:
                log.warning("recorder at %s: %s (%s)", root, f.message, f.kind)
            if not fields:
                _require_root(root)

        def get(key: str) -> str:
            return _printable(get_field(fields, key))

        serial, officer_no = get(infofile.KEY_SERIAL), get(infofile.KEY_OFFICER_NO)
        info_serial = serial
        source = "clip names"
        if not serial or not officer_no:
            named = identity_from_names(root, self.profile)
            if named:
                log.info("recorder at %s: serial/officer taken from clip names (%s, %s)",
                         root, named[0], named[1] or "?")
                if not serial or serial == named[0]:  # never another recorder's officer
                    officer_no = officer_no or named[1]
                serial = serial or named[0]
        if not serial:
            serial, source = serial_from_hints(hints, root), "udev"
        if not info_serial and path is not None:
            findings.append(Finding("info_no_serial", "warning",
                                    f"info file gives no serial; using {serial!r} from {source}",
                                    {"serial": serial, "source": source}))
        identity = RecorderIdentity(
            serial=serial,
            officer_no=officer_no,
            officer_name=get(infofile.KEY_OFFICER_NAME),
            unit_no=get(infofile.KEY_UNIT_NO),
            unit_name=get(infofile.KEY_UNIT_NAME),
            model=get(infofile.KEY_MODEL) or _printable(hints.get("ID_MODEL", "")),
            vendor=get(infofile.KEY_VENDOR) or _printable(hints.get("ID_VENDOR", "")),
        )
        recorder_clock = parse_device_time(get(infofile.KEY_DEVICE_TIME), self.tz)
        total, free = storage_of(root)
        health = RecorderHealth(
            battery_percent=parse_battery(get(infofile.KEY_BATTERY)),
            firmware=get(infofile.KEY_FIRMWARE),
            storage_total=total,
            storage_free=free,
            recorder_clock=recorder_clock,
            clock_reference=clock_reference(mtime, now) if recorder_clock else None,
        )
        log.info("recorder %s at %s: profile %s, officer %s, battery %s, clock offset %s s",
                 serial, root, self.profile.name, identity.officer_no or "?",
                 health.battery_percent, health.clock_offset_s)
        return RecorderSnapshot(identity=identity, health=health, root=root,
                                profile=self.profile.name, driver=self.name,
                                raw_info=dict(fields), findings=tuple(findings))


class GenericMassStorageDriver:
    """Fallback for any directory: serial from udev hints, storage from statvfs, nothing else.

    ``RecorderSnapshot.profile`` is ``""``: no profile recognised this recorder.
    """

    name = "generic"

    def __repr__(self) -> str:
        return "GenericMassStorageDriver()"

    def match(self, root: Path, hints: Mapping[str, str]) -> int:
        return SCORE_GENERIC if root.is_dir() else 0

    def snapshot(self, root: Path, hints: Mapping[str, str], *, now: datetime) -> RecorderSnapshot:
        _require_aware(now)
        _require_root(root)
        total, free = storage_of(root)
        identity = RecorderIdentity(
            serial=serial_from_hints(hints, root),
            model=_printable(hints.get("ID_MODEL", "")),
            vendor=_printable(hints.get("ID_VENDOR", "")),
        )
        log.info("recorder %s at %s: generic mass storage", identity.serial, root)
        return RecorderSnapshot(identity=identity,
                                health=RecorderHealth(storage_total=total, storage_free=free),
                                root=root, profile="", driver=self.name,
                                findings=tuple(fs_findings(hints)))


SnapshotHandler = Callable[[Path, Mapping[str, str], datetime], RecorderSnapshot]


@dataclass
class FakeDriver:
    """A driver for tests: matches with ``score`` and answers a fixed snapshot (or a handler).

    A fixed snapshot is returned with ``root`` set to the root asked about. Every call is
    recorded in ``calls`` as ``(method, root)``.
    """

    result: RecorderSnapshot | SnapshotHandler
    score: int = 100
    name: str = "fake"
    roots: frozenset[Path] | None = None
    """Only match these roots (None: any)."""
    calls: list[tuple[str, Path]] = field(default_factory=list)

    def match(self, root: Path, hints: Mapping[str, str]) -> int:
        self.calls.append(("match", root))
        if self.roots is not None and root not in self.roots:
            return 0
        return self.score

    def snapshot(self, root: Path, hints: Mapping[str, str], *, now: datetime) -> RecorderSnapshot:
        self.calls.append(("snapshot", root))
        if isinstance(self.result, RecorderSnapshot):
            return replace(self.result, root=root)
        return self.result(root, hints, now)


# --------------------------------------------------------------------------- registry


class DriverRegistry:
    """An explicit, ordered list of drivers; the most specific match wins, ties: first."""

    def __init__(self, drivers: Sequence[RecorderDriver]):
        self.drivers: tuple[RecorderDriver, ...] = tuple(drivers)

    def scores(self, root: Path, hints: Mapping[str, str]) -> list[tuple[RecorderDriver, int]]:
        """Every driver with its score, in registration order. A failing driver scores 0."""
        out = []
        for driver in self.drivers:
            try:
                score = int(driver.match(root, hints))
            except Exception:  # a broken driver must not take the dock down
                log.exception("driver %s failed to match %s", driver.name, root)
                score = 0
            out.append((driver, score))
        return out

    def select(self, root: Path, hints: Mapping[str, str]) -> RecorderDriver:
        """The most specific driver for ``root``. Raises RecorderGone / DockdError if none."""
        best: RecorderDriver | None = None
        best_score = 0
        for driver, score in self.scores(root, hints):
            if score > best_score:
                best, best_score = driver, score
        if best is None:
            _require_root(root)
            raise DockdError(f"no recorder driver matches {root}")
        log.debug("recorder at %s: driver %s (score %d)", root, best.name, best_score)
        return best

    def snapshot(self, root: Path, hints: Mapping[str, str], *, now: datetime) -> RecorderSnapshot:
        """Select the driver for ``root`` and take its snapshot."""
        return self.select(root, hints).snapshot(root, hints, now=now)


def registry_from_config(cfg: Config) -> DriverRegistry:
    """One ProfileDriver per configured profile (in order), then the generic fallback."""
    tz = cfg.tz
    drivers: list[RecorderDriver] = [ProfileDriver(p, tz) for p in cfg.profiles]
    drivers.append(GenericMassStorageDriver())
    return DriverRegistry(drivers)
