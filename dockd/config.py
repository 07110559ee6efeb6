"""Configuration: TOML (stdlib ``tomllib``) into frozen dataclasses.

The dataclasses below are the one schema. ``load()`` reports *every* problem at once, each
with its key path (``targets[0].path: ...``); unknown keys are errors, never ignored.
``config.example.toml`` documents every key and is checked against this schema by a test.

``for_workdir(dir)`` is the ``--workdir`` shorthand: state, staging, keys, ports and a local
target all under one directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .config_types import ByteSize as ByteSize
from .config_types import build, dataclass_keys, parse_bandwidth
from .config_types import parse_size as parse_size
from .errors import ConfigError
from .status.web_hosts import bad_allowed_hosts

DEFAULT_FILE_PATTERN = (
    r"^(?P<serial>[A-Za-z0-9]+)_(?P<officer>[A-Za-z0-9]+)_(?P<start>\d{14})_(?P<seq>\d+)"
    r"\.(?P<ext>[A-Za-z0-9]+)$"
)

@dataclass(frozen=True)
class DockConfig:
    id: str = "dock-01"
    """Identifier of this docking station; written into every manifest."""
    name: str = ""
    ports: int = 8
    """Number of ports (port-01 .. port-NN) the simulated/directory device source watches."""
    timezone: str = "Asia/Shanghai"
    """Time zone in which recorders write local times (file names, info file)."""


@dataclass(frozen=True)
class PathsConfig:
    state_dir: Path = Path("/var/lib/dockd")
    staging_dir: Path = Path("/var/lib/dockd/staging")
    ports_dir: Path = Path("/run/dockd/ports")
    key_file: Path = Path("/var/lib/dockd/keys/dock.key")
    public_key_file: Path = Path("/var/lib/dockd/keys/dock.pub")

    @property
    def database(self) -> Path:
        return self.state_dir / "dockd.db"


@dataclass(frozen=True)
class ToolsConfig:
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    exiftool: str = "exiftool"
    probe_processes: int = 2
    """exiftool processes probing one docking's waiting clips in parallel (a second one
    starts only when more than one batch waits)."""


@dataclass(frozen=True)
class OffloadConfig:
    workers: int = 4
    chunk_size: ByteSize = ByteSize(4 * 1024 * 1024)
    verify_staged: bool = True
    settle_seconds: float = 1.0
    min_free: ByteSize = ByteSize(256 * 1024 * 1024)


@dataclass(frozen=True)
class DeliveryConfig:
    deadline_hours: float = 24.0
    keep_staged: bool = False
    retry_seconds: float = 30.0
    warn_margin_hours: float = 6.0
    """Warn when a docking's forecast completion is later than its deadline minus this."""
    warn_age_hours: float = 18.0
    """Warn when clips docked this long ago are still undelivered."""
    alert_command: str = ""
    """Command run for every new warning/alarm (argv split shell-style; DOCKD_ALERT_* in env)."""


@dataclass(frozen=True)
class ContinuityConfig:
    split_tolerance_s: float = 1.0
    """Spacing between segments up to this is a recorder split (GA/T 947: lossless), not a gap."""
    session_break_s: float = 1800.0
    """Spacing above this starts a new session (new place/time); in between is an interruption."""


@dataclass(frozen=True)
class NotesConfig:
    enabled: bool = True
    model_dir: str = "/var/lib/dockd/models/whisper-base"
    """faster-whisper (CTranslate2) model directory (scripts/fetch-whisper-base.sh puts it
    here on install); "" or a missing directory = voice detection only, reason unknown."""
    language: str = "zh"
    probe_seconds: float = 30.0
    window_seconds: float = 10.0
    min_speech_seconds: float = 1.5
    cpu_threads: int = 0


@dataclass(frozen=True)
class RetentionConfig:
    default_class: str = "standard"
    """Retention class of newly docked clips: routine | standard | evidence | permanent."""
    routine_days: int = 183
    standard_days: int = 730
    evidence_days: int = 3650


