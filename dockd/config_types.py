"""The value types a configuration file spells, and the generic TOML → dataclass builder.

Pure (stdlib only): sizes (``1048576`` or ``"1 MiB"``), rates (``"40 MB/s"``) and bandwidth
schedules (``"08:00-18:00=10 MB/s,*=80 MB/s"``) are parsed here, and :func:`build` turns a
TOML table into a frozen dataclass, collecting every problem with its key path
(``targets[0].path: ...``) instead of stopping at the first. The schema itself — which
dataclasses, which defaults, which semantic checks — lives in :mod:`dockd.config`; the
delivery queue's :class:`dockd.delivery.schedule.Pacer` enforces the parsed rates.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from datetime import time as dtime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}


class ByteSize(int):
    """An int that TOML may spell as ``1048576`` or ``"1 MiB"``."""


def parse_size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1048576 or \"1 MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"expected a size such as 1048576 or \"1 MiB\", got {value!r}")


# --------------------------------------------------------------------------- bandwidth


@dataclass(frozen=True)
class RateRule:
    start: dtime | None  # None: any time ("*")
    end: dtime | None
    bytes_per_s: float | None  # None: unlimited


_RATE = re.compile(r"^\s*(?P<n>[\d.]+\s*[A-Za-z]*?)\s*(?:/s|ps)?\s*$")


def parse_rate(text: str) -> float | None:
    """``"40 MB/s"`` → 40e6; ``"off"``/``""`` → None (unlimited)."""
    t = text.strip()
    if t.lower() in ("", "off", "none", "unlimited"):
        return None
    m = _RATE.match(t)
    if not m:
        raise ValueError(f"not a rate: {text!r} (e.g. \"40 MB/s\")")
    value = parse_size(m.group("n").replace(" ", ""))
    if value <= 0:
        raise ValueError(f"rate must be positive: {text!r}")
    return float(value)


def parse_bandwidth(spec: str) -> list[RateRule]:
    """A single rate, or comma-separated ``HH:MM-HH:MM=RATE`` rules with ``*=RATE`` fallback."""
    spec = spec.strip()
    if not spec:
        return []
    if "=" not in spec:
        return [RateRule(None, None, parse_rate(spec))]
    rules = []
    for part in spec.split(","):
        when, _, rate = part.partition("=")
        when = when.strip()
        if when == "*":
            rules.append(RateRule(None, None, parse_rate(rate)))
            continue
        m = re.fullmatch(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})", when)
        if not m:
            raise ValueError(f"bad time window {when!r} (use HH:MM-HH:MM or *)")
        a, b, c, d = (int(x) for x in m.groups())
        rules.append(RateRule(dtime(a, b), dtime(c % 24, d), parse_rate(rate)))
    return rules


# --------------------------------------------------------------------------- TOML -> dataclass


def build(cls: type[T], raw: object, path: str, problems: list[str]) -> T:
    """An instance of the dataclass ``cls`` from the TOML table ``raw``; every problem is
    appended to ``problems`` with its key path (a bad value leaves the field's default)."""
    if not isinstance(raw, dict):
        problems.append(f"{path or '<top>'}: expected a table, got {type(raw).__name__}")
        return cls()
    schema: type = cls  # any dataclass (``fields`` is typed for dataclass types only)
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in raw:
        if key not in fields:
            where = f"{path}.{key}" if path else key
            problems.append(f"{where}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name not in raw:
            continue
        where = f"{path}.{name}" if path else name
        value = _convert(hints[name], raw[name], where, problems)
        if value is not _BAD:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
        problems.append(f"{path or '<top>'}: {exc}")
        return cls()


def dataclass_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key path of the dataclass schema ``cls`` (``offload.workers``,
    ``targets[].path``, ...)."""
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.extend(dataclass_keys(tp, key + "."))
        elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            out.extend(dataclass_keys(typing.get_args(tp)[0], key + "[]."))
        else:
            out.append(key)
    return out


def _describe(tp: object) -> str:
    if tp is ByteSize:
        return "a size"
    if tp is Path:
        return "a path (string)"
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list"
    return getattr(tp, "__name__", str(tp))


_BAD = object()


def _convert(tp: Any, value: object, where: str, problems: list[str]) -> object:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, where, problems)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return _BAD
        items = [_convert(item_tp, v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return _BAD if any(i is _BAD for i in items) else tuple(items)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported union in config schema at {where}")  # pragma: no cover
    if tp is ByteSize:
        try:
            return ByteSize(parse_size(value))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            return _BAD
    if tp is Path:
        if isinstance(value, str) and value:
            return Path(value)
        problems.append(f"{where}: expected a non-empty path string, got {value!r}")
        return _BAD
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    problems.append(f"{where}: expected {_describe(tp)}, got {type(value).__name__} {value!r}")
    return _BAD
