"""Storage targets from configuration, and each clip's retention (R7) on them."""

from __future__ import annotations

from datetime import datetime, timedelta

from ..config import Config, RetentionConfig, TargetConfig
from ..errors import DockdError
from .base import Retention, StorageTarget
from .local import LocalTarget


def retention_for(cfg: RetentionConfig, retention_class: str, docked_at: datetime) -> Retention:
    """The retention of a clip of ``retention_class`` docked at ``docked_at`` (pure)."""
    if retention_class == "permanent":
        return Retention("permanent", None, legal_hold=True)
    days = {"routine": cfg.routine_days, "standard": cfg.standard_days,
            "evidence": cfg.evidence_days}.get(retention_class)
    if days is None:
        raise DockdError(f"unknown retention class {retention_class!r}")
    return Retention(retention_class, docked_at + timedelta(days=days))


def open_target(t: TargetConfig, cfg: Config) -> StorageTarget:
    if t.kind == "local":
        return LocalTarget(t.name, t.path, required=t.required)
    if t.kind == "s3":
        from .s3 import S3Target

        return S3Target.from_config(t, cfg)
    if t.kind == "sftp":
        from .sftp import SftpTarget

        return SftpTarget.from_config(t, cfg)
    raise DockdError(f"target {t.name}: unknown kind {t.kind!r}")  # config-check rejects it


def open_targets(cfg: Config) -> list[StorageTarget]:
    return [open_target(t, cfg) for t in cfg.targets]