@dataclass(frozen=True)
class IntegrityConfig:
    tsa_url: str = ""
    """RFC 3161 Time-Stamp Authority URL; "" = no trusted timestamps (verify says so)."""
    tsa_timeout_seconds: float = 10.0
    checkpoint_minutes: float = 60.0
    """Publish a signed checkpoint to every target at least this often (and after dockings)."""
    checkpoint_max_age_hours: float = 2.0
    """``dockd verify`` fails when a dock's newest checkpoint is older (0 = only report)."""
    audit_minutes: float = 60.0
    """Target audit: compare every target's listing with what was delivered this often."""
    audit_rehash_per_pass: int = 20
    """Delivered objects re-read (SHA-256) per audit pass, oldest-checked first."""


RETENTION_CLASSES = ("routine", "standard", "evidence", "permanent")
MIN_ROUTINE_DAYS = 183
"""R7: routine footage is kept at least 6 months."""
MIN_STANDARD_DAYS = 365
"""R7: ordinary footage is kept at least 1 year (1-2 years by the rules)."""
TARGET_KINDS = ("local", "s3", "sftp")


@dataclass(frozen=True)
class TargetConfig:
    name: str = "primary"
    kind: str = "local"
    """local | s3 | sftp"""
    path: Path = Path("/srv/dockd/target")
    """local: the directory; sftp: the remote base directory; s3: unused."""
    required: bool = True
    verify: str = "readback"
    """How delivery is confirmed: "readback" (re-read and hash what landed) or "checksum"
    (trust a server-side SHA-256: S3 checksum mode, SFTP remote hash)."""
    max_concurrency: int = 4
    bandwidth_limit: str = ""
    """"" (none), "40 MB/s", or a schedule "08:00-18:00=10 MB/s,*=80 MB/s"."""
    # --- s3
    endpoint_url: str = ""
    bucket: str = ""
    region: str = "us-east-1"
    prefix: str = ""
    credentials_file: str = ""
    """INI file with aws_access_key_id / aws_secret_access_key ([default] section); "" =
    the standard AWS environment variables / config chain."""
    object_lock: str = ""
    """"" (none), "GOVERNANCE" or "COMPLIANCE": object-lock retention mode for clips."""
    part_size: ByteSize = ByteSize(64 * 1024 * 1024)
    # --- sftp
    host: str = ""
    port: int = 22
    user: str = ""
    key_file: str = ""
    passphrase_file: str = ""
    """File holding the passphrase of an encrypted ``key_file`` ("" = key not encrypted).
    systemd credentials ``sftp.<name>.key`` / ``sftp.<name>.passphrase`` take precedence
    (as ``s3.<name>.credentials`` does for ``credentials_file``)."""
    known_hosts: str = ""


@dataclass(frozen=True)
class ProfileConfig:
    name: str = "zfy-generic"
    match_models: tuple[str, ...] = ()
    """Glob patterns of recorder models this profile applies to; empty: any recorder."""
    file_pattern: str = DEFAULT_FILE_PATTERN
    time_format: str = "%Y%m%d%H%M%S"
    clip_dirs: tuple[str, ...] = ("DCIM", "VIDEO", "RECORD", "AUDIO", "PHOTO")
    extensions: tuple[str, ...] = ("mp4", "mov", "avi", "ts", "wav", "mp3", "jpg")
    info_file: str = "ZFY_INFO.INI"
    info_encoding: str = "gbk"
    timeset_file: str = ""
    clear_policy: str = "never"
    """"never" or "after_delivery": erase clips from the recorder once every required target
    has verified them (re-checked against the recorder's file right before deletion)."""

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.file_pattern)


