"""What a configuration needs from this machine, checked before anything runs.

:func:`dockd.config.load` checks the file against the schema (pure: types, ranges, names).
This module checks the configuration against the machine it will run on: directories that
are files, key and credentials files that are missing, commands that cannot be found.
``dockd config-check`` reports these together with the schema problems, in one run, each
with its key path; ``dockd run`` and ``dockd ingest`` refuse to start with the same messages
(rather than dying later with a raw ``FileExistsError`` or a permanent delivery failure).
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from .config import Config, load, merge_problems
from .errors import ConfigError


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _directory_problem(where: str, path: Path) -> str | None:
    """``path`` must be a directory, or creatable as one (every existing ancestor a directory)."""
    try:
        if path.exists():
            return None if path.is_dir() else f"{where}: {path} exists but is not a directory"
        ancestor = _nearest_existing(path)
        if not ancestor.is_dir():
            return (f"{where}: {path} cannot be created: {ancestor} is a file, "
                    "not a directory")
    except OSError as exc:
        return f"{where}: {path}: {exc.strerror or exc}"
    return None


def _readable_file_problem(where: str, value: str, what: str) -> str | None:
    path = Path(value)
    if not path.is_absolute():
        return f"{where}: {what} must be an absolute path (got {value!r})"
    try:
        if not path.exists():
            return f"{where}: {what} {path} does not exist"
        if not path.is_file():
            return f"{where}: {what} {path} is not a file"
        if not os.access(path, os.R_OK):
            return f"{where}: {what} {path} is not readable by this user"
    except OSError as exc:
        return f"{where}: {what} {path}: {exc.strerror or exc}"
    return None


def _command_problem(where: str, command: str) -> str | None:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"{where}: cannot split {command!r} into arguments: {exc}"
    if not argv:
        return None
    prog = argv[0]
    if "/" in prog:
        p = Path(prog)
        if not p.is_file() or not os.access(p, os.X_OK):
            return f"{where}: {prog} is not an executable file"
        return None
    if shutil.which(prog) is None:
        return f"{where}: command {prog!r} not found in PATH"
    return None


def machine_problems(cfg: Config) -> list[str]:
    """Every way ``cfg`` does not fit this machine, each with its key path (empty: fits)."""
    problems: list[str] = []

    def add(p: str | None) -> None:
        if p:
            problems.append(p)

    for key in ("state_dir", "staging_dir"):
        add(_directory_problem(f"paths.{key}", getattr(cfg.paths, key)))
    if cfg.devices.source == "directory":
        add(_directory_problem("paths.ports_dir", cfg.paths.ports_dir))
    for key in ("key_file", "public_key_file"):
        path = getattr(cfg.paths, key)
        if path.exists() and not path.is_file():
            problems.append(f"paths.{key}: {path} exists but is not a file")
        else:
            add(_directory_problem(f"paths.{key}", path.parent))
    for key in ("ffmpeg", "ffprobe", "exiftool"):
        add(_command_problem(f"tools.{key}", getattr(cfg.tools, key)))
    if cfg.delivery.alert_command:
        add(_command_problem("delivery.alert_command", cfg.delivery.alert_command))
    for i, t in enumerate(cfg.targets):
        where = f"targets[{i}]"
        if t.kind == "local":
            add(_directory_problem(f"{where}.path", t.path))
        elif t.kind == "s3" and t.credentials_file:
            add(_readable_file_problem(f"{where}.credentials_file", t.credentials_file,
                                       "S3 credentials file"))
        elif t.kind == "sftp":
            if t.key_file:
                add(_readable_file_problem(f"{where}.key_file", t.key_file, "SSH key"))
            if t.known_hosts:
                add(_readable_file_problem(f"{where}.known_hosts", t.known_hosts,
                                           "known_hosts file"))
    return problems


def check(path: Path | None = None, *, workdir: Path | None = None) -> tuple[Config | None,
                                                                           list[str]]:
    """``config-check``: the schema problems of ``path`` and the ways it does not fit this
    machine (:mod:`dockd.preflight`), all in one list; the config when it could be read."""
    try:
        return (cfg := load(path, workdir=workdir)), machine_problems(cfg)
    except ConfigError as exc:
        partial = exc.config
        if not isinstance(partial, Config):
            return None, exc.problems
        if workdir is not None:
            partial = partial.with_workdir(workdir)
        return None, merge_problems(exc.problems, machine_problems(partial))