@dataclass(frozen=True)
class DevicesConfig:
    source: str = "directory"
    """"directory": recorders appear as trees under paths.ports_dir (simulated, lab, NFS dock);
    "udev": real USB recorders, detected with pyudev and mounted read-only."""
    mount_root: Path = Path("/run/dockd-mnt")
    """Per-port mount points (<mount_root>/<port>) for the udev source."""
    mount_helper: str = "/run/dockd-mount.sock"
    """The privileged mount helper: its socket (systemd dockd-mount.socket) or an executable
    run directly when the daemon is root (see docs/privileges.md; there is no sudo mode)."""
    rescan_seconds: float = 30.0
    """Slow re-enumeration of block devices: udev events are hints, they may be missed."""
    fsck: bool = True
    """Run a read-only filesystem check (fsck.vfat -n / fsck.exfat -n) before mounting."""


@dataclass(frozen=True)
class AllowConfig:
    vendor_id: str = ""
    """USB idVendor (4 hex digits) of an allowed recorder model."""
    model_id: str = ""
    """USB idProduct (4 hex digits); "" = any product of the vendor."""
    serial_pattern: str = ""
    """Regular expression the USB serial must match; "" = any."""
    profile: str = ""
    """Recorder profile to use for this model; "" = choose by device-info file."""
    label: str = ""


@dataclass(frozen=True)
class PortMapConfig:
    path: str = ""
    """Physical USB path of the hub port (udev ID_PATH), e.g. pci-0000:00:14.0-usb-0:1.3:1.0."""
    port: str = ""
    """Port label shown to users, e.g. port-03."""


@dataclass(frozen=True)
class HealthConfig:
    min_battery_percent: int = 80
    """Fit for the next shift only with at least this battery after charging_minutes docked."""
    charging_minutes: float = 120.0
    min_free_percent: float = 10.0
    """Storage nearly full below this share of free space."""
    max_clock_offset_s: float = 10.0
    """Clock off by more than this (GA/T 947: <= 3 s/day drift) makes the recorder unfit."""
    set_clock: bool = True
    """Set the recorder's clock after its clips are copied, where its profile allows."""
    require_ntp: bool = True
    """Warn when the dock's own clock is not NTP-synchronised (clock offsets are then unreliable)."""
    reread_minutes: float = 10.0
    """Re-read battery and storage of recorders left in the dock this often (charging trend)."""


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 8470
    token: str = ""
    """Bearer token required for any client not on loopback ("" = loopback only). The
    systemd credential ``web.token`` ($CREDENTIALS_DIRECTORY) takes precedence."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (or addresses) clients may use for the dock besides localhost, 127.0.0.1,
    ::1 and the bind address; any other Host header is refused (DNS rebinding)."""
    language: str = "zh"
    """Default page language: zh or en."""


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    dock: DockConfig = field(default_factory=DockConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    continuity: ContinuityConfig = field(default_factory=ContinuityConfig)
    notes: NotesConfig = field(default_factory=NotesConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    integrity: IntegrityConfig = field(default_factory=IntegrityConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    allow: tuple[AllowConfig, ...] = ()
    port_map: tuple[PortMapConfig, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)
    web: WebConfig = field(default_factory=WebConfig)
    targets: tuple[TargetConfig, ...] = (TargetConfig(),)
    profiles: tuple[ProfileConfig, ...] = (ProfileConfig(),)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.dock.timezone)

    def with_workdir(self, workdir: Path) -> Config:
        """This configuration with state, staging, keys, ports and the local target under ``workdir``."""
        w = Path(workdir).absolute()
        paths = PathsConfig(
            state_dir=w / "state",
            staging_dir=w / "staging",
            ports_dir=w / "ports",
            key_file=w / "keys" / "dock.key",
            public_key_file=w / "keys" / "dock.pub",
        )
        targets = tuple(
            dataclasses.replace(t, path=w / "target") if t.kind == "local" and i == 0 else t
            for i, t in enumerate(self.targets)
        )
        return dataclasses.replace(self, paths=paths, targets=targets)


def for_workdir(workdir: Path) -> Config:
    return Config().with_workdir(workdir)


# --------------------------------------------------------------------------- loading

DEFAULT_CONFIG = Path("/etc/dockd/config.toml")
"""Read by every command when no ``--config`` is given (and the file exists)."""


def default_config() -> Path | None:
    """``$DOCKD_CONFIG`` when set ("" = none), else :data:`DEFAULT_CONFIG` when it exists."""
    env = os.environ.get("DOCKD_CONFIG")
    if env is not None:
        return Path(env) if env else None
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None



def load(path: Path | None = None, *, workdir: Path | None = None) -> Config:
    """Load ``path`` (or the defaults), then apply ``workdir``. Raises ConfigError with all problems."""
    cfg = Config()
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
        cfg = from_dict(raw)
    if workdir is not None:
        cfg = cfg.with_workdir(workdir)
    return cfg


def from_dict(raw: dict[str, Any]) -> Config:
    """Build the configuration; raise ConfigError listing *every* problem (type errors and
    semantic ones in one round; a value already reported as malformed is not judged again)."""
    problems: list[str] = []
    cfg = build(Config, raw, "", problems)
    problems = merge_problems(problems, _semantic_checks(cfg))
    if problems:
        raise ConfigError(problems, cfg)
    return cfg


_HTTP_URL = re.compile(r"https?://[^\s/]+(/\S*)?")


def _integrity_checks(i: IntegrityConfig) -> list[str]:
    problems = []
    if i.tsa_url and not _HTTP_URL.fullmatch(i.tsa_url):
        problems.append(f"integrity.tsa_url: must be an http(s) URL, got {i.tsa_url!r}")
    for key in ("tsa_timeout_seconds", "checkpoint_minutes", "audit_minutes"):
        if getattr(i, key) <= 0:
            problems.append(f"integrity.{key}: must be positive, got {getattr(i, key)}")
    if i.checkpoint_max_age_hours < 0:
        problems.append("integrity.checkpoint_max_age_hours: must be 0 (report only) or more")
    elif i.checkpoint_max_age_hours and i.checkpoint_max_age_hours * 60 <= i.checkpoint_minutes:
        problems.append("integrity.checkpoint_max_age_hours: must exceed checkpoint_minutes, "
                        "or every verify between two checkpoints fails")
    if i.audit_rehash_per_pass < 0:
        problems.append("integrity.audit_rehash_per_pass: must be 0 or more")
    return problems


def merge_problems(first: list[str], more: list[str]) -> list[str]:
    """``first`` then those of ``more`` whose key path was not already reported."""
    keys = [p.split(": ", 1)[0] for p in first]
    return first + [p for p in more if not any(
        (k := p.split(": ", 1)[0]) == seen or k.startswith(seen + ".")
        for seen in keys)]


def _semantic_checks(cfg: Config) -> list[str]:
    problems = []
    if cfg.dock.ports < 1 or cfg.dock.ports > 99:
        problems.append(f"dock.ports: must be between 1 and 99, got {cfg.dock.ports}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", cfg.dock.id):
        problems.append(f"dock.id: use letters, digits, '.', '_' or '-' (got {cfg.dock.id!r})")
    try:
        ZoneInfo(cfg.dock.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"dock.timezone: unknown time zone {cfg.dock.timezone!r}")
    problems.extend(_integrity_checks(cfg.integrity))
    if not 1 <= cfg.tools.probe_processes <= 16:
        problems.append("tools.probe_processes: must be between 1 and 16, got "
                        f"{cfg.tools.probe_processes}")
    if cfg.offload.workers < 1:
        problems.append(f"offload.workers: must be at least 1, got {cfg.offload.workers}")
    if cfg.offload.chunk_size < 4096:
        problems.append(f"offload.chunk_size: must be at least 4 KiB, got {cfg.offload.chunk_size}")
    if cfg.delivery.deadline_hours <= 0:
        problems.append("delivery.deadline_hours: must be positive")
    if not 0 <= cfg.continuity.split_tolerance_s < cfg.continuity.session_break_s:
        problems.append("continuity.session_break_s: must be greater than split_tolerance_s "
                        "(and split_tolerance_s >= 0)")
    n = cfg.notes
    if not 0 < n.window_seconds <= n.probe_seconds:
        problems.append("notes.window_seconds: must be > 0 and <= notes.probe_seconds")
    if n.min_speech_seconds < 0:
        problems.append("notes.min_speech_seconds: must be >= 0")
    model = Path(n.model_dir) if n.model_dir else None
    if model and model.exists() and not (model / "model.bin").is_file():
        problems.append(f"notes.model_dir: {n.model_dir} holds no model.bin (a faster-whisper "
                        "model directory is needed, or \"\" for voice detection only)")
    if cfg.devices.source not in ("directory", "udev"):
        problems.append(f"devices.source: \"directory\" or \"udev\" (got {cfg.devices.source!r})")
    for i, a in enumerate(cfg.allow):
        if not re.fullmatch(r"[0-9a-fA-F]{4}", a.vendor_id):
            problems.append(f"allow[{i}].vendor_id: 4 hex digits (got {a.vendor_id!r})")
        if a.model_id and not re.fullmatch(r"[0-9a-fA-F]{4}", a.model_id):
            problems.append(f"allow[{i}].model_id: 4 hex digits or \"\" (got {a.model_id!r})")
        try:
            re.compile(a.serial_pattern)
        except re.error as exc:
            problems.append(f"allow[{i}].serial_pattern: not a valid regular expression: {exc}")
        if a.profile and a.profile not in {p.name for p in cfg.profiles}:
            problems.append(f"allow[{i}].profile: no profile named {a.profile!r}")
    seen_paths: set[str] = set()
    seen_ports: set[str] = set()
    for i, m in enumerate(cfg.port_map):
        if not m.path or not m.port:
            problems.append(f"port_map[{i}]: needs both path and port")
        if m.port and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", m.port):
            problems.append(f"port_map[{i}].port: letters, digits, '.', '_' or '-' "
                            f"(got {m.port!r})")
        if m.path in seen_paths:
            problems.append(f"port_map[{i}].path: {m.path!r} mapped twice")
        if m.port in seen_ports:
            problems.append(f"port_map[{i}].port: {m.port!r} used for two physical paths")
        seen_paths.add(m.path)
        seen_ports.add(m.port)
    if cfg.devices.source == "udev" and not cfg.allow:
        problems.append("allow: the udev source needs at least one allowed recorder model "
                        "(nothing else is ever mounted)")
    h = cfg.health
    if not 0 <= h.min_battery_percent <= 100:
        problems.append("health.min_battery_percent: 0..100")
    if h.reread_minutes <= 0:
        problems.append("health.reread_minutes: must be positive")
    if not 0 <= h.min_free_percent <= 100:
        problems.append("health.min_free_percent: 0..100")
    if cfg.web.language not in ("zh", "en"):
        problems.append(f"web.language: \"zh\" or \"en\" (got {cfg.web.language!r})")
    if not 0 <= cfg.web.port < 65536:
        problems.append("web.port: 1..65535 (or 0: any free port)")
    for bad in bad_allowed_hosts(cfg.web.allowed_hosts):
        problems.append(f"web.allowed_hosts: {bad!r} is not a host name or IP address")
    if cfg.logging.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        problems.append(f"logging.level: one of DEBUG, INFO, WARNING, ERROR (got {cfg.logging.level!r})")
    for key in ("state_dir", "staging_dir", "ports_dir", "key_file", "public_key_file"):
        if not getattr(cfg.paths, key).is_absolute():
            problems.append(f"paths.{key}: must be an absolute path "
                            f"(got {str(getattr(cfg.paths, key))!r})")
    for i, t in enumerate(cfg.targets):
        if t.kind == "local" and not t.path.is_absolute():
            problems.append(f"targets[{i}].path: a local target must be an absolute path "
                            f"(got {str(t.path)!r}; evidence would land relative to the "
                            "current directory)")
    if not cfg.targets:
        problems.append("targets: at least one storage target is needed")
    names = [t.name for t in cfg.targets]
    if cfg.retention.default_class not in RETENTION_CLASSES:
        problems.append(f"retention.default_class: one of {', '.join(RETENTION_CLASSES)} "
                        f"(got {cfg.retention.default_class!r})")
    r = cfg.retention
    if not 0 < r.routine_days <= r.standard_days <= r.evidence_days:
        problems.append("retention: need 0 < routine_days <= standard_days <= evidence_days")
    if r.routine_days < MIN_ROUTINE_DAYS:
        problems.append(f"retention.routine_days: {r.routine_days} is shorter than the legal "
                        f"minimum of 6 months ({MIN_ROUTINE_DAYS} days, R7)")
    if r.standard_days < MIN_STANDARD_DAYS:
        problems.append(f"retention.standard_days: {r.standard_days} is shorter than the legal "
                        f"minimum of 1 year ({MIN_STANDARD_DAYS} days, R7)")
    for i, t in enumerate(cfg.targets):
        where = f"targets[{i}]"
        if t.kind not in TARGET_KINDS:
            problems.append(f"{where}.kind: unknown target kind {t.kind!r} "
                            f"(known: {', '.join(TARGET_KINDS)})")
        if names.count(t.name) > 1:
            problems.append(f"{where}.name: duplicate target name {t.name!r}")
        if t.verify not in ("readback", "checksum"):
            problems.append(f"{where}.verify: \"readback\" or \"checksum\" (got {t.verify!r})")
        if t.max_concurrency < 1:
            problems.append(f"{where}.max_concurrency: must be at least 1")
        if t.kind == "s3":
            if not t.bucket:
                problems.append(f"{where}.bucket: required for an s3 target")
            if t.object_lock not in ("", "GOVERNANCE", "COMPLIANCE"):
                problems.append(f"{where}.object_lock: \"\", \"GOVERNANCE\" or "
                                f"\"COMPLIANCE\" (got {t.object_lock!r})")
            if t.part_size < 5 * 1024 * 1024:
                problems.append(f"{where}.part_size: S3 parts must be at least 5 MiB")
            if t.endpoint_url and not _HTTP_URL.fullmatch(t.endpoint_url):
                problems.append(f"{where}.endpoint_url: an http(s) URL such as "
                                f"\"https://minio.example:9000\" (got {t.endpoint_url!r}; "
                                "empty: AWS)")
        if t.kind == "sftp":
            for key in ("host", "user", "key_file", "known_hosts"):
                if not getattr(t, key):
                    problems.append(f"{where}.{key}: required for an sftp target")
    if cfg.targets and not any(t.required for t in cfg.targets):
        problems.append("targets: at least one target must be required = true")
    if cfg.delivery.warn_margin_hours < 0 or cfg.delivery.warn_age_hours <= 0:
        problems.append("delivery.warn_margin_hours/warn_age_hours: must be positive")
    for i, t in enumerate(cfg.targets):
        if t.bandwidth_limit:
            try:
                parse_bandwidth(t.bandwidth_limit)
            except ValueError as exc:
                problems.append(f"targets[{i}].bandwidth_limit: {exc}")
    if not cfg.profiles:
        problems.append("profiles: at least one recorder profile is needed")
    for i, p in enumerate(cfg.profiles):
        try:
            rx = re.compile(p.file_pattern)
        except re.error as exc:
            problems.append(f"profiles[{i}].file_pattern: not a valid regular expression: {exc}")
        else:
            if "start" not in rx.groupindex:
                problems.append(f"profiles[{i}].file_pattern: needs a named group (?P<start>...)")
        if p.clear_policy not in ("never", "after_delivery"):
            problems.append(f"profiles[{i}].clear_policy: \"never\" or \"after_delivery\" "
                            f"(got {p.clear_policy!r})")
        try:
            "x".encode(p.info_encoding)
        except LookupError:
            problems.append(f"profiles[{i}].info_encoding: unknown encoding {p.info_encoding!r}")
    return problems


def schema_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every key path of the schema (``offload.workers``, ``targets[].path``, ...)."""
    return dataclass_keys(cls, prefix)
